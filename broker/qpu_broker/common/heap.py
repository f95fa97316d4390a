"""How a long-running process's heap meets the garbage collector once it is ready.

grpc.aio leaves a reference cycle behind on every call (its method lookup's closure, the call's
details and metadata: six objects), so a busy daemon runs a young collection every hundred-odd
calls. Each one examined everything young, and a full one everything the start-up imported (grpc,
protobuf, cryptography, aiohttp: about 40,000 objects, 12 ms measured). Those pauses are what a
call at the tail waited for (docs/performance.md, issue 26).
"""

from __future__ import annotations

import gc

# Young collections this many net allocations apart (CPython's default is 700): at the daemon's
# garbage rate one collection every YOUNG / 6 calls, each still under a millisecond (measured).
YOUNG = 700


def settle() -> None:
    """Once the process is ready: what start-up made is kept out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, *gc.get_threshold()[1:])
