"""Membership enforced on open streams, grace from the last contact, throttled keys,
one server per data dir, and TLS errors a user can act on. Real processes, real TLS."""

from __future__ import annotations

import re
import secrets
import signal
import time

import grpc
import pytest
from conftest import wait_for
from orgserver import ORG, OrgServer, Rig
from qpu_broker_client import (
    PermissionDeniedError,
    QpuTokenType,
    UnauthenticatedError,
    UnavailableError,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import make_ca

ENDED_WITHIN = 2.0  # the contract: a removed member's daemon drops everything within 2 s


def _with_token(member_rig):
    # Cached: what a member's daemon holds, and drops, is what these tests watch.
    member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                               token_type="organization", cached=True)
    wait_for(lambda: _works(member_rig), "the member's first use")


def _works(member_rig) -> bool:
    try:
        return member_rig.forward(member_rig.member).status_code == 200
    except (UnavailableError, LookupError):
        return False


def _key_id(key: str) -> str:
    return key.split("_", 2)[1]


def _key_secret(key: str) -> str:
    return key.split("_", 2)[2]  # the secret is base64url: it may hold "_" itself


def test_removed_member_loses_every_org_token_within_2s_and_stops_knocking(member_rig):
    _with_token(member_rig)
    r = member_rig.server.cli("user", "rm", "bob")
    assert r.returncode == 0, r.stderr
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state == "removed", "the member's daemon to be told", timeout=ENDED_WITHIN)
    status = member.org_status()
    assert status.tokens == 0 and "removed from Acme" in status.detail
    assert member.qpu_token.get_all()[QpuTokenType.ORGANIZATION] == []
    with pytest.raises(UnauthenticatedError, match="removed from Acme"):
        member_rig.forward(member_rig.member)
    out = member_rig.member.cli("org", "status")
    assert out.stdout.startswith("organization: removed from Acme"), out.stdout
    # The dead key is not retried: the server saw no attempt with it after the stream ended.
    assert _key_id(member_rig.member_key) not in member_rig.server.log()
    # After a restart the daemon learns the same from the server, without any org secret.
    member_rig.member.stop()
    member_rig.member.start()
    wait_for(lambda: member_rig.member.broker().org_status().state == "removed", "the restarted daemon to learn it")
    assert member_rig.secret not in member_rig.member.log()


def test_a_replaced_key_ends_the_stream_and_a_new_login_restores_access(member_rig):
    _with_token(member_rig)
    r = member_rig.server.cli("user", "rotate-key", "bob")
    assert r.returncode == 0, r.stderr
    new_key = r.stdout.strip()
    assert new_key.startswith("qbo_") and new_key != member_rig.member_key
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state == "key-revoked", "the member's daemon to be told", timeout=ENDED_WITHIN)
    assert member.org_status().detail == "key revoked: run qpu-broker org login"
    with pytest.raises(UnauthenticatedError, match="key revoked"):
        member_rig.forward(member_rig.member)
    member_rig.login(member_rig.member, new_key)
    wait_for(lambda: _works(member_rig), "access with the new key")
    for log in (member_rig.member.log(), member_rig.server.log()):  # API keys: never in a log
        assert new_key not in log and member_rig.member_key not in log
    stub, md = member_rig.server.stub(member_rig.member_key)
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()


def test_role_changes_take_effect_at_once(member_rig):
    _with_token(member_rig)
    member = member_rig.member.broker()
    assert member_rig.server.cli("user", "set-role", "bob", "admin").returncode == 0
    wait_for(lambda: member.org_status().role == "admin", "the promotion to reach bob's daemon", timeout=ENDED_WITHIN)
    member.qpu_token.create(name="Bob's", provider="ionq", token="s", token_type="organization")
    assert member_rig.server.cli("user", "set-role", "bob", "member").returncode == 0
    with pytest.raises(PermissionDeniedError, match="org admin"):  # the server decides per call: at once
        member.qpu_token.delete(qpu_token_name="Bob's", token_type="organization")
    wait_for(lambda: member.org_status().role == "member", "the demotion to reach bob's daemon", timeout=ENDED_WITHIN)
    assert member_rig.forward(member_rig.member).status_code == 200  # still a member: org tokens keep working


def test_grace_counts_from_the_last_contact_not_the_last_change(make_daemon, short_tmp):
    grace = 4.0  # room for a loaded machine to stop the server well inside it
    member_rig = Rig(make_daemon, short_tmp, grace=grace)
    try:
        _with_token(member_rig)
        member = member_rig.member.broker()
        # A quiet org: no change for longer than the grace period (heartbeats only, every 5 s).
        changed = time.monotonic()
        wait_for(lambda: time.monotonic() - changed > grace + 0.5, "a quiet spell longer than the grace period")
        stopped = time.monotonic()  # SIGTERM: the server ends its streams at once
        member_rig.server.stop()
        assert member_rig.forward(member_rig.member).status_code == 200  # inside the grace period, counted from the stop

        def failed():
            try:
                member_rig.forward(member_rig.member)
            except UnavailableError as exc:
                return str(exc)
            return None

        message = wait_for(failed, "the grace period to end", timeout=grace + 5)
        assert time.monotonic() - stopped >= grace - 0.2
        assert member_rig.server.address in message and "grace" in message
        assert member.org_status().state == "unavailable"
    finally:
        member_rig.close()


def test_a_frozen_server_gives_no_grace_beyond_the_last_contact(make_daemon, short_tmp):
    """SIGSTOP sends no FIN: with a grace shorter than three heartbeats the daemon notices the
    silence once one heartbeat is missed, and counts the grace from the last message."""
    grace = 4.0
    member_rig = Rig(make_daemon, short_tmp, grace=grace)
    try:
        _with_token(member_rig)
        member = member_rig.member.broker()
        member_rig.server.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: member.org_status().state != "connected", "the silence to be noticed", timeout=30)
            status = member.org_status()
            assert status.state == "unavailable", status
            # Noticed after one missed heartbeat (5 s) plus a second's slack, not after three (15 s).
            assert grace < status.seconds_since_contact < 12, status
            with pytest.raises(UnavailableError, match="grace"):
                member_rig.forward(member_rig.member)
        finally:
            member_rig.server.proc.send_signal(signal.SIGCONT)
    finally:
        member_rig.close()


def test_failed_api_keys_are_throttled_logged_and_the_right_key_works_elsewhere(make_daemon, short_tmp):
    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp, ca).start(host="[::]")
    try:
        bob_key = server.add_user("bob")
        v4, _md_v4 = server.stub("x", target=f"127.0.0.1:{server.port}")
        codes: dict[str, int] = {}
        for n in range(300):  # as fast as one peer can: a random key, or bob's key id with a wrong secret
            key = (f"qbo_{secrets.token_hex(8)}_" if n % 2 else f"qbo_{_key_id(bob_key)}_") + "A" * 43
            try:
                v4.ListTokens(org_pb2.ListTokensRequest(), metadata=[("authorization", f"Bearer {key}")])
            except grpc.RpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert set(codes) == {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, codes
        assert codes["RESOURCE_EXHAUSTED"] >= 250, codes  # refused unchecked inside the back-off
        # From another address, the right keys work at once: bob's too, though his key id is under attack.
        v6, _ = server.stub("x", target=f"ipv6:[::1]:{server.port}")
        for key in (server.admin_key, bob_key):
            v6.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {key}")])
        log = server.log()
        failures = re.findall(r"failed API key from (\S+) \(key id (\S+),", log)
        assert failures and all(peer == "127.0.0.1" for peer, _ in failures)
        assert (_key_id(bob_key)) in {k for _, k in failures}
        assert len(failures) < 40  # each checked failure, not each refused attempt
        assert len(_key_secret(bob_key)) == 43 and _key_secret(bob_key) not in log and "A" * 43 not in log
    finally:
        server.stop()


def test_a_member_mixing_their_own_key_with_guesses_is_still_throttled(short_tmp):
    server = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    try:
        bob_key = server.add_user("bob")
        stub, _ = server.stub("unused")
        codes: dict[str, int] = {}
        for _ in range(60):
            for n in range(5):  # four guesses, then bob's own key, from one address
                key = bob_key if n == 4 else f"qbo_{secrets.token_hex(8)}_" + "B" * 43
                try:
                    stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {key}")])
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert codes["OK"] == 60, codes  # his own key always works
        assert codes.get("RESOURCE_EXHAUSTED", 0) >= 150, codes  # his logins cleared no back-off
        assert len(re.findall(r"failed API key from", server.log())) < 60, codes
        assert len(re.findall(r"rpc \S+ UNAUTHENTICATED", server.log())) == 0  # logged once, within the budget
        assert _key_secret(bob_key) not in server.log() and "B" * 43 not in server.log()  # key ids only, never keys
    finally:
        server.stop()


def test_one_org_server_per_data_dir_and_plain_text_only_on_loopback(short_tmp):
    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp, ca).start()
    try:
        second = server.spawn(port=0)
        assert second.wait(timeout=20) == 1
        assert f"another org server (pid {server.proc.pid}) is serving" in server.log()
    finally:
        server.stop()
    plain = server.spawn(host="0.0.0.0", tls=False)
    assert plain.wait(timeout=20) == 1
    assert "refusing to serve without TLS on 0.0.0.0:" in server.log()


def test_org_server_makes_its_certificate_and_login_errors_name_the_cause(make_daemon, short_tmp):
    d = make_daemon().start()
    root = short_tmp / "org"
    server = OrgServer(root, None, "Acme", "--tls-host", "127.0.0.1")  # a CA and a certificate for the IP only
    key = server.admin_key
    server.start()  # no --tls-cert: serve picks up DATA/tls by itself
    ca_file = server.data / "tls" / "ca.pem"
    try:
        def login(address, ca=None):
            args = ["org", "login", "--server", address] + (["--ca", str(ca)] if ca else [])
            return d.cli(*args, input=key + "\n")

        out = login(f"127.0.0.1:{server.port}")
        assert out.returncode == 1 and "unknown CA: pass --ca FILE" in out.stderr, out.stderr
        out = login(f"localhost:{server.port}", ca_file)
        assert out.returncode == 1 and "is not for 'localhost'" in out.stderr, out.stderr
        assert "org-server tls issue" in out.stderr
        # A --ca that is no certificate (here the server's private key): named, never echoed.
        server_key = server.data / "tls" / "server.key"
        out = login(f"127.0.0.1:{server.port}", server_key)
        assert out.returncode == 1 and "is not a PEM certificate" in out.stderr, out.stderr
        assert "Traceback" not in d.log() and server_key.read_text().splitlines()[1] not in d.log()
        out = login(f"127.0.0.1:{server.port}", ca_file)
        assert out.returncode == 0, out.stderr
        assert key not in out.stdout + out.stderr
        # Re-issued for another name from the same CA: members keep their ca.pem. A name that is no
        # host name is refused before anything is written.
        cert = (server.data / "tls" / "server.pem").read_bytes()
        for bad in ("127.0.0.1:7443", "[::1]", "https://org.example", "a b", ""):
            refused = server.cli("tls", "issue", "--tls-host", bad)
            assert refused.returncode == 1 and "is not a host name" in refused.stderr, refused.stderr
            assert "Traceback" not in refused.stderr
        assert (server.data / "tls" / "server.pem").read_bytes() == cert
        issued = server.cli("tls", "issue", "--tls-host", "localhost", "--tls-host", "127.0.0.1")
        assert issued.returncode == 0 and "restart" in issued.stderr, issued.stderr
        server.stop()
        server.start(server.port)
        out = login(f"localhost:{server.port}", ca_file)
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()
    plain = OrgServer(short_tmp / "plain", make_ca(short_tmp / "ca2")).start(tls=False)
    try:
        out = d.cli("org", "login", "--server", f"127.0.0.1:{plain.port}", input=plain.admin_key + "\n")
        assert out.returncode == 1 and "does not speak TLS" in out.stderr, out.stderr
    finally:
        plain.stop()
    out = d.cli("org", "login", "--server", f"127.0.0.1:{plain.port}", input=key + "\n")
    assert out.returncode == 1 and "nothing is listening" in out.stderr, out.stderr
    assert ORG  # the org token reference users pass is importable from the harness


def test_a_failed_login_leaves_the_working_one_alone(member_rig):
    _with_token(member_rig)
    d = member_rig.member
    wrong = d.cli("org", "login", "--server", member_rig.server.address, "--ca", str(member_rig.ca.ca_file),
                  input="qbo_0000000000000000_" + "B" * 43 + "\n")
    assert wrong.returncode == 1 and "not valid" in wrong.stderr
    odd = d.cli("org", "login", "--server", member_rig.server.address, input="clé\n")
    assert odd.returncode == 1 and "printable ASCII" in odd.stderr
    assert d.broker().org_status().state == "connected"
    assert member_rig.forward(d).status_code == 200


def test_keyless_and_throttled_calls_do_not_grow_the_log(short_tmp):
    server = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    try:
        stub, _ = server.stub("unused")
        codes: dict[str, int] = {}
        for _ in range(300):
            try:
                stub.ListTokens(org_pb2.ListTokensRequest())  # no key at all
            except grpc.RpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert codes.get("RESOURCE_EXHAUSTED", 0) >= 250, codes
        assert server.log().count("\n") < 60  # one line per checked failure, none per refusal
        who = stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {server.admin_key}")])
        assert who.user == "alice"  # the right key is admitted even from the throttled address
    finally:
        server.stop()
