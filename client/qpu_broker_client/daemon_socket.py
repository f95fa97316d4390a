"""The way to our own daemon: its socket's directory checked and held, the listener's uid read.

A check by name and a connect by name are two lookups: a directory that is missing at the check
(nothing to distrust) or renamed after it can be another user's by the connect (attack review,
issue 20: an impostor got `token add`'s secret that way). So the client never hands grpc a name
it did not check: `reach()` walks to the socket's directory by descriptor (trust.pin_dir),
holds it, and gives grpc `/proc/self/fd/N/<socket name>`, which the kernel resolves from the held
directory for every connect and reconnect of the channel. Nothing there is an answer, never a
pass. Where there is no O_PATH or /proc, the walk is by name, as checked, and that is the limit.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import struct

from .errors import FailedPreconditionError
from .trust import ROOT_UID, PinnedDir, can_pin, check_trusted, pin_dir

SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sockaddr_un.sun_path, less its NUL)
SOCKET_FIX = ("another user could answer there in place of your daemon: point QPU_BROKER_SOCKET "
              "(or XDG_RUNTIME_DIR, or QPU_BROKER_HOME) at a directory only you can write")


class DaemonSocket:
    """A socket of ours that our daemon answered on: `address` reaches it through its held directory.

    Close it after the channel that connects to `address` (its descriptor number could name
    another directory once closed)."""

    def __init__(self, directory: PinnedDir, name: str) -> None:
        self.directory, self.address = directory, directory.at(name)

    def close(self) -> None:
        self.directory.close()


def pin_socket(path: pathlib.Path) -> tuple[PinnedDir, str] | None:
    """The held directory of the socket at `path` and the socket's name in it; None when that
    directory is not there. Raise when another user could have made or could change any of it."""
    if not can_pin():
        check_trusted(path, "the socket", SOCKET_FIX)
        return (PinnedDir(path.parent, None), path.name) if path.parent.is_dir() else None
    found = pin_dir(path, "the socket", SOCKET_FIX, leaf=True)
    if found is None:
        return None
    directory, name = found
    try:
        # grpc reconnects by name in it later: nobody else may add one (sticky or not).
        st = os.stat(directory.path) if directory.fd is None else os.fstat(directory.fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            who = "others" if mode & 0o002 else "its group"
            raise FailedPreconditionError(
                f"refusing the socket {path}: its directory {directory.path} is writable by {who} "
                f"(mode {mode:04o}), so a socket there could be theirs by the next connect; {SOCKET_FIX}")
        check_length(directory.at(name), "QPU_BROKER_SOCKET to a path with a shorter file name")
    except BaseException:
        directory.close()
        raise
    return directory, name


def check_length(address: str, shorter: str) -> None:
    """Refuse a socket path the kernel would not take, saying what to make `shorter`."""
    if len(os.fsencode(address)) > SUN_PATH_MAX:
        raise FailedPreconditionError(
            f"the socket path {address} is longer than {SUN_PATH_MAX} bytes, the limit for Unix sockets: set {shorter}")


def reach(path: pathlib.Path) -> DaemonSocket | None:
    """Our daemon's socket at `path`, held, when a daemon of ours answers there; None when nothing answers.

    Raise FailedPreconditionError when another user could have made any of the path, or answers there."""
    found = pin_socket(path)
    if found is None:
        return None
    directory, name = found
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.connect(directory.at(name))
            except OSError:
                directory.close()
                return None
            uid = peer_uid(sock)
        if uid is not None and uid not in (os.getuid(), ROOT_UID):
            raise FailedPreconditionError(
                f"refusing the socket {path}: the daemon answering there runs as uid {uid}, not as you "
                f"(uid {os.getuid()}) or root; {SOCKET_FIX}")
    except BaseException:
        directory.close()
        raise
    return DaemonSocket(directory, name)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket, where the platform says."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid
    return None  # elsewhere the directory checks alone stand


def answers_at(address: str) -> bool:
    """Whether something accepts connections at `address` (a probe, not a check of who)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
        except OSError:
            return False
    return True
