"""The package as users get it: public API, committed bindings, the systemd unit."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import qpu_broker_client

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_public_api_is_deliberate():
    assert sorted(qpu_broker_client.__all__) == sorted([
        "PROVIDERS", "AgentStatus", "AlreadyExistsError", "Broker", "CheckResult", "DamagedToken",
        "DeadlineExceededError", "FailedPreconditionError", "ForwardResponse", "InvalidArgumentError", "LockedError",
        "NotFoundError", "OrgStatus", "PermissionDeniedError", "QpuBrokerError", "QpuToken", "QpuTokenType",
        "ResolvedToken", "ResourceExhaustedError", "Secret", "TokenProvider", "UnauthenticatedError", "UnavailableError",
        "__version__",
    ])
    for name in qpu_broker_client.__all__:
        assert hasattr(qpu_broker_client, name)


def test_client_never_imports_the_daemon():
    code = "import sys, qpu_broker_client, qpu_broker_client.broker; print(any(m.startswith('qpu_broker.') or m == 'qpu_broker' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_domain_code_does_not_import_grpc_or_proto():
    modules = [ROOT / "broker" / "qpu_broker" / f"{m}.py" for m in (
        "vault", "keyring", "store", "crypto", "keys", "config", "secrets_format", "forwarder", "resolution",
        "destinations", "exchange_cache")]
    modules += sorted((ROOT / "broker" / "qpu_broker" / "providers").glob("*.py"))
    for module in modules:
        text = module.read_text()
        assert not re.search(r"^\s*(import grpc|from grpc|from qpu_broker_client\.proto|from qpu_broker_client import proto)", text, re.MULTILINE), module


def test_committed_bindings_match_proto():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-proto"), "--check"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "qpu-broker").symlink_to("/bin/true")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "qpu-broker.service"
    shutil.copy(ROOT / "systemd" / "qpu-broker.service", unit)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    verify = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], check=False, env=env, capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--user", str(unit)], check=False, env=env,
                         capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout).group(1))
    assert exposure <= 2.0, sec.stdout
    text = unit.read_text()
    assert "Type=notify" in text and re.search(r"^ExecStart=\S+ daemon$", text, re.MULTILINE)
