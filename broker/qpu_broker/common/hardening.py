"""Process hygiene for processes that hold keys: no core dumps, no ptrace by peers, key pages locked.

- `PR_SET_DUMPABLE 0`: no core file, and other processes of the same user cannot
  ptrace us or read /proc/PID/mem or environ (root still can: see docs/design.md).
- `RLIMIT_CORE 0`: belt and braces for the same.
- `LockedBuffer`: bytes in pages of their own, `mlock`ed (never swapped out), zeroed
  and unlocked when wiped; `LockedSecrets` holds cached secrets that way. Where the OS
  refuses (RLIMIT_MEMLOCK), it still works, unlocked, and says so: `status` reports it.

A wipe and a read of the same buffer may run on different threads (the store's writer
thread reads the data key while the event loop locks), and munlock, a call through
ctypes, lets other threads run in the middle of a wipe. So each buffer's reads and its
wipe hold one lock: a read gets every byte as it was, or `WipedError`; never the zeros
or the closed map of a wipe half done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import resource
import threading
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
PR_SET_DUMPABLE = 4
K = TypeVar("K")
# How many buffers the OS refused to lock so far (status reports it).
unlocked_buffers = 0
V = TypeVar("V")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def harden_process() -> list[str]:
    """Apply what the OS allows; returns what could not be done, for status and the log."""
    problems = []
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        problems.append(f"prctl(PR_SET_DUMPABLE, 0) failed (errno {ctypes.get_errno()})")
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        problems.append(f"cannot set RLIMIT_CORE to 0: {exc}")
    for problem in problems:
        log.warning("process hardening: %s", problem)
    return problems


def release_freed_memory() -> None:
    """After a lock: collect dropped objects and hand free heap pages back to the OS, so
    copies of secrets in freed memory go with them (returned pages read back as zeros)."""
    from qpu_broker.common.heap import collect_everything

    collect_everything()
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class WipedError(ValueError):
    """The buffer was wiped: what it held is gone (to its owner: locked, or not cached)."""


class LockedBuffer:
    """Bytes kept in pages of their own, mlock'ed while held; `wipe()` zeroes and frees them.

    Own pages (an anonymous mmap per buffer), because mlock and munlock work on whole
    pages and do not count: unlocking one secret must not unlock a neighbour's page."""

    def __init__(self, data: bytes) -> None:
        self._guard = threading.Lock()  # a read and the wipe never overlap
        self._len = len(data)
        size = -(-max(1, self._len) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map: mmap.mmap | None = mmap.mmap(-1, size)
        self._map[:self._len] = data
        view = ctypes.c_char.from_buffer(self._map)
        self._addr, self._size = ctypes.addressof(view), size
        del view  # no exported pointer may outlive this, or the map cannot close
        self.locked = _libc.mlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(size)) == 0
        if not self.locked:
            global unlocked_buffers
            unlocked_buffers += 1
            log.warning("cannot mlock secret memory (errno %d): it may be swapped out; raise RLIMIT_MEMLOCK",
                        ctypes.get_errno())

    def __bytes__(self) -> bytes:
        with self._guard:
            if self._map is None:
                raise WipedError("wiped")
            return self._map[:self._len]

    def __len__(self) -> int:
        return self._len

    def wipe(self) -> None:
        with self._guard:
            if self._map is None:
                return
            self._map[:self._len] = bytes(self._len)
            self._unlock_pages()
            self._map.close()
            self._map = None

    def _unlock_pages(self) -> None:
        """munlock, mid-wipe: it releases the GIL, so other threads run here (tests pause here too)."""
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(self._size))
            self.locked = False


class LockedSecrets(Generic[K, V]):
    """Secrets held between uses (with metadata `V`), each in a LockedBuffer; wiped when dropped.

    A lock (the Locked event) may clear it from the store's writer thread while the event
    loop reads it: one lock over the table, so a read never meets an entry half dropped and
    a clear never misses one put meanwhile (it would go unwiped)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._items: dict[K, tuple[LockedBuffer, V]] = {}

    def put(self, key: K, secret: bytes, meta: V) -> None:
        buffer = LockedBuffer(secret)
        with self._guard:
            old = self._items.pop(key, None)
            self._items[key] = (buffer, meta)
        if old is not None:
            old[0].wipe()

    def get(self, key: K) -> tuple[bytes, V] | None:
        with self._guard:
            item = self._items.get(key)
            return None if item is None else (bytes(item[0]), item[1])

    def meta(self, key: K) -> V | None:
        with self._guard:
            item = self._items.get(key)
        return None if item is None else item[1]

    def pop(self, key: K) -> None:
        with self._guard:
            item = self._items.pop(key, None)
        if item is not None:
            item[0].wipe()

    def clear(self) -> None:
        with self._guard:
            items, self._items = self._items, {}
        for buffer, _ in items.values():
            buffer.wipe()

    def __len__(self) -> int:
        return len(self._items)
