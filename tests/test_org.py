"""Organization tokens end to end: real org server (TLS), admin and member daemons, a fake provider."""

from __future__ import annotations

import time

import pytest
from conftest import wait_for
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

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.orgserver import ORG, OrgServer, Rig


def _create(member_rig, *, cached: bool | None = None):
    """The org's IonQ token: relay (the default) unless `cached`."""
    return member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                                      token_type="organization", cached=cached)


def test_admin_creates_member_uses_and_never_sees_or_changes(member_rig):
    made = _create(member_rig)
    assert made.token_type is QpuTokenType.ORGANIZATION and made.id.startswith("org_")
    member = member_rig.member.broker()
    listed = wait_for(lambda: member.qpu_token.get_all()[QpuTokenType.ORGANIZATION], "the member to see it")
    assert [t.name for t in listed] == ["Org IonQ"] and listed[0].provider == "ionq"
    assert member.qpu_token.get_all()[QpuTokenType.PERSONAL] == []
    wait_for(lambda: _ok(member_rig), "the member's first use")
    assert member_rig.fake.seen[-1].header("Authorization") == "apiKey " + member_rig.secret

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
    r = member_rig.member.cli("token", "rm", "--type", "organization", "Org IonQ")
    assert r.returncode == 1 and "org admin" in r.stderr
    # An admin may read it, through the same API.
    assert member_rig.admin.broker().qpu_token.get(name="Org IonQ", token_type="organization").provider == "ionq"
    r = member_rig.member.cli("request", "--provider", "ionq", "--org-token", "Org IonQ", member_rig.fake.url("/x"))
    assert r.returncode == 0 and '"ok": true' in r.stdout

    # The org secret never reaches the member's side: responses, logs, files.
    outputs = [repr(member.qpu_token.get_all()), member_rig.member.cli("token", "list", "--json").stdout,
               member_rig.member.cli("status", "--json").stdout, repr(member.resolve("ionq", ORG))]
    assert all(member_rig.secret not in o for o in outputs)
    assert member_rig.secret not in member_rig.member.log()
    for path in member_rig.member.home.rglob("*"):
        if path.is_file():
            assert member_rig.secret.encode() not in path.read_bytes(), path
            # The member's enrollment code is kept nowhere (its device key is sealed: test_org_devices).
            assert member_rig.member_code.encode() not in path.read_bytes(), path
    assert member_rig.member_code not in member_rig.member.log() and all(member_rig.member_code not in o for o in outputs)


def _ok(member_rig) -> bool:
    """One use by the member; False while the push has not reached its daemon yet."""
    try:
        return member_rig.forward(member_rig.member).status_code == 200
    except (NotFoundError, UnavailableError):
        return False


def test_revocation_and_rotation_reach_a_using_daemon_within_2s(member_rig):
    _create(member_rig)
    wait_for(lambda: _ok(member_rig), "first use")
    admin = member_rig.admin.broker().qpu_token
    old = member_rig.secret
    member_rig.secret = old + "-rotated"
    admin.update(qpu_token_name="Org IonQ", token=member_rig.secret, token_type="organization")
    started = time.monotonic()
    wait_for(lambda: member_rig.forward(member_rig.member).status_code == 200, "the rotated secret", timeout=2)
    rotated_after = time.monotonic() - started

    admin.delete(qpu_token_name="Org IonQ", token_type="organization")
    started = time.monotonic()

    def revoked():
        try:
            member_rig.forward(member_rig.member)
        except NotFoundError:
            return True
        return False

    wait_for(revoked, "the revocation", timeout=2)
    assert time.monotonic() - started <= 2 and rotated_after <= 2


def test_grace_then_unavailable_then_back(make_daemon, short_tmp):
    member_rig = Rig(make_daemon, short_tmp, grace=2)
    try:
        _create(member_rig, cached=True)  # grace is for the secrets a daemon holds
        wait_for(lambda: _ok(member_rig), "first use")
        port = member_rig.server.port
        assert member_rig.server.stop() == 0
        wait_for(lambda: member_rig.member.broker().org_status().state in ("disconnected", "unavailable"), "the drop")

        def unavailable():
            try:
                member_rig.forward(member_rig.member)
            except UnavailableError as exc:
                return member_rig.server.address in str(exc)
            return False

        wait_for(unavailable, "the grace period to end", timeout=15)
        assert member_rig.member.broker().org_status().state == "unavailable"
        assert "unavailable" in member_rig.member.cli("status").stdout
        member_rig.server.start(port)
        wait_for(lambda: _ok(member_rig), "the org server to be back", timeout=15)
        assert member_rig.member.broker().org_status().state == "connected"
    finally:
        member_rig.close()


def test_within_grace_cached_handles_keep_working(member_rig):
    _create(member_rig, cached=True)
    wait_for(lambda: _ok(member_rig), "first use")
    member_rig.server.stop()
    wait_for(lambda: member_rig.member.broker().org_status().state == "disconnected", "the drop")
    assert member_rig.forward(member_rig.member).status_code == 200  # grace is 900 s here
    member_rig.server.start(member_rig.server.port)


def test_wrong_code_and_foreign_certificate_are_refused(make_daemon, short_tmp):
    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp, ca).start()
    try:
        d = make_daemon().start()
        b = d.broker()
        with pytest.raises(UnauthenticatedError):
            b.org_login(server.address, "qbe_0000000000000000_" + "A" * 43, ca_pem=ca.ca_file.read_bytes())
        assert b.org_status().state == "not-logged-in"
        other = make_ca(short_tmp / "other", "another CA")
        with pytest.raises(UnavailableError, match=server.address):
            b.org_login(server.address, server.admin_code, ca_pem=other.ca_file.read_bytes())
        assert b.org_status().state == "not-logged-in"
        r = d.cli("org", "login", "--server", server.address, "--ca", str(ca.ca_file), input="bad-code\n")
        assert r.returncode == 1 and "not an enrollment code" in r.stderr
        assert b.org_status().state == "not-logged-in"
    finally:
        server.stop()


def test_lock_and_logout_drop_org_secrets(member_rig):
    _create(member_rig, cached=True)
    wait_for(lambda: _ok(member_rig), "first use")
    b = member_rig.member.broker()
    b.lock()
    assert b.org_status().state == "locked"
    with pytest.raises(LockedError):
        member_rig.forward(member_rig.member)
    b.unlock()
    wait_for(lambda: _ok(member_rig), "use after unlock")
    # The login survives a daemon restart (the device key is in the encrypted store).
    assert member_rig.member.stop() == 0
    member_rig.member.start()
    wait_for(lambda: _ok(member_rig), "use after a restart")
    b = member_rig.member.broker()
    b.org_logout()
    assert b.org_status().state == "not-logged-in"
    from qpu_broker_client import FailedPreconditionError

    with pytest.raises(FailedPreconditionError, match="org login"):
        member_rig.forward(member_rig.member)


def test_org_aws_token_signs_for_a_member(member_rig):
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", f"{member_rig.secret}-aws"
    member_rig.admin.broker().qpu_token.create(name="Org AWS", provider="aws", token=f"{key_id}:{secret}",
                                        token_type="organization")
    member = member_rig.member.broker()

    def signed():
        try:
            return member.sign("GET", "https://braket.us-east-1.amazonaws.com/devices",
                               qpu_tokens=TokenProvider(aws=QpuToken("organization", name="Org AWS")))
        except (NotFoundError, UnavailableError):
            return None

    headers = wait_for(signed, "the org AWS token")
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/")
    assert secret not in repr(headers)


def test_admin_allowed_hosts_widen_only_that_token(member_rig):
    from qpu_broker_client import PermissionDeniedError as Denied
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

    extra = FakeServer(header_check("Authorization", lambda: "apiKey " + member_rig.secret), member_rig.ca)
    try:
        _create(member_rig)
        wait_for(lambda: _ok(member_rig), "first use")
        url = extra.url("/v0.3/jobs")
        member = member_rig.member.broker()
        with pytest.raises(Denied):
            member.forward("GET", url, provider="ionq", qpu_tokens=ORG)
        stub, md = member_rig.server.admin_client()
        stub.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(name="Org IonQ"),
                                                    set_allowed_hosts=True, allowed_hosts=[extra.netloc]), metadata=md)

        def allowed():
            try:
                return member.forward("GET", url, provider="ionq", qpu_tokens=ORG).status_code == 200
            except Denied:
                return False

        wait_for(allowed, "the allowed host to arrive by push")
        # A personal token for the same provider gains nothing from it.
        member.qpu_token.create(name="mine", provider="ionq", token=member_rig.secret)
        with pytest.raises(Denied):
            member.forward("GET", url, provider="ionq", qpu_tokens=TokenProvider(ionq=QpuToken("personal", name="mine")))
    finally:
        extra.close()


def test_org_login_returns_when_the_link_is_usable(member_rig, make_daemon):
    """The login's answer means the tokens are here: the very next list and forward use them (no
    "still connecting", no empty list for a moment), through the client and through the CLI."""
    _create(member_rig)
    member_rig.admin.broker().qpu_token.create(name="Org cached", provider="ionq", token=member_rig.secret,
                                               token_type="organization", cached=True)
    wait_for(lambda: len(member_rig.admin.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]) == 2,
             "both tokens on the server")
    carol = make_daemon("carol").start()
    status = carol.broker().org_login(member_rig.server.address, member_rig.server.add_user("carol"),
                                      ca_pem=member_rig.ca.ca_file.read_bytes())
    assert status.state == "connected" and status.tokens == 2
    assert sorted(t.name for t in carol.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]) == ["Org IonQ",
                                                                                                   "Org cached"]
    assert member_rig.forward(carol).status_code == 200  # relay
    cached = TokenProvider(ionq=QpuToken("organization", name="Org cached"))
    assert carol.broker().forward("GET", member_rig.fake.url("/v0.3/jobs"), provider="ionq",
                                  qpu_tokens=cached).status_code == 200
    dave = make_daemon("dave").start()
    r = dave.cli("org", "login", "--server", member_rig.server.address, "--ca", str(member_rig.ca.ca_file),
                 input=member_rig.server.add_user("dave") + "\n")
    assert r.returncode == 0, r.stderr
    assert member_rig.forward(dave).status_code == 200
