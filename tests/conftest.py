"""Test harness: the real daemon as a subprocess, on a socket in a temp dir."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from qpu_broker_client import Broker
from qpu_broker_client.autostart import answers
from qpu_broker_client.paths import resolve_paths
from qpu_broker_client.providers import PROVIDERS

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

    def start(self, *args: str) -> Daemon:
        proc = self.spawn(*args)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode} at start:\n{self.log()}")
            return "ready on" in self.log() and answers(self.paths)

        wait_for(ready, "the daemon to be ready")
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients -----------------------------------------------------------
    def broker(self) -> Broker:
        return Broker(self.paths.socket, autostart=False)

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qpu_broker", *args], check=False, env={**self.env, **(env or {})},
                              input=input if input is not None else "", capture_output=True, text=True, timeout=DEADLINE * 2)


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be long.
    path = pathlib.Path(tempfile.mkdtemp(prefix="qb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(short_tmp: pathlib.Path):
    made: list[Daemon] = []

    def make(name: str = "home", **env: str) -> Daemon:
        d = Daemon(short_tmp / name, env)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon().start()




@pytest.fixture
def rig(make_daemon, short_tmp):
    """A daemon configured for loopback fakes of every provider, with a stored token for each."""
    import secrets as _secrets

    from hardware import start_hardware, write_config

    canary = f"canary{_secrets.token_hex(8)}"
    hw = start_hardware(short_tmp / "hw", canary)
    d = make_daemon()
    write_config(d.home, hw)
    d.start()
    api = d.broker().qpu_token
    for provider in PROVIDERS:
        api.create(name=f"my-{provider}", provider=provider, token=hw.secrets[provider])
    yield d, hw, canary
    hw.close()


@pytest.fixture
def member_rig(make_daemon, short_tmp):
    """An org server (TLS), an ionq fake the org allows, and an admin and a member daemon logged in."""
    from orgserver import Rig

    r = Rig(make_daemon, short_tmp)
    yield r
    r.close()
