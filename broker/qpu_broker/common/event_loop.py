"""Which event loop the long-running processes (the daemon, the org server) run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop_runner() -> Callable:
    """uvloop where it is installed (a dependency on every platform it supports): measured +22 %
    Sign ceiling and -15 % CPU per call in the daemon against asyncio's own loop, and a cheaper
    relayed call on the org server (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
