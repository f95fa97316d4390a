"""The socket the client checked is the one it talks to (attack review, issue 20, item 1 reopened).

The review's attack: a socket directory missing when the client checks it and back, another
user's, when grpc connects. Here each step of it runs at a seam instead of racing: where autostart
returns and where the client hands grpc its address (grpc.insecure_channel). The other user is
real (testsupport.other_user), and so are the daemons.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
from collections.abc import Callable

import grpc
import pytest
from conftest import wait_for
from qpu_broker.common.config import load_config
from qpu_broker_client import (
    Broker,
    FailedPreconditionError,
    QpuBrokerError,
    UnavailableError,
    autostart,
    daemon_socket,
    trust,
)
from qpu_broker_client.daemon_socket import SUN_PATH_MAX, reach

from testsupport.other_user import OTHER_UID, Impostor, as_other_user, make_dirs

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="playing another local user needs root")
SECRET = "ionq-key-canary-5c81e2"


@pytest.fixture
def at_connect(monkeypatch) -> list[Callable[[], None]]:
    """Steps to run as the client hands grpc the address it will connect to, after every check."""
    steps: list[Callable[[], None]] = []
    real = grpc.insecure_channel

    def hooked(target: str, *args, **kwargs):
        while steps:
            steps.pop(0)()
        return real(target, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", hooked)
    return steps


def _add(b: Broker) -> None:
    b.qpu_token.create(name="canary", provider="ionq", token=SECRET)


def _received(record: pathlib.Path) -> bytes:
    return record.read_bytes() if record.exists() else b""


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_a_socket_dir_missing_at_the_check_ends_the_call(shared_tmp, short_tmp, at_connect):
    """QPU_BROKER_NO_AUTOSTART: nothing there is an answer, and grpc never gets the name the other user makes next."""
    sock = shared_tmp / "qb-ssh-XXXX" / "broker.sock"  # like ssh-agent's /tmp/ssh-XXXX/agent.sock
    record = short_tmp / "received"
    with contextlib.ExitStack() as stack:
        at_connect.append(lambda: stack.enter_context(Impostor(sock, record, make_dirs(sock.parent), SECRET.encode())))
        with pytest.raises(QpuBrokerError) as refused:
            _add(Broker(sock, autostart=False))
    assert SECRET.encode() not in _received(record)
    assert refused.type is UnavailableError
    _one_line(refused, f"no qpu-broker daemon answers on {sock}", "qpu-broker daemon")


def test_the_reviews_autostart_race_never_reaches_grpc(shared_tmp, short_tmp, at_connect, monkeypatch):
    """The attack as reported, each step at its seam: the squatter's directory is refused, and its
    absence at the re-check is not a pass."""
    sock = shared_tmp / "qb-ssh-XXXX" / "broker.sock"
    away = shared_tmp / "qb-ssh-XXXX.away"
    record = short_tmp / "received"
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("QPU_BROKER_HOME", str(home))
    real_start = autostart.start_daemon

    with contextlib.ExitStack() as stack:
        def start(paths):
            # 1. The other user sees the daemon start and makes its directory first: it refuses that, and exits.
            stack.enter_context(Impostor(sock, record, make_dirs(sock.parent, mode=0o755), SECRET.encode()))
            try:
                found = real_start(paths)  # 2. its probe of the socket meets the impostor
            finally:
                wait_for(lambda: "refusing" in _received(home / "state" / "daemon.log").decode(),
                         "the autostarted daemon to refuse the squatted directory")
            as_other_user(lambda: sock.parent.rename(away))  # 3. gone at the re-check ...
            at_connect.append(lambda: as_other_user(lambda: away.rename(sock.parent)))  # 4. ... back for grpc
            return found

        monkeypatch.setattr(autostart, "start_daemon", start)
        with pytest.raises(QpuBrokerError) as refused:
            _add(Broker(sock, autostart=True))
    assert SECRET.encode() not in _received(record)
    # What to do, in one line: the directory is someone else's, so choose another path.
    assert refused.type is FailedPreconditionError
    _one_line(refused, f"refusing the socket {sock}", f"{sock.parent} is owned by uid {OTHER_UID}", "point QPU_BROKER_SOCKET")


def test_a_rename_after_the_check_cannot_redirect_the_connection(shared_tmp, short_tmp, make_daemon, at_connect):
    """The checked directory is held: grpc connects through it, and the daemon unlinks through its own."""
    sock = shared_tmp / "qb-run" / "broker.sock"
    moved = shared_tmp / "qb-run.moved"
    record = short_tmp / "received"
    d = make_daemon(QPU_BROKER_SOCKET=str(sock)).start()
    with contextlib.ExitStack() as stack:
        def swap() -> None:
            sock.parent.rename(moved)  # only root (or we) can rename our directory: here, the test
            stack.enter_context(Impostor(sock, record, make_dirs(sock.parent, mode=0o755), SECRET.encode()))

        at_connect.append(swap)
        b = Broker(sock, autostart=False)
        try:
            _add(b)
        finally:
            assert SECRET.encode() not in _received(record)
        assert b.qpu_token.get("canary").provider == "ionq"
        assert d.stop() == 0
        assert sock.exists() and not (moved / "broker.sock").exists(), "the daemon removed its own socket, only"


def _comes_and_goes(theirs: pathlib.Path, monkeypatch) -> None:
    """`theirs`, another user's directory, is gone whenever it is looked up by name (lstat), back after."""
    away = theirs.with_name(theirs.name + ".away")
    real_lstat = os.lstat

    def flicker(path, *args, **kwargs):
        if os.fspath(path) != str(theirs):
            return real_lstat(path, *args, **kwargs)
        theirs.rename(away)  # its owner may rename it at will (the test does it for them, in step)
        try:
            return real_lstat(path, *args, **kwargs)
        finally:
            away.rename(theirs)

    monkeypatch.setattr(os, "lstat", flicker)


def test_the_daemon_never_makes_its_directory_inside_one_that_comes_and_goes(shared_tmp, monkeypatch):
    """The daemon's side of the same race: its socket directory's missing parent, made first by
    another user and gone whenever it is looked up by name. Each entry is opened and checked by
    descriptor, and what is made is made in the directory just checked."""
    theirs = shared_tmp / "qb-runtime"
    as_other_user(make_dirs(theirs))
    _comes_and_goes(theirs, monkeypatch)
    with pytest.raises(FailedPreconditionError, match=f"{theirs} is owned by uid {OTHER_UID}"):
        trust.ensure_private_dir(theirs / "qpu-broker")
    assert not (theirs / "qpu-broker").exists()


def test_a_config_is_read_from_the_file_checked(shared_tmp, monkeypatch):
    """The same for what the daemon reads: a home another user made, with their config.toml in it."""
    theirs = shared_tmp / "qb-home"

    def plant() -> None:
        theirs.mkdir(mode=0o755)
        (theirs / "config.toml").write_text('[providers.ibm]\nhosts = ["iam.attacker.example"]\n')

    as_other_user(plant)
    _comes_and_goes(theirs, monkeypatch)
    with pytest.raises(FailedPreconditionError, match=f"{theirs} is owned by uid {OTHER_UID}"):
        load_config(theirs / "config.toml")


def _held(directory: pathlib.Path) -> int:
    """How many of this process's descriptors hold `directory`."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += os.readlink(f"/proc/self/fd/{fd}") == str(directory)
    return held


def test_the_held_socket_is_reached_through_its_directory(make_daemon):
    d = make_daemon().start()
    found = reach(d.paths.socket)
    assert found is not None
    assert found.address.startswith("/proc/self/fd/") and found.address.endswith("/broker.sock")
    assert len(found.address) <= SUN_PATH_MAX
    assert os.path.samefile(found.address, d.paths.socket)
    assert _held(d.paths.socket.parent) == 1
    found.close()
    for _ in range(20):  # a connection's directory goes with it
        with Broker(d.paths.socket, autostart=False) as b:
            b.status()
            assert _held(d.paths.socket.parent) == 1
    assert _held(d.paths.socket.parent) == 0
    for _ in range(20):  # and with a Broker dropped unclosed, as scripts do (the suite ran out at 1024)
        Broker(d.paths.socket, autostart=False).status()
    gc.collect()
    assert _held(d.paths.socket.parent) == 0


def test_sockets_grpc_could_not_reach_safely_are_refused_in_one_line(shared_tmp, short_tmp):
    # Directly in a sticky directory: after the check, another user could put theirs at the name.
    with pytest.raises(FailedPreconditionError) as sticky:
        Broker(shared_tmp / "broker.sock", autostart=False).status()
    _one_line(sticky, f"its directory {shared_tmp} is writable by others (mode 1777)", "point QPU_BROKER_SOCKET")
    (short_tmp / "run").mkdir(mode=0o700)
    with pytest.raises(FailedPreconditionError) as long:
        Broker(short_tmp / "run" / ("s" * 100), autostart=False).status()
    _one_line(long, f"longer than {SUN_PATH_MAX} bytes", "shorter file name")


def test_without_o_path_the_checks_go_by_name_and_nothing_there_is_still_no_pass(make_daemon, short_tmp, monkeypatch):
    """Where there is no O_PATH (not Linux) the walk is by name, as checked, and that is the limit."""
    for module in (trust, daemon_socket):
        monkeypatch.setattr(module, "can_pin", lambda: False)
    d = make_daemon().start()
    found = reach(d.paths.socket)
    assert found is not None and found.address == str(d.paths.socket)
    found.close()
    with pytest.raises(UnavailableError, match="no qpu-broker daemon answers"):
        Broker(short_tmp / "nothing-here" / "broker.sock", autostart=False).status()
    trust.ensure_private_dir(short_tmp / "a" / "b")
    assert (short_tmp / "a" / "b").stat().st_mode & 0o777 == 0o700
