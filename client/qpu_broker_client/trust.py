"""Whether another local user could have made or changed a path: the one check both sides use.

A path is ours when every entry the kernel passes through on the way to it (from `/`,
following symlinks the way the kernel does) is owned by us or by root, and none is writable
by group or others, except a sticky directory (like /tmp), where others may add entries but
cannot rename or remove ours. Anything else could have been planted or swapped by another
user: a socket a stranger's fake daemon answers on, a config that sends our keys elsewhere.

`untrusted()` checks a path by name: what it checked may be renamed before its caller uses the
name. `pin_dir()` walks by descriptor instead (Linux: each entry opened O_PATH|O_NOFOLLOW in the
directory opened before it, and checked by fstat on that descriptor), and holds the directory it
reaches: names in it are then reached through /proc/self/fd/N, so what was checked is what is
used, whatever is renamed later. The client reaches its daemon's socket that way
(daemon_socket.py); the daemon makes and holds its directories that way, and checks every
file it reads by name at start.
"""

from __future__ import annotations

import functools
import os
import pathlib
import stat
from collections.abc import Callable

from .errors import FailedPreconditionError

MAX_SYMLINKS = 40  # as Linux's path walk
ROOT_UID = 0
PROC_FD = "/proc/self/fd"
# Opens an entry itself (a directory, a symlink, a socket) without following it or needing read access.
_O_PIN = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC


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
        raise _refusal(what, path, problem, fix)


def can_pin() -> bool:
    """Whether this platform opens a path's entries without following or reading them (Linux's O_PATH)."""
    return hasattr(os, "O_PATH")


@functools.cache
def _proc_fd_mounted() -> bool:
    return os.path.isdir(PROC_FD)


class PinnedDir:
    """A directory reached and checked by descriptor, held open for as long as its names are used.

    Without /proc (or O_PATH: then `fd` is None) names in it are reached by `path`, as checked."""

    def __init__(self, path: pathlib.Path, fd: int | None) -> None:
        self.path, self.fd = path, fd
        self._via_proc = fd is not None and _proc_fd_mounted()

    def at(self, name: str) -> str:
        """A path to `name` in this directory: the kernel resolves it from the held descriptor."""
        return f"{PROC_FD}/{self.fd}/{name}" if self._via_proc else str(self.path / name)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self._via_proc = None, False


def _refusal(what: str, path: str | os.PathLike[str], problem: str, fix: str) -> FailedPreconditionError:
    return FailedPreconditionError(f"refusing {what} {path}: {problem}; {fix}")


def _make_dir(parent: int, name: str, entry: pathlib.Path, refusal: Callable[[str], Exception]) -> int:
    """Make `name` 0700 in the directory `parent` (already checked) and open it, to be checked like any entry."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass  # someone was quicker: checked like any other
    except OSError as exc:
        raise refusal(f"{entry} cannot be made: {exc.strerror}") from None
    try:
        return os.open(name, _O_PIN, dir_fd=parent)
    except OSError as exc:
        raise refusal(f"{entry} cannot be opened as it was made: {exc.strerror}") from None


def pin_dir(path: str | os.PathLike[str], what: str, fix: str, *, create: bool = False,
            leaf: bool = False) -> tuple[PinnedDir, str] | None:
    """Walk `path` from `/` by descriptor, checking each entry as `untrusted()` does, and hold the
    directory reached: `(its PinnedDir, "")`; with `leaf`, the directory holding the last name, and
    that name (the entry itself is checked if there, not opened; a symlink is followed).

    A missing directory is made 0700 in the parent just checked with `create` (then checked like
    the rest: someone may have been quicker), else the answer is None: nothing is there to trust.
    Raise FailedPreconditionError (`what`, why, `fix`) for anything another user could change."""
    uid = os.getuid()
    given = pathlib.Path(path)
    todo = list(reversed((given if given.is_absolute() else pathlib.Path.cwd() / given).parts[1:]))
    chain: list[tuple[int, pathlib.Path]] = []  # the directories walked, each checked: ".." steps back
    links = 0

    def hold() -> PinnedDir:  # the directory on top of the walk, handed over (no longer closed below)
        fd, entry = chain.pop()
        return PinnedDir(entry, fd)

    def enter(fd: int, entry: pathlib.Path, st: os.stat_result) -> None:
        problem = _entry_problem(entry, st, uid)
        if problem:
            os.close(fd)
            raise _refusal(what, path, problem, fix)
        chain.append((fd, entry))

    try:
        root = os.open("/", _O_PIN)
        enter(root, pathlib.Path("/"), os.fstat(root))
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(chain) > 1:
                    os.close(chain.pop()[0])
                continue
            parent, here = chain[-1]
            entry = here / name
            last = leaf and not any(n not in ("", ".") for n in todo)
            try:
                fd = os.open(name, _O_PIN, dir_fd=parent)
            except FileNotFoundError:
                if last:
                    return hold(), name  # nothing there yet: the directory is held
                if not create:
                    return None
                fd = _make_dir(parent, name, entry, lambda problem: _refusal(what, path, problem, fix))
            except OSError as exc:
                raise _refusal(what, path, f"{entry} cannot be checked: {exc.strerror}", fix) from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                problem = _entry_problem(entry, st, uid)
                target = os.readlink("", dir_fd=fd)  # the link checked, not whatever has its name now
                os.close(fd)
                if problem:
                    raise _refusal(what, path, problem, fix)
                links += 1
                if links > MAX_SYMLINKS:
                    raise _refusal(what, path, f"{path} goes through more than {MAX_SYMLINKS} symlinks", fix)
                if target.startswith("/"):
                    while len(chain) > 1:
                        os.close(chain.pop()[0])
                todo.extend(reversed(pathlib.PurePath(target).parts[1 if target.startswith("/") else 0:]))
                continue
            if last:
                os.close(fd)
                problem = _entry_problem(entry, st, uid)
                if problem:
                    raise _refusal(what, path, problem, fix)
                return hold(), name
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise _refusal(what, path, f"{entry} is not a directory", fix)
            enter(fd, entry, st)
        if leaf:
            raise _refusal(what, path, "it names a directory", fix)
        return hold(), ""
    finally:
        for fd, _entry in chain:
            os.close(fd)


def read_trusted(path: pathlib.Path, what: str, fix: str) -> bytes | None:
    """The bytes of the file at `path`, or None when it is not there; raise as check_trusted does.

    The file read is the file checked: opened (no symlink followed) in the directory the walk
    holds, and checked by fstat on that descriptor."""
    if not can_pin():
        check_trusted(path, what, fix)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
    found = pin_dir(path, what, fix, leaf=True)
    if found is None:
        return None
    directory, name = found
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            problem = _entry_problem(directory.path / name, os.fstat(file.fileno()), os.getuid())
            if problem:
                raise _refusal(what, path, problem, fix)
            return file.read()
    finally:
        directory.close()


PRIVATE_DIR_FIX = ("another user could have put files there: fix what is named, or point QPU_BROKER_HOME / "
                   "QPU_BROKER_SOCKET elsewhere")


def pin_private_dir(path: pathlib.Path) -> PinnedDir:
    """Create `path` 0700 (and any missing parent), or check the one there, and hold it: a directory
    of ours, 0700, on a path only we and root can change, holding nothing another user could have made.

    Never tightened and used: a directory others could write may already hold what they planted."""
    if not can_pin():
        _make_private_by_name(path)
        return PinnedDir(path, None)
    held, _ = pin_dir(path, "the directory", PRIVATE_DIR_FIX, create=True)
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=held.fd)  # the held one itself
        try:
            with os.scandir(listing) as entries:  # stats relative to `listing`
                found = [(pathlib.Path(path) / e.name, e.stat(follow_symlinks=False)) for e in entries]
        finally:
            os.close(listing)
        _check_private(path, os.fstat(held.fd), found)
    except BaseException:
        held.close()
        raise
    return held


def ensure_private_dir(path: pathlib.Path) -> None:
    """`pin_private_dir`, for a directory used by name afterwards (which the check makes safe: only we
    and root can rename anything on its path)."""
    pin_private_dir(path).close()


def _check_private(path: pathlib.Path, st: os.stat_result, entries: list[tuple[pathlib.Path, os.stat_result]]) -> None:
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPreconditionError(f"{path} is not a directory: remove it, or choose another path")
    if st.st_uid != uid:
        raise FailedPreconditionError(f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}): remove it, "
                                      "or point QPU_BROKER_HOME / QPU_BROKER_SOCKET elsewhere")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:  # readable by others only: writable was refused on the way
        raise FailedPreconditionError(f"{path} has mode {mode:04o}, looser than 0700: run 'chmod 700 {path}' if it is "
                                      "yours, or remove it")
    for entry, entry_st in entries:
        problem = _entry_problem(entry, entry_st, uid)
        if problem:
            raise FailedPreconditionError(f"refusing the directory {path}: {problem}; remove it if you did not put it there")


def _make_private_by_name(path: pathlib.Path) -> None:
    """Without O_PATH: the same checks by name (an entry missing at a check counts as ours)."""
    check_trusted(path, "the directory", PRIVATE_DIR_FIX)  # what exists of it, before we add anything
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
    check_trusted(path, "the directory", PRIVATE_DIR_FIX)
    if os.path.islink(path):
        raise FailedPreconditionError(f"{path} is a symlink: remove it, or choose another path")
    with os.scandir(path) as entries:
        _check_private(path, os.lstat(path), [(pathlib.Path(e.path), e.stat(follow_symlinks=False)) for e in entries])
