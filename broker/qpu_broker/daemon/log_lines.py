"""The daemon's log: lines at the default level are few (each RPC's own is at debug), and every
line must be cheap. On stderr (systemd's journal keeps and caps it), or in a file of its own
(`--log-file`, what autostart gives), capped with one rotation (`agent.log_max_bytes`).

No caller lookup (a stack walk per record: `logging._srcfile = None` is the switch the
logging HOWTO's "Optimization" section documents), no thread or process names (not in the
format), and the date formatted once a second. Every line is still written, in order, as
it happens (a writer thread was measured and cost more: docs/performance.md).
"""

from __future__ import annotations

import logging
import os
import pathlib
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


class CappedFile(logging.StreamHandler):
    """A log file of the daemon's own (autostart's `--log-file`), on stderr and stdout too (a
    traceback, grpc's C core): at `max_bytes` it becomes PATH.1 (the one before is dropped) and
    a new PATH takes its place. At most twice the cap on disk, however long the daemon runs."""

    def __init__(self, path: pathlib.Path, max_bytes: int) -> None:
        super().__init__(sys.stderr)
        self._path, self._max = path, max_bytes
        self._size = self._open()

    def _open(self) -> int:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            self.stream.write(line)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a line that cannot be written is reported, not raised
            self.handleError(record)
            return
        self._size += len(line)  # counted as written, not a stat per line
        if self._max and self._size >= self._max:
            self._size = os.fstat(2).st_size  # what else went to stderr counts too
            if self._size >= self._max:
                os.replace(self._path, self._path.with_name(self._path.name + ".1"))
                self._size = self._open()


def configure_logging(level: str, log_file: pathlib.Path | None = None, max_bytes: int = 0) -> None:
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr) if log_file is None else CappedFile(log_file, max_bytes)
    handler.setFormatter(LineFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
