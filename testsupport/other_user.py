"""Another local user, for real: a child process that setuid's to an unused uid (tests run as root).

The child is forked (the interpreter lives under /root, which that uid cannot reach, so it
could not exec one) and uses nothing but os and socket before it exits with os._exit.
"""

from __future__ import annotations

import gc
import os
import pathlib
import select
import socket
import traceback
from collections.abc import Callable
from typing import Self

OTHER_UID = 4242  # no account has it; tests/test_socket_trust.py checks
# What an HTTP/2 server says first (an empty SETTINGS frame) and its acknowledgement of the client's:
# a gRPC client sends its call only after that, so this much makes it hand over what it meant to send.
_H2_SETTINGS = bytes.fromhex("000000040000000000")
_H2_SETTINGS_ACK = bytes.fromhex("000000040100000000")


def _become_other_user() -> None:
    gc.disable()  # collect nothing of the parent's (grpc objects) in this child
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)
    os.umask(0)


def _child(work: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _become_other_user()
            work()
            code = 0
        except BaseException:  # noqa: BLE001 - reported on stderr, the exit status says it
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def as_other_user(work: Callable[[], None]) -> None:
    """Run `work()` as OTHER_UID in a child process, and wait for it to succeed."""
    _pid, status = os.waitpid(_child(work), 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's step failed (its traceback is above)"


def make_dirs(*dirs: pathlib.Path, mode: int = 0o777) -> Callable[[], None]:
    """A step for the other user: make `dirs` (theirs), in order."""
    def make() -> None:
        for d in dirs:
            d.mkdir(mode=mode)
    return make


class Impostor:
    """Another user's fake daemon on `path`: accepts connections and records every byte that arrives.

    `prepare()` runs as that user first (making the squatted directories). A connection is
    closed once `needle` arrives, so a client that gave it away fails fast instead of waiting."""

    def __init__(self, path: pathlib.Path, record: pathlib.Path, prepare: Callable[[], None] = lambda: None,
                 needle: bytes = b"") -> None:
        self.path, self.record, self._prepare, self._needle = path, record, prepare, needle
        self._pid = 0
        self._stop_w = -1

    def __enter__(self) -> Self:
        record = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        ready_r, ready_w = os.pipe()
        stop_r, self._stop_w = os.pipe()
        parent = os.getpid()
        self._pid = _child(lambda: self._serve(record, ready_w, stop_r, parent, (ready_r, self._stop_w)))
        for fd in (record, ready_w, stop_r):
            os.close(fd)
        readable = _readable([ready_r], 20)
        ok = readable and os.read(ready_r, 1) == b"r"
        os.close(ready_r)
        assert ok, "the impostor did not start (its traceback is above)"
        return self

    def _serve(self, record: int, ready_w: int, stop_r: int, parent: int, parents_ends: tuple[int, ...]) -> None:
        for fd in parents_ends:  # else closing the stop pipe in the parent would never reach us
            os.close(fd)
        self._prepare()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        os.write(ready_w, b"r")
        seen: dict[socket.socket, bytes] = {}
        while os.getppid() == parent:  # a test killed half-way leaves no impostor behind
            readable = _readable([listener, stop_r, *seen], 1.0)
            if stop_r in readable:
                return
            for conn in readable:
                if conn is listener:
                    accepted, _ = listener.accept()
                    seen[accepted] = b""
                    try:
                        accepted.sendall(_H2_SETTINGS + _H2_SETTINGS_ACK)
                    except OSError:
                        pass  # a probe that connected and left: its recv says so below
                    continue
                try:
                    data = conn.recv(65536)
                except OSError:  # reset by a client that left with our SETTINGS unread
                    data = b""
                os.write(record, data)
                seen[conn] += data
                if not data or (self._needle and self._needle in seen[conn]):
                    del seen[conn]
                    conn.close()

    def received(self) -> bytes:
        return self.record.read_bytes()

    def __exit__(self, *exc: object) -> None:
        os.close(self._stop_w)
        _pid, status = os.waitpid(self._pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the impostor failed (its traceback is above)"


def _readable(items: list, timeout: float) -> list:
    """What of `items` (descriptors or sockets) is readable, or closed, within `timeout`: poll, not
    select, whose descriptors must be under 1024 (a long suite's process may hold more)."""
    poll, by_fd = select.poll(), {}
    for item in items:
        fd = item if isinstance(item, int) else item.fileno()
        by_fd[fd] = item
        poll.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poll.poll(timeout * 1000)]
