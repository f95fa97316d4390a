"""A qpu-broker daemon as a real process in a temp dir, and polling with a deadline:
shared by the tests (tests/conftest.py) and the benchmarks (bench/)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from qpu_broker_client import Broker
from qpu_broker_client.autostart import answers
from qpu_broker_client.paths import resolve_paths

DEADLINE = 20.0


def wait_for(predicate, what: str, timeout: float = DEADLINE, interval: float = 0.01):
    """Poll `predicate` until it returns a truthy value, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """One qpu-broker instance rooted at `home` (QPU_BROKER_HOME)."""

    def __init__(self, home: pathlib.Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("QPU_BROKER_", "LUNA_", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY"))}
        self.env.update(QPU_BROKER_HOME=str(home), QPU_BROKER_NO_AUTOSTART="1", PYTHONUNBUFFERED="1")
        self.env.update(extra_env or {})
        self.paths = resolve_paths(self.env)
        self.proc: subprocess.Popen | None = None
        self.log_path = home.parent / f"{home.name}-daemon.log"
        self._log = None

    # -- lifecycle ---------------------------------------------------------
    def spawn(self, *args: str) -> subprocess.Popen:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon writes to it; closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "qpu_broker", "daemon", *args], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        return self.proc

    def start(self, *args: str, poll: float = 0.01) -> Daemon:
        """Spawn and wait until it answers (and, when it logs at info, says it is ready);
        `start_seconds` is how long that took, to `poll` seconds."""
        started = time.perf_counter()
        proc = self.spawn(*args)
        quiet = "--log-level" in args and args[args.index("--log-level") + 1] in ("warning", "error")

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode} at start:\n{self.log()}")
            return (quiet or "ready on" in self.log()) and answers(self.paths)

        wait_for(ready, "the daemon to be ready", interval=poll)
        self.start_seconds = time.perf_counter() - started
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=DEADLINE)
        self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients -----------------------------------------------------------
    def broker(self) -> Broker:
        return Broker(self.paths.socket, autostart=False)

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qpu_broker", *args], check=False, env={**self.env, **(env or {})},
                              input=input if input is not None else "", capture_output=True, text=True,
                              timeout=DEADLINE * 2, cwd=cwd)
