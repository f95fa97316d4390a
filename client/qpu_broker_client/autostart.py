"""Start a daemon in the background when none answers (QPU_BROKER_NO_AUTOSTART=1: never)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from .errors import UnavailableError
from .paths import Paths

START_TIMEOUT = 15.0


def autostart_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("QPU_BROKER_NO_AUTOSTART", "") not in ("1", "true", "yes")


def _log_tail(paths: Paths, lines: int = 3) -> str:
    try:
        tail = paths.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(tail)


def start_daemon(paths: Paths) -> None:
    """Spawn `qpu-broker daemon` detached and wait until its socket answers."""
    paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(paths.log_file, "ab", buffering=0) as log:
        os.chmod(paths.log_file, 0o600)
        proc = subprocess.Popen(
            [sys.executable, "-m", "qpu_broker", "daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            # The daemon must listen where this client will look, even for a socket= override.
            env={**os.environ, "QPU_BROKER_SOCKET": str(paths.socket)},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            # It may have lost a start-up race to another daemon that now answers.
            if answers(paths):
                return
            raise UnavailableError(
                f"the qpu-broker daemon exited at start ({proc.returncode}): "
                f"{_log_tail(paths) or 'see ' + str(paths.log_file)}"
            )
        if answers(paths):
            return
        time.sleep(0.02)  # polling a process we just started, with a deadline
    raise UnavailableError(
        f"the qpu-broker daemon did not answer on {paths.socket} within {START_TIMEOUT:.0f} s; "
        f"see {paths.log_file}"
    )


def answers(paths: Paths) -> bool:
    """Whether something accepts connections on the socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(paths.socket))
        except OSError:
            return False
    return True
