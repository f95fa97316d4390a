"""Membership enforced on open streams, grace from the last contact, throttled credentials,
one server per data dir, and TLS errors a user can act on. Real processes, real TLS."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time

import grpc
import pytest
from conftest import wait_for
from qpu_broker_client import (
    PermissionDeniedError,
    QpuTokenType,
    UnauthenticatedError,
    UnavailableError,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import make_ca
from testsupport.orgserver import ORG, OrgServer, Rig

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


def _code_id(code: str) -> str:
    return code.split("_", 2)[1]


def _code_secret(code: str) -> str:
    return code.split("_", 2)[2]  # the secret is base64url: it may hold "_" itself


def _device_id(d) -> str:
    return d.broker().org_status().device_id


def test_removed_member_loses_every_org_token_within_2s_and_stops_knocking(member_rig):
    _with_token(member_rig)
    device = _device_id(member_rig.member)
    r = member_rig.server.cli("user", "rm", "bob")
    assert r.returncode == 0, r.stderr
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state == "removed", "the member's daemon to be told", timeout=ENDED_WITHIN)
    # Calls with the device the server refused: at most one, in flight as the removal was made (a
    # usage report, a reconnect that learns it); none once the daemon knows.
    knocks = member_rig.server.log().count(f"(id {device},")
    assert knocks <= 1, member_rig.server.log()
    status = member.org_status()
    assert status.tokens == 0 and "removed from Acme" in status.detail
    assert member.qpu_token.get_all()[QpuTokenType.ORGANIZATION] == []
    with pytest.raises(UnauthenticatedError, match="removed from Acme"):
        member_rig.forward(member_rig.member)
    out = member_rig.member.cli("org", "status")
    assert out.stdout.startswith("organization: removed from Acme"), out.stdout
    # The dead device is not retried: no attempt after the daemon knew, through the calls above.
    assert member_rig.server.log().count(f"(id {device},") == knocks
    # After a restart the daemon learns the same from the server, without any org secret.
    member_rig.member.stop()
    member_rig.member.start()
    wait_for(lambda: member_rig.member.broker().org_status().state == "removed", "the restarted daemon to learn it")
    assert member_rig.secret not in member_rig.member.log()


def test_rotate_key_withdraws_every_device_and_code_and_a_new_login_restores_access(member_rig):
    _with_token(member_rig)
    spare = member_rig.server.code_for("bob")  # an open code, not used yet
    own_stub, own_md = member_rig.member_client()  # and a second device of bob's
    r = member_rig.server.cli("user", "rotate-key", "bob")
    assert r.returncode == 0, r.stderr
    new_code = r.stdout.strip()
    assert new_code.startswith("qbe_") and new_code not in (member_rig.member_code, spare)
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state == "key-revoked", "the member's daemon to be told", timeout=ENDED_WITHIN)
    assert "was withdrawn" in member.org_status().detail and "org login" in member.org_status().detail
    with pytest.raises(UnauthenticatedError, match="withdrawn"):
        member_rig.forward(member_rig.member)
    with pytest.raises(grpc.RpcError) as err:  # bob's other device too
        own_stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=own_md)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "withdrawn" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # and his code not used yet
        member_rig.server.enroll(spare)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "was withdrawn" in err.value.details()
    member_rig.login(member_rig.member, new_code)
    wait_for(lambda: _works(member_rig), "access with the new code")
    for log in (member_rig.member.log(), member_rig.server.log()):  # codes: never in a log
        assert new_code not in log and member_rig.member_code not in log and _code_secret(spare) not in log


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


def test_failed_enrollment_codes_are_throttled_logged_and_the_right_code_works_elsewhere(make_daemon, short_tmp):
    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp, ca).start(host="[::]")
    try:
        bob_code = server.add_user("bob")
        v4, _md_v4 = server.stub("x", target=f"127.0.0.1:{server.port}")
        codes: dict[str, int] = {}
        for n in range(300):  # as fast as one peer can: a random code, or bob's code id with a wrong secret
            code = (f"qbe_{secrets.token_hex(8)}_" if n % 2 else f"qbe_{_code_id(bob_code)}_") + "A" * 43
            try:
                v4.Enroll(org_pb2.EnrollRequest(code=code, public_key=b"k" * 32))
            except grpc.RpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert set(codes) == {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, codes
        assert codes["RESOURCE_EXHAUSTED"] >= 250, codes  # refused unchecked inside the back-off
        # From another address, the right codes work at once: bob's too, though his code id is under attack.
        for code in (server.admin_code, bob_code):
            assert server.enroll(code, target=f"ipv6:[::1]:{server.port}").id
        log = server.log()
        failures = re.findall(r"failed enrollment code from (\S+) \(id (\S+),", log)
        assert failures and all(peer == "127.0.0.1" for peer, _ in failures)
        assert (_code_id(bob_code)) in {k for _, k in failures}
        assert len(failures) < 40  # each checked failure, not each refused attempt
        assert len(_code_secret(bob_code)) == 43 and _code_secret(bob_code) not in log and "A" * 43 not in log
    finally:
        server.stop()


def test_a_member_mixing_their_own_token_with_guesses_is_still_throttled(short_tmp):
    server = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    try:
        stub, bob = server.client(server.add_user("bob"))
        token = bob[0][1].removeprefix("Bearer ")
        codes: dict[str, int] = {}
        for _ in range(60):
            for n in range(5):  # four guesses (forged access tokens), then bob's own token, from one address
                bearer = token if n == 4 else f"qbt_{secrets.token_hex(8)}.{10**17}." + "B" * 43
                try:
                    stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {bearer}")])
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert codes["OK"] == 60, codes  # his own token always works
        assert codes.get("RESOURCE_EXHAUSTED", 0) >= 150, codes  # his calls cleared no back-off
        assert len(re.findall(r"failed access token from", server.log())) < 60, codes
        assert len(re.findall(r"rpc \S+ UNAUTHENTICATED", server.log())) == 0  # logged once, within the budget
        assert token.rsplit(".", 1)[1] not in server.log() and "B" * 43 not in server.log()  # ids only, never MACs
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
    r = subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "serve", "--data", str(server.data),
                        "--listen", "127.0.0.1:0", "--database", "postgresql:///nowhere", "--records-sync", "full"],
                       capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr  # before any connection is tried
    assert "--records-sync is for SQLite stores" in r.stderr and "synchronous_commit" in r.stderr


def test_org_server_makes_its_certificate_and_login_errors_name_the_cause(make_daemon, short_tmp):
    d = make_daemon().start()
    root = short_tmp / "org"
    server = OrgServer(root, None, "Acme", "--tls-host", "127.0.0.1")  # a CA and a certificate for the IP only
    codes = [server.admin_code, None]  # a refused login uses no code up; the second success needs another
    server.start()  # no --tls-cert: serve picks up DATA/tls by itself
    ca_file = server.data / "tls" / "ca.pem"
    try:
        def login(address, ca=None):
            args = ["org", "login", "--server", address] + (["--ca", str(ca)] if ca else [])
            return d.cli(*args, input=(codes[0] or codes[1]) + "\n")

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
        assert codes[0] not in out.stdout + out.stderr
        codes[0], codes[1] = None, server.code_for("alice")
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
        out = d.cli("org", "login", "--server", f"127.0.0.1:{plain.port}", input=plain.admin_code + "\n")
        assert out.returncode == 1 and "does not speak TLS" in out.stderr, out.stderr
    finally:
        plain.stop()
    out = d.cli("org", "login", "--server", f"127.0.0.1:{plain.port}", input=codes[1] + "\n")
    assert out.returncode == 1 and "nothing is listening" in out.stderr, out.stderr
    assert ORG  # the org token reference users pass is importable from the harness


def test_a_failed_login_leaves_the_working_one_alone(member_rig):
    _with_token(member_rig)
    d = member_rig.member
    wrong = d.cli("org", "login", "--server", member_rig.server.address, "--ca", str(member_rig.ca.ca_file),
                  input="qbe_0000000000000000_" + "B" * 43 + "\n")
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
        admin, md = server.client(server.admin_code)
        who = admin.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md)
        assert who.user == "alice"  # the right token is admitted even from the throttled address
    finally:
        server.stop()
