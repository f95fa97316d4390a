"""The rpc log: each call's own line at debug, and at info one summary line a period of the calls
in it (by method and status, and the slowest). A line per call was most of what logging cost
the daemon (docs/performance.md); the summary keeps what an operator reads at info: what was
called, how often, and what failed. Nothing is written while nothing is called.
"""

from __future__ import annotations

import asyncio
import collections
import logging

SUMMARY_SECONDS = 60.0


class RpcSummary:
    def __init__(self, log: logging.Logger, seconds: float = SUMMARY_SECONDS) -> None:
        self._log = log
        self._seconds = seconds
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._slowest = (0.0, "")
        self._timer: asyncio.TimerHandle | None = None

    def add(self, method: str, code: str, ms: float) -> None:
        self._counts[method, code] += 1
        if ms > self._slowest[0]:
            self._slowest = (ms, method)
        if self._timer is None:  # the period starts with its first call
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self.flush)
        if self._log.isEnabledFor(logging.DEBUG):  # written once the loop turns: the answer goes out first
            asyncio.get_running_loop().call_soon(self._log.debug, "rpc %s %s %.2fms", method, code, ms)

    def flush(self) -> None:
        """The summary of the calls since the last one (at stop too, so none goes unsaid)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counts:
            return
        calls = ", ".join(f"{_short(method)} {code} x{n}" for (method, code), n in sorted(self._counts.items()))
        self._log.info("rpc summary: %d calls: %s; slowest %.2fms (%s)", sum(self._counts.values()), calls,
                       self._slowest[0], _short(self._slowest[1]))
        self._counts.clear()
        self._slowest = (0.0, "")


def _short(method: str) -> str:
    """"/qpubroker.v1.RequestService/Sign" -> "RequestService/Sign"."""
    return method.rsplit(".", 1)[-1]
