"""One process per resource: an flock held for the process's life, naming its pid."""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib

from qpu_broker_client.errors import FailedPreconditionError


def take_lock(path: pathlib.Path, busy: str) -> int:
    """Hold `path` locked; if another process does, raise `busy` (with "{pid}" filled in)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FailedPreconditionError(busy.format(pid=holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
