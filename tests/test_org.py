"""Organization tokens end to end: real org server (TLS), admin and member daemons, a fake provider."""

from __future__ import annotations

import secrets
import time

import pytest

from conftest import wait_for
from fakes import FakeServer, header_check, make_ca
from orgserver import OrgServer
from qpu_broker_client import (
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
    UnauthenticatedError,
    UnavailableError,
)

ORG = TokenProvider(ionq=QpuToken("organization", name="Org IonQ"))


class Rig:
    def __init__(self, make_daemon, root, grace=900):
        self.ca = make_ca(root / "ca")
        self.secret = f"canary-org-{secrets.token_hex(8)}"
        self.fake = FakeServer(header_check("Authorization", lambda: "apiKey " + self.secret), self.ca)
        self.server = OrgServer(root, self.ca).start()
        # Where org tokens may go is the org's say: the admin allows the fake, org-wide.
        r = self.server.cli("provider", "set", "ionq", "--host", self.fake.netloc, "--ca-file", str(self.ca.ca_file))
        assert r.returncode == 0, r.stderr
        self.member_key = self.server.add_user("bob")
        self.admin = self._daemon(make_daemon, "admin", grace)
        self.member = self._daemon(make_daemon, "member", grace)
        self.login(self.admin, self.server.admin_key)
        self.login(self.member, self.member_key)

    def _daemon(self, make_daemon, name, grace):
        d = make_daemon(name)
        d.home.mkdir(mode=0o700, parents=True)
        (d.home / "config.toml").write_text(f'[org]\ngrace_seconds = {grace}\n')
        return d.start()

    def login(self, d, key):
        r = d.cli("org", "login", "--server", self.server.address, "--ca", str(self.ca.ca_file), input=key + "\n")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: d.broker().org_status().state == "connected", "the org push stream")

    def forward(self, d):
        return d.broker().forward("GET", self.fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=ORG)

    def close(self):
        self.server.stop()
        self.fake.close()


@pytest.fixture
def rig(make_daemon, short_tmp):
    r = Rig(make_daemon, short_tmp)
    yield r
    r.close()


def _create(rig):
    return rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret,
                                               token_type="organization")


def test_admin_creates_member_uses_and_never_sees_or_changes(rig):
    made = _create(rig)
    assert made.token_type is QpuTokenType.ORGANIZATION and made.id.startswith("org_")
    member = rig.member.broker()
    listed = wait_for(lambda: member.qpu_token.get_all()[QpuTokenType.ORGANIZATION], "the member to see it")
    assert [t.name for t in listed] == ["Org IonQ"] and listed[0].provider == "ionq"
    assert member.qpu_token.get_all()[QpuTokenType.PERSONAL] == []
    wait_for(lambda: _ok(rig), "the member's first use")
    assert rig.fake.seen[-1].header("Authorization") == "apiKey " + rig.secret

    handle = listed[0].id
    attempts = {
        "get": lambda: member.qpu_token.get(qpu_token_id=handle, token_type="organization"),
        "rename": lambda: member.qpu_token.update(qpu_token_id=handle, name="x", token_type="organization"),
        "rotate": lambda: member.qpu_token.update(qpu_token_id=handle, token="x", token_type="group"),
        "delete": lambda: member.qpu_token.delete(qpu_token_id=handle, token_type="organization"),
        "create": lambda: member.qpu_token.create(name="m", provider="ionq", token="s", token_type="organization"),
    }
    for attempt in attempts.values():
        with pytest.raises(PermissionDeniedError, match="org admin"):
            attempt()
    r = rig.member.cli("token", "rm", "--type", "organization", "Org IonQ")
    assert r.returncode == 1 and "org admin" in r.stderr
    # An admin may read it, through the same API.
    assert rig.admin.broker().qpu_token.get(name="Org IonQ", token_type="organization").provider == "ionq"
    r = rig.member.cli("request", "--provider", "ionq", "--org-token", "Org IonQ", rig.fake.url("/x"))
    assert r.returncode == 0 and '"ok": true' in r.stdout

    # The org secret never reaches the member's side: responses, logs, files.
    outputs = [repr(member.qpu_token.get_all()), rig.member.cli("token", "list", "--json").stdout,
               rig.member.cli("status", "--json").stdout, repr(member.resolve("ionq", ORG))]
    assert all(rig.secret not in o for o in outputs)
    assert rig.secret not in rig.member.log()
    for path in rig.member.home.rglob("*"):
        if path.is_file():
            assert rig.secret.encode() not in path.read_bytes(), path
            # The member's API key is kept sealed too, never in clear.
            assert rig.member_key.encode() not in path.read_bytes(), path
    assert rig.member_key not in rig.member.log() and all(rig.member_key not in o for o in outputs)


def _ok(rig) -> bool:
    """One use by the member; False while the push has not reached its daemon yet."""
    try:
        return rig.forward(rig.member).status_code == 200
    except (NotFoundError, UnavailableError):
        return False


def test_revocation_and_rotation_reach_a_using_daemon_within_2s(rig):
    _create(rig)
    wait_for(lambda: _ok(rig), "first use")
    admin = rig.admin.broker().qpu_token
    old = rig.secret
    rig.secret = old + "-rotated"
    admin.update(qpu_token_name="Org IonQ", token=rig.secret, token_type="organization")
    started = time.monotonic()
    wait_for(lambda: rig.forward(rig.member).status_code == 200, "the rotated secret", timeout=2)
    rotated_after = time.monotonic() - started

    admin.delete(qpu_token_name="Org IonQ", token_type="organization")
    started = time.monotonic()

    def revoked():
        try:
            rig.forward(rig.member)
        except NotFoundError:
            return True
        return False

    wait_for(revoked, "the revocation", timeout=2)
    assert time.monotonic() - started <= 2 and rotated_after <= 2


def test_grace_then_unavailable_then_back(make_daemon, short_tmp):
    rig = Rig(make_daemon, short_tmp, grace=2)
    try:
        _create(rig)
        wait_for(lambda: _ok(rig), "first use")
        port = rig.server.port
        assert rig.server.stop() == 0
        wait_for(lambda: rig.member.broker().org_status().state in ("disconnected", "unavailable"), "the drop")

        def unavailable():
            try:
                rig.forward(rig.member)
            except UnavailableError as exc:
                return rig.server.address in str(exc)
            return False

        wait_for(unavailable, "the grace period to end", timeout=15)
        assert rig.member.broker().org_status().state == "unavailable"
        assert "unavailable" in rig.member.cli("status").stdout
        rig.server.start(port)
        wait_for(lambda: _ok(rig), "the org server to be back", timeout=15)
        assert rig.member.broker().org_status().state == "connected"
    finally:
        rig.close()


def test_within_grace_cached_handles_keep_working(rig):
    _create(rig)
    wait_for(lambda: _ok(rig), "first use")
    rig.server.stop()
    wait_for(lambda: rig.member.broker().org_status().state == "disconnected", "the drop")
    assert rig.forward(rig.member).status_code == 200  # grace is 900 s here
    rig.server.start(rig.server.port)


def test_wrong_key_and_foreign_certificate_are_refused(make_daemon, short_tmp):
    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp, ca).start()
    try:
        d = make_daemon().start()
        b = d.broker()
        with pytest.raises(UnauthenticatedError):
            b.org_login(server.address, "qbo_0000000000000000_" + "A" * 43, ca_pem=ca.ca_file.read_bytes())
        assert b.org_status().state == "not-logged-in"
        other = make_ca(short_tmp / "other", "another CA")
        with pytest.raises(UnavailableError, match=server.address):
            b.org_login(server.address, server.admin_key, ca_pem=other.ca_file.read_bytes())
        assert b.org_status().state == "not-logged-in"
        r = d.cli("org", "login", "--server", server.address, "--ca", str(ca.ca_file), input="bad-key\n")
        assert r.returncode == 1 and "API key" in r.stderr
    finally:
        server.stop()


def test_lock_and_logout_drop_org_secrets(rig):
    _create(rig)
    wait_for(lambda: _ok(rig), "first use")
    b = rig.member.broker()
    b.lock()
    assert b.org_status().state == "locked"
    with pytest.raises(LockedError):
        rig.forward(rig.member)
    b.unlock()
    wait_for(lambda: _ok(rig), "use after unlock")
    # The login survives a daemon restart (the key is in the encrypted store).
    assert rig.member.stop() == 0
    rig.member.start()
    wait_for(lambda: _ok(rig), "use after a restart")
    b = rig.member.broker()
    b.org_logout()
    assert b.org_status().state == "not-logged-in"
    from qpu_broker_client import FailedPreconditionError

    with pytest.raises(FailedPreconditionError, match="org login"):
        rig.forward(rig.member)


def test_org_aws_token_signs_for_a_member(rig):
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", f"{rig.secret}-aws"
    rig.admin.broker().qpu_token.create(name="Org AWS", provider="aws", token=f"{key_id}:{secret}",
                                        token_type="organization")
    member = rig.member.broker()

    def signed():
        try:
            return member.sign("GET", "https://braket.us-east-1.amazonaws.com/devices",
                               qpu_tokens=TokenProvider(aws=QpuToken("organization", name="Org AWS")))
        except (NotFoundError, UnavailableError):
            return None

    headers = wait_for(signed, "the org AWS token")
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/")
    assert secret not in repr(headers)


def test_admin_allowed_hosts_widen_only_that_token(rig):
    from qpu_broker_client import PermissionDeniedError as Denied
    from qpu_broker_client.proto import org_pb2

    extra = FakeServer(header_check("Authorization", lambda: "apiKey " + rig.secret), rig.ca)
    try:
        _create(rig)
        wait_for(lambda: _ok(rig), "first use")
        url = extra.url("/v0.3/jobs")
        member = rig.member.broker()
        with pytest.raises(Denied):
            member.forward("GET", url, provider="ionq", qpu_tokens=ORG)
        stub, md = rig.server.stub(rig.server.admin_key)
        stub.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(name="Org IonQ"),
                                                    set_allowed_hosts=True, allowed_hosts=[extra.netloc]), metadata=md)

        def allowed():
            try:
                return member.forward("GET", url, provider="ionq", qpu_tokens=ORG).status_code == 200
            except Denied:
                return False

        wait_for(allowed, "the allowed host to arrive by push")
        # A personal token for the same provider gains nothing from it.
        member.qpu_token.create(name="mine", provider="ionq", token=rig.secret)
        with pytest.raises(Denied):
            member.forward("GET", url, provider="ionq", qpu_tokens=TokenProvider(ionq=QpuToken("personal", name="mine")))
    finally:
        extra.close()
