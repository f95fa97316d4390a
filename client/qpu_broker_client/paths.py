"""Where one qpu-broker instance keeps its files.

`QPU_BROKER_HOME=DIR` roots everything under DIR (tests, side-by-side
instances); otherwise platformdirs' per-user dirs. `QPU_BROKER_SOCKET` points
clients and the daemon at another socket, like SSH_AUTH_SOCK.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Mapping

from .errors import FailedPreconditionError

APP = "qpu-broker"


@dataclasses.dataclass(frozen=True)
class Paths:
    config_dir: pathlib.Path
    data_dir: pathlib.Path
    state_dir: pathlib.Path
    runtime_dir: pathlib.Path
    socket: pathlib.Path

    @property
    def config_file(self) -> pathlib.Path:
        return self.config_dir / "config.toml"

    @property
    def key_file(self) -> pathlib.Path:
        # In the config dir, never beside the database: a copy of the data
        # dir alone (a backup, a synced folder) must not carry its key.
        return self.config_dir / "store.key"

    @property
    def store(self) -> pathlib.Path:
        return self.data_dir / "store.db"

    @property
    def audit_log(self) -> pathlib.Path:
        """Every use and change of personal tokens, hash-chained (never a secret)."""
        return self.data_dir / "audit.log"

    @property
    def audit_anchor(self) -> pathlib.Path:
        # Beside the key file, not the data dir: a rewritten data dir cannot cut the log's tail unseen.
        return self.config_dir / "audit.anchor"

    @property
    def usage_queue(self) -> pathlib.Path:
        """Uses of org tokens the org server has not acknowledged yet."""
        return self.data_dir / "org-usage.db"

    @property
    def log_file(self) -> pathlib.Path:
        """Where an autostarted daemon writes its log."""
        return self.state_dir / "daemon.log"

    @property
    def lock_files(self) -> tuple[pathlib.Path, pathlib.Path]:
        """Held by the running daemon for its whole life: one daemon a socket, one a store."""
        return self.socket.with_name(self.socket.name + ".lock"), self.data_dir / "store.lock"


def resolve_paths(environ: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    home = env.get("QPU_BROKER_HOME")
    if home:
        root = pathlib.Path(home).expanduser().absolute()
        config, data, state, runtime = root, root / "data", root / "state", root / "run"
    else:
        import platformdirs

        config = pathlib.Path(platformdirs.user_config_dir(APP))
        data = pathlib.Path(platformdirs.user_data_dir(APP))
        state = pathlib.Path(platformdirs.user_state_dir(APP))
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs falls back to TMPDIR/runtime-UID, and refuses
            # one another user made (4.11.14 and later); both sides check it again (trust.py).
            warnings.simplefilter("ignore")
            try:
                runtime = pathlib.Path(platformdirs.user_runtime_dir(APP))
            except PermissionError as exc:
                raise FailedPreconditionError(f"{exc}, or QPU_BROKER_SOCKET") from None
    sock = env.get("QPU_BROKER_SOCKET")
    socket = pathlib.Path(sock).expanduser().absolute() if sock else runtime / "broker.sock"
    return Paths(config, data, state, runtime, socket)
