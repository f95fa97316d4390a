"""Test harness: the real daemon as a subprocess, on a socket in a temp dir."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from qpu_broker_client.providers import PROVIDERS

from testsupport.daemon import DEADLINE, Daemon, wait_for

__all__ = ["DEADLINE", "PROVIDERS", "Daemon", "wait_for"]  # tests import these from conftest


def pytest_configure(config) -> None:
    """Once, in the process that starts the workers (before they start): the tree's bytecode, which
    every daemon, org server and CLI process the tests start then reads (testsupport/bytecode.py)."""
    if not hasattr(config, "workerinput"):
        from testsupport.bytecode import compile_tree

        compile_tree()


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker more than there are cores. A test spends most of
    its time waiting on the daemons, servers and fakes it started, so a worker per core leaves the
    cores idle a sixth of the time (2 cores: 382 s with two workers, 360 s with three, quiet)."""
    import os

    return len(os.sched_getaffinity(0)) + 1

@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be long.
    path = pathlib.Path(tempfile.mkdtemp(prefix="qb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[pathlib.Path]:
    """A directory like /tmp: root's, sticky, writable by everyone (another user included)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="qb-shared-", dir="/tmp"))
    path.chmod(0o1777)
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

    from testsupport.hardware import start_hardware, write_config

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
def inproc(short_tmp):
    """The daemon's vault, resolver and forwarder in this process (testsupport/inproc.py), no config."""
    from testsupport.inproc import InProcess

    parts = InProcess(short_tmp / "home")
    yield parts
    parts.close()


@pytest.fixture
def inproc_rig(short_tmp):
    """The rig's fakes and tokens, with the daemon's parts in this process instead of a daemon."""
    import secrets as _secrets

    from testsupport.hardware import start_hardware, write_config
    from testsupport.inproc import InProcess

    canary = f"canary{_secrets.token_hex(8)}"
    hw = start_hardware(short_tmp / "hw", canary)
    write_config(short_tmp / "home", hw)
    parts = InProcess(short_tmp / "home")
    for provider in PROVIDERS:
        parts.create(f"my-{provider}", provider, hw.secrets[provider])
    yield parts, hw, canary
    parts.close()
    hw.close()


@pytest.fixture
def sdk_rig(rig, short_tmp):
    """The rig, and the environment of a user's shell with an empty HOME: no SDK config anywhere."""
    d, hw, canary = rig
    empty_home = short_tmp / "empty-home"
    empty_home.mkdir(mode=0o700)
    # Only what a user's shell has: no SDK config, no credentials, no XDG config to find.
    env = {"HOME": str(empty_home), "XDG_CONFIG_HOME": str(empty_home / ".config"),
           "XDG_DATA_HOME": str(empty_home / ".local/share")}
    return d, hw, canary, env


@pytest.fixture
def member_rig(make_daemon, short_tmp):
    """An org server (TLS), an ionq fake the org allows, and an admin and a member daemon logged in."""
    from testsupport.orgserver import Rig

    r = Rig(make_daemon, short_tmp)
    yield r
    r.close()


@pytest.fixture
def org(short_tmp):
    """An org server (TLS) alone: its admin alice's enrollment code is `org.admin_code`; no daemons."""
    from testsupport.fakes import make_ca
    from testsupport.orgserver import OrgServer

    server = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    yield server
    server.stop()


@pytest.fixture
def console_org(short_tmp):
    """An org server (TLS) serving its web console on a loopback port (`serve --console`)."""
    from testsupport.fakes import make_ca
    from testsupport.orgserver import OrgServer

    server = OrgServer(short_tmp, make_ca(short_tmp / "ca"))
    server.console = True
    yield server.start()
    server.stop()


@pytest.fixture
def as_local_operator():
    """In-process admin changes, made as the admin CLI makes them: the admin record names the local
    operator (reset after, so no other test inherits an actor)."""
    from qpu_broker.orgserver.admin_record import ACTOR, local_operator

    token = ACTOR.set(local_operator())
    yield
    ACTOR.reset(token)


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session; each test makes its own database in it."""
    from testsupport.postgres import Postgres

    server = Postgres().start()
    yield server
    server.stop()
