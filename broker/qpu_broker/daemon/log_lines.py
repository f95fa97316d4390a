"""The daemon's log: one line per RPC at the default level, so a line must be cheap.

No caller lookup (a stack walk per record: `logging._srcfile = None` is the switch the
logging HOWTO's "Optimization" section documents), no thread or process names (not in the
format), and the date formatted once a second. Every line is still written, in order, as
it happens (a writer thread was measured and cost more: docs/performance.md).
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """logging's own format, with asctime made once per second instead of once per line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:  # "2026-11-26 02:30:01,123" without its ",123"
            self._second, self._stamp = second, super().formatTime(record, datefmt)[:-4]
        return f"{self._stamp},{int(record.msecs):03d}"


def configure_logging(level: str) -> None:
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
