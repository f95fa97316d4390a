"""The daemon process: start-up checks, one daemon per socket, signals, readiness."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading

import grpc
import pytest
from conftest import DEADLINE, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from qpu_broker_client import Broker, NotFoundError, UnavailableError


def _refused(d, *needles):
    proc = d.spawn()
    code = proc.wait(timeout=DEADLINE)
    log = d.log()
    assert code == 1, log
    for needle in needles:
        assert needle in log, log
    assert "Traceback" not in log
    assert not d.paths.socket.exists()


def test_runtime_dir_with_loose_mode_is_refused(make_daemon):
    d = make_daemon()
    d.paths.runtime_dir.mkdir(parents=True, mode=0o755)
    os.chmod(d.paths.runtime_dir, 0o755)
    _refused(d, "mode 0755", "looser than 0700", str(d.paths.runtime_dir))


def test_runtime_dir_with_foreign_owner_is_refused(make_daemon):
    if os.getuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    d = make_daemon()
    d.paths.runtime_dir.mkdir(parents=True, mode=0o700)
    os.chown(d.paths.runtime_dir, 65534, 65534)
    _refused(d, "owned by uid 65534")


def test_second_daemon_is_refused_and_stale_socket_cleaned(make_daemon):
    d = make_daemon().start()
    second = make_daemon()
    second.log_path = d.home.parent / "second.log"
    proc = second.spawn()
    assert proc.wait(timeout=DEADLINE) == 1
    assert f"another qpu-broker daemon (pid {d.proc.pid})" in second.log()
    assert d.broker().status().pid == d.proc.pid  # the first one is untouched
    d.kill()

    # SIGKILL left the socket behind: the next start removes it and serves.
    assert d.paths.socket.exists()
    d.start()
    assert "removing the stale socket" in d.log()
    assert d.broker().status().pid == d.proc.pid


def test_sigterm_drains_in_flight_calls_and_notifies(make_daemon, short_tmp):
    notify_path = short_tmp / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(DEADLINE)
    d = make_daemon(NOTIFY_SOCKET=str(notify_path)).start()
    ready = listener.recv(4096).decode()
    assert "READY=1" in ready and f"MAINPID={d.proc.pid}" in ready

    b = d.broker()
    b.change_passphrase(None, "drain me")
    b.lock()
    result = {}

    def unlock():
        try:
            d.broker().unlock("drain me")
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    worker = threading.Thread(target=unlock)
    worker.start()
    # The unlock is in flight (deriving its key, >= 0.25 s) when SIGTERM arrives.
    wait_for(lambda: "unlock: deriving the passphrase key" in d.log(), "the unlock to start")
    d.proc.send_signal(signal.SIGTERM)
    worker.join(DEADLINE)
    assert result == {"ok": True}
    assert d.proc.wait(timeout=DEADLINE) == 0
    assert "STOPPING=1" in listener.recv(4096).decode()
    assert "stopped" in d.log() and not d.paths.socket.exists()
    listener.close()


def test_sigint_exits_zero(daemon):
    assert daemon.stop(signal.SIGINT) == 0


def test_health_and_reflection(daemon):
    with grpc.insecure_channel(f"unix:{daemon.paths.socket}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "qpubroker.v1.TokenService", "qpubroker.v1.AgentService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"qpubroker.v1.TokenService", "qpubroker.v1.AgentService", "grpc.health.v1.Health"} <= names
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="qpubroker.v1.TokenService")
        files = next(iter(refl.ServerReflectionInfo(iter([req])))).file_descriptor_response.file_descriptor_proto
        assert files, "reflection must serve the token service's descriptors"


def test_cli_autostarts_a_daemon_unless_told_not_to(make_daemon):
    d = make_daemon()
    off = d.cli("status")
    assert off.returncode == 1 and "no qpu-broker daemon answers" in off.stderr
    canaries = {"LUNA_IBM_TOKEN": f"canary-{os.getpid()}-ibm", "AWS_SECRET_ACCESS_KEY": f"canary-{os.getpid()}-aws"}
    r = d.cli("token", "list", "--json", env={"QPU_BROKER_NO_AUTOSTART": "", **canaries})
    assert r.returncode == 0, r.stderr
    status = Broker(d.paths.socket, autostart=False).status()
    pid = status.pid
    try:
        assert "ready on" in d.paths.log_file.read_text()
        # The daemon runs detached from the CLI that started it, in /, with a clean environment.
        assert os.getsid(pid) == pid
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
        assert all(value.encode() not in environ for value in canaries.values())
        assert b"QPU_BROKER_HOME=" in environ and b"QPU_BROKER_SOCKET=" in environ
        # Hardened: no core dumps, and the data key in locked memory.
        assert re.search(r"Max core file size\s+0\s+0", pathlib.Path(f"/proc/{pid}/limits").read_text())
        assert status.key_memory_locked and status.warnings == ()
        assert int(re.search(r"VmLck:\s+(\d+)", pathlib.Path(f"/proc/{pid}/status").read_text())[1]) > 0
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not d.paths.socket.exists(), "the autostarted daemon to stop")


def test_python_client_without_daemon(make_daemon):
    d = make_daemon()
    with pytest.raises(UnavailableError, match=str(d.paths.socket)):
        Broker(d.paths.socket, autostart=False).status()


def test_bad_config_names_the_key(make_daemon):
    d = make_daemon()
    d.home.mkdir(parents=True, mode=0o700)
    (d.home / "config.toml").write_text("[limits]\nname_max_chars = 64\nsecret_max = 5\n")
    _refused(d, "unknown key limits.secret_max", "secret_max_bytes")
    (d.home / "config.toml").write_text("[limits]\nname_max_chars = 0\n")
    _refused(d, "limits.name_max_chars must be an integer from 1 to 1024")


def test_config_limits_apply(make_daemon):
    d = make_daemon()
    d.home.mkdir(parents=True, mode=0o700)
    (d.home / "config.toml").write_text("[limits]\nname_max_chars = 8\n")
    d.start()
    r = d.cli("token", "add", "123456789", "--provider", "ibm", input="s\n")
    assert r.returncode == 1 and "at most 8 characters" in r.stderr


def test_version_and_help():
    r = subprocess.run([sys.executable, "-m", "qpu_broker", "--version"], check=False, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("qpu-broker ")


def test_two_sockets_cannot_share_one_store(make_daemon):
    d = make_daemon().start()
    other = make_daemon(QPU_BROKER_SOCKET=str(d.home.parent / "other.sock"))
    other.home = d.home
    other.env["QPU_BROKER_HOME"] = str(d.home)
    other.log_path = d.home.parent / "other.log"
    proc = other.spawn()
    assert proc.wait(timeout=DEADLINE) == 1
    assert f"another qpu-broker daemon (pid {d.proc.pid}) is running on the store" in other.log()


def test_python_client_autostarts_on_its_own_socket(make_daemon):
    d = make_daemon()
    env_socket = d.home.parent / "custom.sock"
    code = ("import os; from qpu_broker_client import Broker; "
            f"b = Broker({str(env_socket)!r}); print(b.status().pid, b.status().socket_path)")
    r = subprocess.run([sys.executable, "-c", code], check=False, env={**d.env, "QPU_BROKER_NO_AUTOSTART": ""},
                       capture_output=True, text=True, timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    pid, path = r.stdout.split()
    try:
        assert path == str(env_socket)
    finally:
        os.kill(int(pid), signal.SIGTERM)
        wait_for(lambda: not env_socket.exists(), "the autostarted daemon to stop")


def test_undecodable_messages_are_invalid_argument_with_one_rate_limited_warning(daemon):
    ident = lambda raw: raw
    channel = grpc.insecure_channel(f"unix:{daemon.paths.socket}")
    unary = channel.unary_unary("/qpubroker.v1.TokenService/GetToken", request_serializer=ident,
                                response_deserializer=ident)
    stream = channel.stream_stream("/qpubroker.v1.RequestService/Forward", request_serializer=ident,
                                   response_deserializer=ident)
    for _ in range(50):
        with pytest.raises(grpc.RpcError) as err:
            unary(b".", timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "GetToken request" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(stream(iter([b"."]), timeout=10))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "Forward request" in err.value.details()
    log = daemon.log()
    assert "Traceback" not in log and "internal error" not in log
    assert 1 <= log.count("undecodable") <= 2  # one warning, then at most one per 10 s per peer
    assert log.count("INVALID_ARGUMENT") == 0  # and no line per refused call: the log cannot be grown at will
    assert daemon.broker().status().locked is False  # and the daemon serves on


def test_config_reloads_on_request_and_on_sighup_and_a_bad_file_changes_nothing(make_daemon, short_tmp):
    from testsupport.fakes import FakeServer, header_check, make_ca

    ca = make_ca(short_tmp / "ca")
    fake = FakeServer(header_check("Authorization", lambda: "apiKey ionq-secret"), ca)
    try:
        d = make_daemon().start()
        b = d.broker()
        b.qpu_token.create(name="ionq", provider="ionq", token="ionq-secret")
        from qpu_broker_client import PermissionDeniedError, QpuToken, TokenProvider

        tokens = TokenProvider(ionq=QpuToken("personal", name="ionq"))
        with pytest.raises(PermissionDeniedError):
            b.forward("GET", fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=tokens)
        good = f'[providers.ionq]\nhosts = ["{fake.netloc}"]\nca_file = "{ca.ca_file}"\n'
        (d.home / "config.toml").write_text(good)
        r = d.cli("reload")
        assert r.returncode == 0 and r.stdout.strip() == "config reloaded", r.stderr
        assert b.forward("GET", fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=tokens).status_code == 200
        (d.home / "config.toml").write_text(good + "[agent]\nauto_lock_secs = 5\n")
        bad = d.cli("reload")
        assert bad.returncode == 1 and "unknown key agent.auto_lock_secs" in bad.stderr
        assert b.forward("GET", fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=tokens).status_code == 200
        (d.home / "config.toml").write_text("[agent]\nauto_lock_seconds = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.log().count("config reloaded from") == 2, "the SIGHUP reload")
        with pytest.raises(PermissionDeniedError):  # the fake is no longer one of ionq's hosts
            b.forward("GET", fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=tokens)
        wait_for(lambda: b.status().locked, "the reloaded auto-lock to lock the agent")
        assert d.proc.poll() is None
    finally:
        fake.close()


def test_an_autostarted_daemons_log_is_capped_with_one_rotation(make_daemon):
    """The log file autostart gives the daemon grows to agent.log_max_bytes, then becomes .1 (the one
    before is dropped): at most twice the cap on disk, however long the daemon runs."""
    d = make_daemon()
    d.home.mkdir(mode=0o700, parents=True)
    (d.home / "config.toml").write_text('[agent]\nlog_level = "debug"\nlog_max_bytes = 4096\n')
    r = d.cli("token", "list", env={"QPU_BROKER_NO_AUTOSTART": ""})
    assert r.returncode == 0, r.stderr
    b = Broker(d.paths.socket, autostart=False)
    pid = b.status().pid
    log, older = d.paths.log_file, d.paths.log_file.with_name(d.paths.log_file.name + ".1")
    try:
        for _ in range(120):  # a debug line each, about 9 KiB in all
            b.status()
        wait_for(lambda: older.exists() and "AgentService/Status" in log.read_text(), "a rotation")
        for _ in range(120):
            b.status()
        line = max(len(x) + 1 for x in [*log.read_text().splitlines(), *older.read_text().splitlines()])
        assert log.stat().st_size < 4096 + line and 4096 <= older.stat().st_size < 4096 + line
        assert sorted(p.name for p in log.parent.iterdir() if p.name.startswith(log.name)) == [log.name, older.name]
        assert log.stat().st_mode & 0o777 == 0o600
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not d.paths.socket.exists(), "the autostarted daemon to stop")


def test_at_info_rpcs_are_summed_up_not_logged_one_by_one(make_daemon):
    """Each call's line is at debug (docs/performance.md: cheaper per call); info gets one summary a minute,
    and at stop the summary of the calls since the last one."""
    d = make_daemon().start()
    b = d.broker()
    for _ in range(3):
        b.status()
    with pytest.raises(NotFoundError):
        b.qpu_token.get("nope")
    assert d.stop() == 0
    assert "rpc /qpubroker" not in d.log()
    [summary] = [line for line in d.log().splitlines() if "rpc summary" in line]
    assert " INFO " in summary and "AgentService/Status OK x3" in summary and "TokenService/GetToken NOT_FOUND x1" in summary
