"""Start a daemon in the background when none answers (QPU_BROKER_NO_AUTOSTART=1: never)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

from .daemon_socket import DaemonSocket, answers_at, reach
from .errors import UnavailableError
from .paths import Paths
from .trust import ensure_private_dir

START_TIMEOUT = 15.0
# What a daemon started by a client inherits of the client's environment, and
# nothing else: a client run as `LUNA_IBM_TOKEN=… qpu-broker token list` must
# not leave that token in the daemon's /proc/PID/environ for its whole life.
DAEMON_ENV = ("HOME", "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME",
              "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
              "PYTHONPATH")  # the daemon must import the same qpu-broker as its client
DAEMON_ENV_PREFIXES = ("LC_", "XDG_", "QPU_BROKER_")


def daemon_environment(environ: Mapping[str, str], socket: str) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k in DAEMON_ENV or k.startswith(DAEMON_ENV_PREFIXES)}
    env["QPU_BROKER_SOCKET"] = socket  # it must listen where this client will look
    return env


NO_AUTOSTART = "QPU_BROKER_NO_AUTOSTART"


def autostart_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(NO_AUTOSTART, "") not in ("1", "true", "yes")


def _log_tail(paths: Paths, lines: int = 3) -> str:
    try:
        tail = paths.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(tail)


def start_daemon(paths: Paths) -> DaemonSocket:
    """Spawn `qpu-broker daemon` detached; its socket, checked and held, once a daemon of ours answers.

    Whatever answers is checked like any socket (daemon_socket.reach): a directory another user
    made where the daemon meant to make its own is refused here, and the daemon refuses it too."""
    ensure_private_dir(paths.state_dir)  # its log goes there: never into a directory someone else made
    import subprocess  # only when a daemon is started: every other command saves its import

    with open(paths.log_file, "ab", buffering=0) as log:
        os.chmod(paths.log_file, 0o600)
        proc = subprocess.Popen(
            # The file is its stderr from the start (an error before logging is set up lands there too),
            # and the daemon's to cap (--log-file).
            [sys.executable, "-m", "qpu_broker", "daemon", "--log-file", str(paths.log_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            cwd="/",  # hold no directory of the client's busy
            env=daemon_environment(os.environ, str(paths.socket)),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        exited = proc.poll() is not None  # before looking: it may have lost a start-up race to one that answers
        found = reach(paths.socket)
        if found is not None:
            return found
        if exited:
            raise UnavailableError(
                f"the qpu-broker daemon exited at start ({proc.returncode}): "
                f"{_log_tail(paths) or 'see ' + str(paths.log_file)}"
            )
        time.sleep(0.02)  # polling a process we just started, with a deadline
    raise UnavailableError(
        f"the qpu-broker daemon did not answer on {paths.socket} within {START_TIMEOUT:.0f} s; "
        f"see {paths.log_file}"
    )


def answers(paths: Paths) -> bool:
    """Whether something accepts connections on the socket (a probe: what the client talks to is `reach`'s)."""
    return answers_at(str(paths.socket))
