"""Quotas on org tokens: requests per window, and D-Wave QPU time as the answers report it;
checked before the request is sent, exhausted is RESOURCE_EXHAUSTED naming the quota, its use
and its reset; no overrun when members race for the last units."""

from __future__ import annotations

import concurrent.futures
import json

import grpc
import pytest
from conftest import wait_for
from qpu_broker_client import (
    QpuToken,
    QpuTokenType,
    ResourceExhaustedError,
    TokenProvider,
    UnavailableError,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import FakeServer, json_reply
from testsupport.orgserver import reserve_tries

ORG_DWAVE = TokenProvider(dwave=QpuToken("organization", name="Org D-Wave"))
QPU_US = 400_000  # what each fake D-Wave answer reports: 0.4 s of QPU access time


def _quota(server, *args: str) -> str:
    r = server.cli("quota", "set", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _with_token(rig, name="Org IonQ", provider="ionq", secret=None, cached=None) -> None:
    """An org token (relay, the default, unless `cached`), once the member's daemon holds it."""
    rig.admin.broker().qpu_token.create(name=name, provider=provider, token=secret or rig.secret, token_type="organization",
                                        cached=cached)
    wait_for(lambda: any(t.name == name for t in rig.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]),
             "the member's daemon to hold the org token")


def _metered(d, name="Org IonQ") -> bool:
    # The member's daemon hears of a new quota through its push stream: from then on each use is reserved.
    return name in d.broker().org_status().metered_tokens


def test_a_members_requests_quota_holds_and_says_what_ran_out(member_rig):
    _with_token(member_rig)
    out = _quota(member_rig.server, "--member", "bob", "--token", "Org IonQ", "--requests", "3", "--per", "1d")
    assert "bob's requests on organization token 'Org IonQ', 3 per 1d" in out
    member = member_rig.member.broker()
    wait_for(lambda: _metered(member_rig.member), "the member's daemon to see the quota")
    for _ in range(3):
        assert member_rig.forward(member_rig.member).status_code == 200
    with pytest.raises(ResourceExhaustedError) as caught:
        member_rig.forward(member_rig.member)
    message = str(caught.value)
    assert "quota #1 is used up" in message and "3 used in this window, which resets at" in message and "T00:00:00" in message
    assert member_rig.forward(member_rig.admin).status_code == 200  # bob's quota binds bob alone
    [q] = member.org_status().quotas
    assert (q.used, q.limit) == (3, 3)
    status = member_rig.member.cli("org", "status")
    assert "quota #1: bob's requests on organization token 'Org IonQ', 3 per 1d: 3 used, 0 left, resets" in status.stdout
    listed = member_rig.member.cli("token", "list")
    assert "3 used, 0 left" in listed.stdout
    rows = wait_for(lambda: [r for r in (json.loads(x) for x in member_rig.server.cli("usage", "--json").stdout.splitlines())
                             if r["outcome"] == "refused-quota"], "the refusal's record")
    assert rows[0]["member"] == "bob"


def test_each_member_default_and_a_members_own_quota(member_rig):
    _with_token(member_rig)
    carol_code = member_rig.server.add_user("carol")
    _quota(member_rig.server, "--each-member", "--requests", "1", "--per", "1h")
    _quota(member_rig.server, "--member", "bob", "--requests", "2", "--per", "1h")
    stub, md = member_rig.server.client(carol_code)
    token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id
    stub.Reserve(org_pb2.ReserveRequest(token_id=token_id), metadata=md)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Reserve(org_pb2.ReserveRequest(token_id=token_id), metadata=md)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "each member's requests" in caught.value.details()
    wait_for(lambda: _metered(member_rig.member), "the member's daemon to see the quota")
    for _ in range(2):  # bob's own quota replaces the default for him
        assert member_rig.forward(member_rig.member).status_code == 200
    with pytest.raises(ResourceExhaustedError, match="bob's requests"):
        member_rig.forward(member_rig.member)
    listing = member_rig.server.cli("quota", "list", "--member", "bob")
    assert "bob's requests on all organization tokens, 2 per 1h: 2 used, 0 left" in listing.stdout
    assert "each member's" not in listing.stdout  # bob's own quota, not the default


def test_sixteen_members_racing_for_the_last_units_never_overrun(member_rig):
    _with_token(member_rig)
    _quota(member_rig.server, "--token", "Org IonQ", "--requests", "20", "--per", "1d")  # everyone's use together
    codes = member_rig.server.add_users([f"m{i}" for i in range(16)])
    stub, md = member_rig.member_client()
    token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id

    def attempts(code: str) -> int:
        return reserve_tries(member_rig.server, code, token_id, 4)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(attempts, codes)) == 20  # 64 tries for 20 units: exactly 20 get one
    wait_for(lambda: _metered(member_rig.member), "the member's daemon to see the quota")
    with pytest.raises(ResourceExhaustedError, match="everyone's requests"):
        member_rig.forward(member_rig.member)
    listing = member_rig.server.cli("quota", "list")
    assert "20 used, 0 left" in listing.stdout


def test_dwave_qpu_time_is_counted_from_the_answers(member_rig):
    dwave = FakeServer(lambda seen: json_reply({"id": "p1", "status": "COMPLETED", "answer": {
        "format": "qp", "timing": {"qpu_access_time": QPU_US, "qpu_sampling_time": 100}}}), member_rig.ca)
    try:
        r = member_rig.server.cli("provider", "set", "dwave", "--host", dwave.netloc, "--ca-file", str(member_rig.ca.ca_file))
        assert r.returncode == 0, r.stderr
        _with_token(member_rig, "Org D-Wave", "dwave", "dwave-org-secret", cached=True)  # the daemon reports its time
        _quota(member_rig.server, "--each-member", "--token", "Org D-Wave", "--qpu-seconds", "1", "--per", "30d")
        member = member_rig.member.broker()
        wait_for(lambda: _metered(member_rig.member, "Org D-Wave"), "the member's daemon to see the quota")
        url = dwave.url("/sapi/v2/problems/p1/answer/")
        for n in range(1, 4):  # 0, 0.4, 0.8 s used before each: under 1 s, so each goes
            answer = member.forward("GET", url, provider="dwave", qpu_tokens=ORG_DWAVE)
            assert answer.status_code == 200 and answer.json()["answer"]["timing"]["qpu_access_time"] == QPU_US
            wait_for(lambda n=n: len(member_rig.server.cli("usage", "--json").stdout.splitlines()) == n,
                     "the answer's QPU time to reach the server")
        # The third was admitted with 0.2 s of the member's second left: it is charged that (its
        # reservation's bound), and the record keeps what the answer reported.
        with pytest.raises(ResourceExhaustedError, match=r"each member's D-Wave QPU time \(µs\).*1000000 used"):
            member.forward("GET", url, provider="dwave", qpu_tokens=ORG_DWAVE)
        rows = [json.loads(x) for x in member_rig.server.cli("usage", "--json").stdout.splitlines()]
        answered = [r for r in rows if r["outcome"] == "answered"]
        assert [(r["qpu_us"], r["qpu_charged_us"]) for r in answered] == [(QPU_US, QPU_US)] * 2 + [(QPU_US, 200_000)]
        assert len({r["reservation"] for r in answered}) == 3 and all(r["reservation"] for r in answered)
        lines = member_rig.server.cli("usage").stdout
        assert "QPU 400000 µs\n" in lines and "QPU 400000 µs reported, 200000 charged\n" in lines
    finally:
        dwave.close()


def test_a_quota_with_a_validity_span_refuses_relayed_uses_outside_it(member_rig):
    """`quota set --from/--until`: a relay token's use (counted on the server) outside the span is
    refused in one line naming the quota and its span; `quota list` shows it."""
    _with_token(member_rig)  # a relay token: the server checks its quota when it relays
    out = _quota(member_rig.server, "--token", "Org IonQ", "--requests", "5", "--per", "1h",
                 "--from", "2026-01-01T00:00Z", "--until", "2026-01-02T00:00Z")
    assert ("everyone's requests on organization token 'Org IonQ', 5 per 1h, valid from 2026-01-01T00:00:00.000Z "
            "until 2026-01-02T00:00:00.000Z") in out
    with pytest.raises(ResourceExhaustedError, match=r"^quota #1 ended at 2026-01-02T00:00:00.000Z: everyone's .*; the "
                       r"uses it counts are refused outside that span: ask an org admin for a new policy$"):
        member_rig.forward(member_rig.member)
    listed = member_rig.server.cli("quota", "list").stdout
    assert "until 2026-01-02T00:00:00.000Z: 0 used, 5 left, ends 2026-01-02T00:00:00.000Z" in listed
    assert json.loads(member_rig.server.cli("quota", "list", "--json").stdout)["valid_until_us"] == 1767312000 * 10**6
    wait_for(lambda: "until 2026-01-02T00:00:00.000Z: 0 used, 5 left, ends 2026-01-02T00:00:00.000Z" in
             member_rig.member.cli("org", "status").stdout, "the member's status to show the span")  # the member's view
    _quota(member_rig.server, "--token", "Org IonQ", "--requests", "5", "--per", "1h", "--until", "30d")  # a new policy
    assert member_rig.forward(member_rig.member).status_code == 200


def test_a_quota_that_cannot_be_counted_refuses_the_use(member_rig):
    _with_token(member_rig, cached=True)  # a relay token's use needs the server anyway
    _quota(member_rig.server, "--requests", "100", "--per", "1d")
    wait_for(lambda: _metered(member_rig.member), "the member's daemon to see the quota")
    member_rig.server.stop()
    wait_for(lambda: member_rig.member.broker().org_status().state != "connected", "the member to notice")
    with pytest.raises(UnavailableError, match="has a quota, and the organization server .* cannot count this use"):
        member_rig.forward(member_rig.member)


def test_quota_commands_refuse_bad_input_in_one_line(member_rig):
    for args, message in ((("--requests", "5", "--per", "soon"), "--per 'soon' is not a duration"),
                          (("--member", "nobody", "--requests", "5", "--per", "1d"), "no user named 'nobody'"),
                          (("--token", "Nope", "--requests", "5", "--per", "1d"), "no organization token named 'Nope'"),
                          (("--requests", "-1", "--per", "1d"), "a quota is 0 or more"),
                          (("--requests", "5", "--per", "1d", "--until", "soon"), "--until 'soon' is neither a duration"),
                          (("--requests", "5", "--per", "1d", "--from", "2026-02-01", "--until", "2026-01-01"),
                           "a quota's validity span ends before it begins")):
        r = member_rig.server.cli("quota", "set", *args)
        assert r.returncode != 0 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = member_rig.server.cli("quota", "rm", "42")
    assert r.returncode != 0 and "no quota #42" in r.stderr
    stub, md = member_rig.member_client()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListQuotas(org_pb2.ListQuotasRequest(all=True), metadata=md)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_members_own_reports_spend_no_more_than_the_uses_the_server_admitted(org):
    """Issue 20, item 6: a member's own gRPC client (no daemon) reports QPU time. Without a
    reservation it is recorded and charges nothing (ten such reports used up the org-wide pool);
    with one it charges once, at most what that use could spend, and never past the member's share."""
    admin, admin_md = org.admin_client()
    ids = {name: admin.CreateToken(org_pb2.CreateTokenRequest(name=name, provider="dwave", secret=b"k", cached=not relay),
                                   metadata=admin_md).id for name, relay in (("cached", False), ("other", False),
                                                                              ("relayed", True))}
    bob_code, carol_code = org.add_users(["bob", "carol"])
    _quota(org, "--qpu-seconds", "600", "--per", "1d")  # everyone's together, every token
    _quota(org, "--each-member", "--token", "cached", "--qpu-seconds", "90", "--per", "1d")  # each member's share
    bob, bob_md = org.client(bob_code)
    carol, carol_md = org.client(carol_code)

    def reserve(stub, md, token: str) -> str:
        return stub.Reserve(org_pb2.ReserveRequest(token_id=ids[token]), metadata=md).reservation

    def report(stub, md, n: int, token: str, qpu_us: int, reservation: str = "", provider: str = "dwave") -> None:
        stub.ReportUsage(org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(
            id=f"{token}-{n}", token_id=ids[token], token_name=token, provider=provider, kind="forward", method="GET",
            host="h", path="/", status=200, outcome="answered", qpu_us=qpu_us,
            **({"reservation": reservation} if reservation else {}))]), metadata=md)  # unset: as an older daemon's

    def pool_used() -> str:
        listing = org.cli("quota", "list").stdout
        return listing.split("on all organization tokens, 600000000 per 1d: ")[1].split(" used")[0]

    for n in range(10):  # the attack: ten reports of a minute each, no use behind them
        report(bob, bob_md, n, "cached", 60_000_000)
    assert pool_used() == "0"
    report(bob, bob_md, 10, "cached", 60_000_000, reservation="made-up")
    rows = [json.loads(x) for x in org.cli("usage", "--json").stdout.splitlines()]
    assert len(rows) == 11 and {(r["qpu_us"], r["qpu_charged_us"]) for r in rows} == {(60_000_000, 0)}  # recorded
    assert "QPU 60000000 µs reported, 0 charged (no reservation)" in org.cli("usage").stdout  # as admins see it

    admitted = reserve(bob, bob_md, "cached")
    report(bob, bob_md, 11, "cached", 10**15, admitted)  # a use the server admitted: at most a minute
    report(bob, bob_md, 12, "cached", 60_000_000, admitted)  # its reservation is spent
    assert pool_used() == "60000000"
    report(bob, bob_md, 13, "cached", 5_000_000, reserve(carol, carol_md, "cached"))  # carol's: not bob's to spend
    report(bob, bob_md, 14, "cached", 5_000_000, reserve(bob, bob_md, "other"))  # another token's
    assert reserve(bob, bob_md, "relayed") == ""  # the server times relayed answers itself
    report(bob, bob_md, 15, "relayed", 5_000_000, "anything")
    report(bob, bob_md, 16, "cached", 5_000_000, reserve(bob, bob_md, "cached"), provider="ionq")  # no QPU time
    assert pool_used() == "60000000"
    # Bob's share on "cached" is 90 s: 30 s left, whatever he reserves and reports from here.
    held = [reserve(bob, bob_md, "cached") for _ in range(3)]
    for n, reservation in enumerate(held):
        report(bob, bob_md, 20 + n, "cached", 60_000_000, reservation)
    assert pool_used() == "90000000"
    charged = {r["id"]: r["qpu_charged_us"] for r in map(json.loads, org.cli("usage", "--json").stdout.splitlines())}
    assert [charged[f"cached-{n}"] for n in (11, 12, 13, 14, 16, 20, 21, 22)] == [60_000_000] + [0] * 4 + [30_000_000, 0, 0]
    assert charged["relayed-15"] == 0


def test_each_member_sees_their_own_metered_tokens_however_many_sets_there_are(member_rig):
    """Snapshots are shared per metered set, and past the first few a member's own set is built
    for their stream alone: ten members with a quota each on their own token see exactly it
    metered."""
    admin_stub, admin_md = member_rig.server.admin_client()
    names = [f"q{i}" for i in range(10)]
    codes = member_rig.server.add_users(names)
    for name in names:
        admin_stub.CreateToken(org_pb2.CreateTokenRequest(name=f"tok-{name}", provider="ionq", secret=b"k"), metadata=admin_md)
        _quota(member_rig.server, "--member", name, "--token", f"tok-{name}", "--requests", "5", "--per", "1d")
    for name, code in zip(names, codes, strict=True):
        stub, md = member_rig.server.client(code)
        stream = stub.Watch(org_pb2.WatchRequest(), metadata=md)
        snapshot = next(stream)
        stream.cancel()
        assert not snapshot.more and [t.name for t in snapshot.tokens if t.metered] == [f"tok-{name}"], name
