"""Files the daemon rewrites whole. (Private directories and who may have made a path:
qpu_broker_client.trust, which the client checks its socket with too.)"""

from __future__ import annotations

import os
import pathlib


def write_replacing(path: pathlib.Path, text: str) -> None:
    """`path` now holds `text`, or (after a crash) what it held before: never half of either.
    0600, no fsync (an anchor may lag behind after a power loss, never run ahead)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
