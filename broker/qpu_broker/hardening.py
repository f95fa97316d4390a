"""Process hygiene for processes that hold keys: no core dumps, no ptrace by peers, key pages locked.

- `PR_SET_DUMPABLE 0`: no core file, and other processes of the same user cannot
  ptrace us or read /proc/PID/mem or environ (root still can: see docs/design.md).
- `RLIMIT_CORE 0`: belt and braces for the same.
- `LockedBuffer`: a bytearray whose pages are `mlock`ed (never swapped out), zeroed
  and unlocked when wiped. Where the OS refuses (RLIMIT_MEMLOCK), it still works,
  unlocked, and says so: `status` reports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger(__name__)
PR_SET_DUMPABLE = 4
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
    import gc

    gc.collect()
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class LockedBuffer:
    """Bytes kept in mlock'ed memory while held; `wipe()` zeroes them."""

    def __init__(self, data: bytes) -> None:
        self._buf = bytearray(data)
        self._addr = ctypes.addressof((ctypes.c_char * len(self._buf)).from_buffer(self._buf)) if self._buf else 0
        self.locked = bool(self._buf) and _libc.mlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(len(self._buf))) == 0
        if self._buf and not self.locked:
            log.warning("cannot mlock key memory (errno %d): it may be swapped out; raise RLIMIT_MEMLOCK",
                        ctypes.get_errno())

    def __bytes__(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def wipe(self) -> None:
        self._buf[:] = bytes(len(self._buf))
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(len(self._buf)))
            self.locked = False
