"""The real org server as a subprocess, with TLS from a test CA."""

from __future__ import annotations

import copy
import pathlib
import re
import secrets
import signal
import subprocess
import sys

import grpc
from conftest import DEADLINE, wait_for
from qpu_broker_client import QpuToken, TokenProvider
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc

from testsupport.fakes import FakeServer, TestCA, header_check, make_ca
from testsupport.org_device import Device


class OrgServer:
    def __init__(self, root: pathlib.Path, ca: TestCA | None, org: str = "Acme", *init_args: str,
                 copy_of: OrgServer | None = None) -> None:
        self.root = root
        self.ca = ca
        self.data = root / "org-data"
        self.log_path = root / "org-server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.database: str | None = None  # `serve --database`: another server's store, shared
        self.console = False  # `serve --console` on a loopback port of the system's choosing
        self.log_level = ""  # `serve --log-level`, when set (the server's default: info)
        root.mkdir(parents=True, exist_ok=True)
        if copy_of is not None:
            # A stopped server's data dir, copied as it is: the same users, tokens, ids and server key.
            subprocess.run(["cp", "-a", str(copy_of.data), str(self.data)], check=True, timeout=DEADLINE)
            self.admin_code = copy_of.admin_code
            return
        r = self.cli("init", "--org", org, "--admin", "alice", *init_args)
        assert r.returncode == 0, r.stderr
        self.admin_code = r.stdout.strip()  # alice's enrollment code: Rig's admin daemon logs in with it

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        verb, rest = args[0], list(args[1:])
        if verb in ("user", "provider", "token", "tls", "quota", "group", "device"):
            argv = ["org-server", verb, rest[0], "--data", str(self.data), *rest[1:]]
        else:
            argv = ["org-server", verb, "--data", str(self.data), *rest]
        return subprocess.run([sys.executable, "-m", "qpu_broker", *argv], check=False, capture_output=True, text=True, timeout=DEADLINE)

    def add_users(self, names: list[str]) -> list[str]:
        """Many members at once: `user add` takes several names in one call; their enrollment codes."""
        r = self.cli("user", "add", *names)
        assert r.returncode == 0, r.stderr
        pairs = [line.split("\t") for line in r.stdout.splitlines()]
        assert [name for name, _ in pairs] == names
        return [code for _, code in pairs]

    def add_user(self, name: str, role: str = "member", *options: str) -> str:
        """The new user's enrollment code."""
        r = self.cli("user", "add", name, "--role", role, *options)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def code_for(self, name: str) -> str:
        """A further enrollment code for an existing user (`user code`: another device of theirs)."""
        r = self.cli("user", "code", name)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def spawn(self, *, port: int = 0, host: str = "127.0.0.1", tls: bool = True) -> subprocess.Popen:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the server process, closed below
        argv = [sys.executable, "-m", "qpu_broker", "org-server", "serve", "--data", str(self.data),
                "--listen", f"{host}:{port or self.port}", *(["--database", self.database] if self.database else []),
                *(["--console", "127.0.0.1:0"] if self.console else []),
                *(["--log-level", self.log_level] if self.log_level else [])]
        if tls and self.ca is not None:
            argv += ["--tls-cert", str(self.ca.cert_file), "--tls-key", str(self.ca.key_file)]
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return proc

    def start(self, port: int = 0, *, host: str = "127.0.0.1", tls: bool = True) -> OrgServer:
        self.proc = self.spawn(port=port, host=host, tls=tls)

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

    def replica(self, name: str) -> OrgServer:
        """Another `serve` on the same data dir (PostgreSQL: a replica on the same database)."""
        other = copy.copy(self)
        other.log_path = self.root / f"{name}.log"
        other.proc, other.port, other._starts = None, 0, 0
        return other

    def console_url(self) -> str:
        """Where the last start's console listens (its log says)."""
        return re.findall(r"console listening on (\S+) ", self.log())[-1]

    def console_link(self, admin: str = "alice") -> str:
        """A one-time sign-in link, as `console-login` prints it."""
        r = self.cli("console-login", "--admin", admin)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def stub(self, bearer: str, ca_file: pathlib.Path | None = None,
             target: str | None = None) -> tuple[org_pb2_grpc.OrgServiceStub, list]:
        """A raw gRPC client (a member's own, no daemon) sending `bearer` as its credential, whatever it is."""
        creds = grpc.ssl_channel_credentials((ca_file or self.ca.ca_file).read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")] if target else []
        channel = grpc.secure_channel(target or self.address, creds, options=options)
        return org_pb2_grpc.OrgServiceStub(channel), [("authorization", f"Bearer {bearer}")]

    def enroll(self, code: str, target: str | None = None) -> Device:
        """What a member's daemon does at `org login`, with a raw client: a key pair, Enroll."""
        stub, _ = self.stub("", target=target)
        return Device.enroll(stub, code)

    def client(self, code: str, target: str | None = None) -> tuple[org_pb2_grpc.OrgServiceStub, list]:
        """A raw client of a device enrolled with `code`, with a fresh access token."""
        device = self.enroll(code, target)
        stub, _ = self.stub("", target=target)
        return stub, [("authorization", f"Bearer {device.access_token(stub)}")]

    def admin_client(self) -> tuple[org_pb2_grpc.OrgServiceStub, list]:
        """Alice's raw client, from a device of her own (Rig's admin daemon holds another)."""
        return self.client(self.code_for("alice"))


ORG = TokenProvider(ionq=QpuToken("organization", name="Org IonQ"))


def _vault(d):
    from qpu_broker.common.config import load_config
    from qpu_broker.daemon.main import open_vault
    from qpu_broker.tokens.events import Events

    return open_vault(load_config(d.paths.config_file), d.paths.store, d.paths.key_file, Events())


def store_login_of_release_before(d, server: str, ca_pem: bytes, api_key: str) -> None:
    """White box, the daemon stopped: the org login as the release before devices stored it (one
    server, and the member's API key)."""
    import asyncio
    import json

    from qpu_broker.keys import crypto
    from qpu_broker.tokens.org_login import ORG_LOGIN_AD

    vault = _vault(d)
    try:
        doc = json.dumps({"server": server, "ca_pem": ca_pem.decode(), "api_key": api_key}).encode()
        nonce, ciphertext = crypto.seal(vault.keys.key(), doc, ORG_LOGIN_AD)
        asyncio.run(vault.integrity.write(vault.integrity.writer.set_meta, org_login=nonce + ciphertext))
    finally:
        vault.close()


def stored_org_login(d):
    """White box, the daemon stopped: the org login its store holds (sealed), opened."""
    vault = _vault(d)
    try:
        return vault.org_login.read()
    finally:
        vault.close()


def reserve_tries(server: OrgServer, code: str, token_id: str, tries: int) -> int:
    """How many of `tries` Reserve calls the server granted (the rest must be RESOURCE_EXHAUSTED)."""
    stub, md = server.client(code)
    won = 0
    for _ in range(tries):
        try:
            stub.Reserve(org_pb2.ReserveRequest(token_id=token_id), metadata=md)
            won += 1
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    return won


class Rig:
    """An org server, an ionq fake the org allows, and an admin and a member daemon logged in."""

    def __init__(self, make_daemon, root, grace=900):
        self.ca = make_ca(root / "ca")
        self.secret = f"canary-org-{secrets.token_hex(8)}"
        self.fake = FakeServer(header_check("Authorization", lambda: "apiKey " + self.secret), self.ca)
        self.server = OrgServer(root, self.ca).start()
        # Where org tokens may go is the org's say: the admin allows the fake, org-wide.
        r = self.server.cli("provider", "set", "ionq", "--host", self.fake.netloc, "--ca-file", str(self.ca.ca_file))
        assert r.returncode == 0, r.stderr
        self.member_code = self.server.add_user("bob")
        self.admin = self._daemon(make_daemon, "admin", grace)
        self.member = self._daemon(make_daemon, "member", grace)
        self.login(self.admin, self.server.admin_code)
        self.login(self.member, self.member_code)

    def _daemon(self, make_daemon, name, grace):
        d = make_daemon(name)
        d.home.mkdir(mode=0o700, parents=True)
        (d.home / "config.toml").write_text(f'[org]\ngrace_seconds = {grace}\n')
        return d.start()

    def login(self, d, code):
        # Through the client, not the CLI (whose login test_org.py covers): a process start per
        # login is most of a rig's set-up.
        assert d.broker().org_login(self.server.address, code, ca_pem=self.ca.ca_file.read_bytes()).state == "connected"

    def member_client(self):
        """Bob's own gRPC client, no daemon: a device of his own (from a further code)."""
        return self.server.client(self.server.code_for("bob"))

    def forward(self, d):
        return d.broker().forward("GET", self.fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=ORG)

    def close(self):
        self.server.stop()
        self.fake.close()
