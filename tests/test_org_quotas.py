"""Quotas on org tokens: requests per window, and D-Wave QPU time as the answers report it;
checked before the request is sent, exhausted is RESOURCE_EXHAUSTED naming the quota, its use
and its reset; no overrun when members race for the last units."""

from __future__ import annotations

import concurrent.futures
import json

import grpc
import pytest
from conftest import wait_for
from orgserver import reserve_tries
from qpu_broker_client import (
    QpuToken,
    QpuTokenType,
    ResourceExhaustedError,
    TokenProvider,
    UnavailableError,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import FakeServer, json_reply

ORG_DWAVE = TokenProvider(dwave=QpuToken("organization", name="Org D-Wave"))
QPU_US = 400_000  # what each fake D-Wave answer reports: 0.4 s of QPU access time


def _quota(rig, *args: str) -> str:
    r = rig.server.cli("quota", "set", *args)
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
    out = _quota(member_rig, "--member", "bob", "--token", "Org IonQ", "--requests", "3", "--per", "1d")
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
    carol_key = member_rig.server.add_user("carol")
    _quota(member_rig, "--each-member", "--requests", "1", "--per", "1h")
    _quota(member_rig, "--member", "bob", "--requests", "2", "--per", "1h")
    stub, md = member_rig.server.stub(carol_key)
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
    _quota(member_rig, "--token", "Org IonQ", "--requests", "20", "--per", "1d")  # everyone's use together
    keys = member_rig.server.add_users([f"m{i}" for i in range(16)])
    stub, md = member_rig.server.stub(keys[0])
    token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id

    def attempts(key: str) -> int:
        return reserve_tries(member_rig.server, key, token_id, 4)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(attempts, keys)) == 20  # 64 tries for 20 units: exactly 20 get one
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
        _with_token(member_rig, "Org D-Wave", "dwave", "dwave-org-secret")
        _quota(member_rig, "--each-member", "--token", "Org D-Wave", "--qpu-seconds", "1", "--per", "30d")
        member = member_rig.member.broker()
        wait_for(lambda: _metered(member_rig.member, "Org D-Wave"), "the member's daemon to see the quota")
        url = dwave.url("/sapi/v2/problems/p1/answer/")
        for n in range(1, 4):  # 0, 0.4, 0.8 s used before each: under 1 s, so each goes
            answer = member.forward("GET", url, provider="dwave", qpu_tokens=ORG_DWAVE)
            assert answer.status_code == 200 and answer.json()["answer"]["timing"]["qpu_access_time"] == QPU_US
            wait_for(lambda n=n: len(member_rig.server.cli("usage", "--json").stdout.splitlines()) == n,
                     "the answer's QPU time to reach the server")
        with pytest.raises(ResourceExhaustedError, match=r"each member's D-Wave QPU time \(µs\).*1200000 used"):
            member.forward("GET", url, provider="dwave", qpu_tokens=ORG_DWAVE)
        rows = [json.loads(x) for x in member_rig.server.cli("usage", "--json").stdout.splitlines()]
        assert [r["qpu_us"] for r in rows if r["outcome"] == "answered"] == [QPU_US] * 3
        assert "QPU 400000 µs" in member_rig.server.cli("usage").stdout
    finally:
        dwave.close()


def test_a_quota_that_cannot_be_counted_refuses_the_use(member_rig):
    _with_token(member_rig, cached=True)  # a relay token's use needs the server anyway
    _quota(member_rig, "--requests", "100", "--per", "1d")
    wait_for(lambda: _metered(member_rig.member), "the member's daemon to see the quota")
    member_rig.server.stop()
    wait_for(lambda: member_rig.member.broker().org_status().state != "connected", "the member to notice")
    with pytest.raises(UnavailableError, match="has a quota, and the organization server .* cannot count this use"):
        member_rig.forward(member_rig.member)


def test_quota_commands_refuse_bad_input_in_one_line(member_rig):
    for args, message in ((("--requests", "5", "--per", "soon"), "--per 'soon' is not a duration"),
                          (("--member", "nobody", "--requests", "5", "--per", "1d"), "no user named 'nobody'"),
                          (("--token", "Nope", "--requests", "5", "--per", "1d"), "no organization token named 'Nope'"),
                          (("--requests", "-1", "--per", "1d"), "a quota is 0 or more")):
        r = member_rig.server.cli("quota", "set", *args)
        assert r.returncode != 0 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = member_rig.server.cli("quota", "rm", "42")
    assert r.returncode != 0 and "no quota #42" in r.stderr
    stub, md = member_rig.server.stub(member_rig.member_key)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListQuotas(org_pb2.ListQuotasRequest(all=True), metadata=md)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_members_reported_qpu_time_is_bounded_and_never_counts_for_relay_tokens(member_rig):
    admin = member_rig.admin.broker()
    admin.qpu_token.create(name="cached", provider="dwave", token="dwave-secret-1", token_type="organization", cached=True)
    admin.qpu_token.create(name="relayed", provider="dwave", token="dwave-secret-2", token_type="organization",
                           relay=True)
    _quota(member_rig, "--qpu-seconds", "1000", "--per", "1d")  # everyone's together, every token
    stub, md = member_rig.server.stub(member_rig.member_key)
    ids = {t.name: t.id for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens}

    def report(n: int, token: str, provider: str, qpu_us: int) -> None:
        stub.ReportUsage(org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(
            id=f"hostile-{n}", token_id=ids.get(token, token), token_name=token, provider=provider, kind="forward",
            method="GET", host="h", path="/", status=200, outcome="answered", qpu_us=qpu_us)]), metadata=md)

    report(1, "cached", "dwave", 10**15)    # one record cannot burn the org's shared time: cut to 60 s
    report(2, "relayed", "dwave", 5_000_000)  # the server times relay answers itself: a member's word counts nothing
    report(3, "cached", "ionq", 5_000_000)    # only D-Wave answers carry QPU time
    listing = member_rig.server.cli("quota", "list")
    assert "everyone's D-Wave QPU time (µs) on all organization tokens, 1000000000 per 1d: 60000000 used" in listing.stdout


def test_each_member_sees_their_own_metered_tokens_however_many_sets_there_are(member_rig):
    """Snapshots are shared per metered set, and past the first few a member's own set is built
    for their stream alone: ten members with a quota each on their own token see exactly it
    metered."""
    admin_stub, admin_md = member_rig.server.stub(member_rig.server.admin_key)
    names = [f"q{i}" for i in range(10)]
    keys = member_rig.server.add_users(names)
    for name in names:
        admin_stub.CreateToken(org_pb2.CreateTokenRequest(name=f"tok-{name}", provider="ionq", secret=b"k"), metadata=admin_md)
        _quota(member_rig, "--member", name, "--token", f"tok-{name}", "--requests", "5", "--per", "1d")
    for name, key in zip(names, keys, strict=True):
        stub, md = member_rig.server.stub(key)
        stream = stub.Watch(org_pb2.WatchRequest(), metadata=md)
        snapshot = next(stream)
        stream.cancel()
        assert not snapshot.more and [t.name for t in snapshot.tokens if t.metered] == [f"tok-{name}"], name
