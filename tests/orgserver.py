"""The real org server as a subprocess, with TLS from a test CA."""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys

import grpc

from conftest import DEADLINE, wait_for
from fakes import TestCA
from qpu_broker_client.proto import org_pb2_grpc


class OrgServer:
    def __init__(self, root: pathlib.Path, ca: TestCA, org: str = "Acme") -> None:
        self.root = root
        self.ca = ca
        self.data = root / "org-data"
        self.log_path = root / "org-server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        r = self.cli("init", "--org", org, "--admin", "alice")
        assert r.returncode == 0, r.stderr
        self.admin_key = r.stdout.strip()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        verb, rest = args[0], list(args[1:])
        if verb in ("user", "provider"):
            argv = ["org-server", verb, rest[0], "--data", str(self.data), *rest[1:]]
        else:
            argv = ["org-server", verb, "--data", str(self.data), *rest]
        return subprocess.run([sys.executable, "-m", "qpu_broker", *argv], capture_output=True, text=True, timeout=DEADLINE)

    def add_user(self, name: str, role: str = "member") -> str:
        r = self.cli("user", "add", name, "--role", role)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def start(self, port: int = 0) -> OrgServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qpu_broker", "org-server", "serve", "--data", str(self.data),
             "--listen", f"127.0.0.1:{port or self.port}", "--tls-cert", str(self.ca.cert_file), "--tls-key", str(self.ca.key_file)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"org server exited {self.proc.returncode}:\n{self.log()}")
            found = re.findall(r"ready on \S+:(\d+) ", self.log())
            return int(found[-1]) if found and self.log().count("ready on") > self._starts else None

        self._starts = self.log().count("ready on")
        self.port = wait_for(ready, "the org server to be ready")
        return self

    _starts = 0

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def stub(self, key: str, ca_file: pathlib.Path | None = None) -> tuple[org_pb2_grpc.OrgServiceStub, list]:
        creds = grpc.ssl_channel_credentials((ca_file or self.ca.ca_file).read_bytes())
        channel = grpc.secure_channel(self.address, creds)
        return org_pb2_grpc.OrgServiceStub(channel), [("authorization", f"Bearer {key}")]
