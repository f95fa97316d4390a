"""How a long-running process's heap meets the garbage collector once it is ready.

What start-up imported (grpc, protobuf, cryptography, aiohttp: about 40,000 objects) lives as long
as the process, yet every full collection walked it again: 12 ms measured in the daemon, a pause
that a call at the tail waited for. Frozen once the process is ready, it is never examined again.
Young collections stay at CPython's default: grpc.aio leaves a reference cycle behind on every
call (six objects), so one runs every hundred-odd calls at about 0.15 ms, and thresholds 7 and 28
times higher measured no better at p99 (docs/performance.md, issue 26).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Once the process is ready: what start-up made is kept out of every later collection."""
    gc.collect()
    gc.freeze()


def collect_everything() -> None:
    """A full collection that reaches the frozen objects too (a lock's: a cycle made at start-up
    that held a secret and is garbage now must go), then frozen again as `settle` left them."""
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
