"""Private directories: 0700 and ours, or the daemon does not start."""

from __future__ import annotations

import logging
import os
import pathlib
import stat

from qpu_broker_client.errors import FailedPreconditionError

log = logging.getLogger(__name__)


def ensure_private_dir(path: pathlib.Path, *, strict: bool) -> None:
    """Create `path` 0700, or check an existing one is a directory we own.

    A looser mode is refused when `strict` (the runtime dir, where a squatted
    /tmp path is the attack) and tightened with a warning otherwise.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FailedPreconditionError(f"{path} is not a directory (or is a symlink): remove it, or choose another path")
    if st.st_uid != os.getuid():
        raise FailedPreconditionError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}): someone else may have "
            "created it; remove it, or point QPU_BROKER_HOME / QPU_BROKER_SOCKET elsewhere"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        if strict:
            raise FailedPreconditionError(
                f"{path} has mode {mode:04o}, looser than 0700: other users could reach the socket; "
                f"run 'chmod 700 {path}' if it is yours, or remove it"
            )
        log.warning("%s had mode %04o; tightened to 0700", path, mode)
        os.chmod(path, 0o700)


def write_replacing(path: pathlib.Path, text: str) -> None:
    """`path` now holds `text`, or (after a crash) what it held before: never half of either.
    0600, no fsync (an anchor may lag behind after a power loss, never run ahead)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
