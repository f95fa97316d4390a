"""Whether another local user could have made or changed a path: the one check both sides use.

A path is ours when every entry the kernel passes through on the way to it (from `/`,
following symlinks the way the kernel does) is owned by us or by root, and none is writable
by group or others, except a sticky directory (like /tmp), where others may add entries but
cannot rename or remove ours. Anything else could have been planted or swapped by another
user: a socket a stranger's fake daemon answers on, a config that sends our keys elsewhere.

The client checks its socket with this (and the peer's uid, where the platform tells it)
before it sends anything; the daemon checks its directories and every file it reads at start.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import struct

from .errors import FailedPreconditionError

MAX_SYMLINKS = 40  # as Linux's path walk
ROOT_UID = 0


def _entry_problem(path: pathlib.Path, st: os.stat_result, uid: int) -> str | None:
    """What is wrong with one entry on the way (its own bits; the walk checks what leads to it)."""
    if st.st_uid not in (uid, ROOT_UID):
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}) or root"
    if stat.S_ISLNK(st.st_mode):
        return None  # a symlink's own mode means nothing; its target is walked next
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        who = "others" if mode & 0o002 else "its group"
        return f"{path} is writable by {who} (mode {mode:04o})"
    return None


def untrusted(path: str | os.PathLike[str]) -> str | None:
    """Why another user could have made or changed `path`, or None when nobody but us and root could.

    Entries that do not exist yet end the walk: what exists is checked. A caller that then
    creates something there must check again (someone may have been quicker)."""
    uid = os.getuid()
    here = pathlib.Path("/")
    problem = _entry_problem(here, os.lstat(here), uid)
    if problem:
        return problem
    given = pathlib.Path(path)  # not os.path.abspath: it drops "x/.." even where x is a symlink
    todo = list(reversed((given if given.is_absolute() else pathlib.Path.cwd() / given).parts[1:]))
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            here = here.parent  # `here` holds no symlink, so its parent is what the kernel reaches
            continue
        entry = here / name
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{entry} cannot be checked: {exc.strerror}"
        problem = _entry_problem(entry, st, uid)
        if problem:
            return problem
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return f"{path} goes through more than {MAX_SYMLINKS} symlinks"
            target = pathlib.Path(os.readlink(entry))
            if target.is_absolute():
                here = pathlib.Path("/")
            todo.extend(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return f"{entry} is not a directory"
        here = entry
    return None


def check_trusted(path: pathlib.Path, what: str, fix: str) -> None:
    """Raise FailedPreconditionError (one line: what, why, `fix`) unless only we or root could have made `path`."""
    problem = untrusted(path)
    if problem:
        raise FailedPreconditionError(f"refusing {what} {path}: {problem}; {fix}")


SOCKET_FIX = ("another user could answer there in place of your daemon: point QPU_BROKER_SOCKET "
              "(or XDG_RUNTIME_DIR, or QPU_BROKER_HOME) at a directory only you can write")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket, where the platform says."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid
    return None  # elsewhere the directory checks alone stand


def check_daemon_socket(path: pathlib.Path) -> bool:
    """Whether a daemon answers at `path`; raise if it, or a directory on the way, could be another user's.

    The socket's uid is checked on a connection of its own (grpc shows us none of its own): between
    this check and grpc's connection only someone who can write the socket's directory could swap
    the socket, and the path check has just shown that nobody but us and root can."""
    check_trusted(path, "the socket", SOCKET_FIX)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        uid = peer_uid(sock)
    if uid is not None and uid not in (os.getuid(), ROOT_UID):
        raise FailedPreconditionError(
            f"refusing the socket {path}: the daemon answering there runs as uid {uid}, not as you "
            f"(uid {os.getuid()}) or root; {SOCKET_FIX}")
    return True


def ensure_private_dir(path: pathlib.Path) -> None:
    """Create `path` 0700 (and any missing parent), or check the one there: a directory of ours,
    0700, on a path only we and root can change, holding nothing another user could have made.

    Never tightened and used: a directory others could write may already hold what they planted."""
    fix = "another user could have put files there: fix what is named, or point QPU_BROKER_HOME / QPU_BROKER_SOCKET elsewhere"
    check_trusted(path, "the directory", fix)  # what exists of it, before we add anything
    missing = []
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # someone was quicker: checked below like any other
    check_trusted(path, "the directory", fix)
    st = os.lstat(path)
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FailedPreconditionError(f"{path} is not a directory (or is a symlink): remove it, or choose another path")
    if st.st_uid != uid:
        raise FailedPreconditionError(f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}): remove it, "
                                      "or point QPU_BROKER_HOME / QPU_BROKER_SOCKET elsewhere")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:  # readable by others only: writable was refused above
        raise FailedPreconditionError(f"{path} has mode {mode:04o}, looser than 0700: run 'chmod 700 {path}' if it is "
                                      "yours, or remove it")
    for entry in os.scandir(path):
        problem = _entry_problem(pathlib.Path(entry.path), entry.stat(follow_symlinks=False), uid)
        if problem:
            raise FailedPreconditionError(f"refusing the directory {path}: {problem}; remove it if you did not put it there")
