"""The admin record: every admin change, with who made it, from where and when, never a secret.

Real processes: an org server, an admin's daemon, the admin's own gRPC client and the admin CLI
on the data dir (SQLite, and PostgreSQL); in-process on both stores: a change and its entry
commit together or not at all, filters and pages, and the record outlives the trimmed events.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import os
import pwd
import re
import socket
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.admin_record import (
    ACTOR,
    Actor,
    AdminQuery,
    AdminRecord,
    token_change,
)
from qpu_broker.orgserver.db import POSTGRESQL, SQLITE
from qpu_broker.orgserver.store import EVENTS_KEPT, OrgStore, OrgTokenRecord
from qpu_broker.orgserver.users import add_users, new_users
from qpu_broker_client.errors import AlreadyExistsError, InvalidArgumentError
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

CLI_ACTOR = f"cli:{pwd.getpwuid(os.getuid()).pw_name}(uid {os.getuid()})"
LOOPBACK_PEER = re.compile(r"ipv(4:127\.0\.0\.1|6:(\[|%5B)::1(\]|%5D)):\d+")


def _audit(server, *args: str) -> list[dict]:
    r = server.cli("audit", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _all_entries(stub, md, **query) -> list[org_pb2.AdminEntry]:
    """Every entry the RPC answers for `query`, page by page (three a page)."""
    entries, after = [], 0
    while True:
        page = stub.ListAdminRecord(org_pb2.ListAdminRecordRequest(after_seq=after, limit=3, **query), metadata=md)
        entries += page.entries
        if not page.more:
            return entries
        after = page.entries[-1].seq


def test_the_admin_record_names_the_actor_of_each_change(member_rig):
    rig = member_rig
    admin = rig.admin
    began = time.time()
    stub, md = rig.server.admin_client()  # alice's own client: a device of hers (the CLI made its code)
    client_device = stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md).device_id
    daemon_device = admin.broker().org_status().device_id
    rotated, shown = f"canary-rotated-{os.urandom(6).hex()}", []

    # Through alice's daemon: its CLI and its client library.
    _ok(admin.cli("token", "add", "Org IonQ", "--provider", "ionq", "--type", "organization", input=rig.secret + "\n"))
    admin.broker().qpu_token.update(qpu_token_name="Org IonQ", token=rotated, token_type="organization")
    # Through her own gRPC client.
    stub.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(name="Org IonQ"), name="Lab IonQ",
                                                set_own=True, own=org_pb2.Reach(hosts=["lab.example.com"])), metadata=md)
    made = stub.AddUsers(org_pb2.AddUsersRequest(users=[org_pb2.NewUser(name="carol")]), metadata=md)
    shown.append(made.users[0].enrollment_code)
    stub.AddGroup(org_pb2.AddGroupRequest(name="physics", members=["carol"]), metadata=md)
    stub.SetTokenAccess(org_pb2.SetTokenAccessRequest(token=org_pb2.GetTokenRequest(name="Lab IonQ"),
                                                      access=org_pb2.TokenAccess(only_groups=True, groups=["physics"])),
                        metadata=md)
    code = stub.NewEnrollmentCode(org_pb2.NewEnrollmentCodeRequest(user="carol"), metadata=md).code
    shown.append(code)
    carols = rig.server.enroll(code)
    stub.RemoveDevice(org_pb2.RemoveDeviceRequest(id=carols.id), metadata=md)
    stub.RemoveUsers(org_pb2.RemoveUsersRequest(names=["carol"]), metadata=md)
    # Through the admin CLI on the data dir.
    _ok(rig.server.cli("quota", "set", "--member", "bob", "--requests", "5", "--per", "1d"))
    _ok(rig.server.cli("token", "cache", "Lab IonQ", "on"))  # relay is the default: cache it
    # The mode back through her client: the same action as the CLI's, whoever changes it.
    stub.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(name="Lab IonQ"), cached=False),
                     metadata=md)
    # And the daemon again.
    _ok(admin.cli("token", "rm", "--type", "organization", "Lab IonQ"))
    ended = time.time()

    entries = _audit(rig.server)
    alice_daemon, alice_client, cli = ("alice", daemon_device), ("alice", client_device), (CLI_ACTOR, "")
    assert [(e["actor"], e["device"], e["action"], e["subject"]) for e in entries] == [
        (*cli, "org.init", "Acme"), (*cli, "provider.set", "ionq"), (*cli, "user.add", "bob"),
        (*cli, "user.code", "alice"),  # the client's device's code
        (*alice_daemon, "token.create", "Org IonQ"), (*alice_daemon, "token.update", "Org IonQ"),
        (*alice_client, "token.update", "Lab IonQ"), (*alice_client, "user.add", "carol"),
        (*alice_client, "group.add", "physics"), (*alice_client, "group.add-member", "physics"),
        (*alice_client, "token.set-access", "Lab IonQ"), (*alice_client, "user.code", "carol"),
        (*alice_client, "device.rm", carols.id), (*alice_client, "user.rm", "carol"),
        (*cli, "quota.set", "#1"), (*cli, "token.relay", "Lab IonQ"), (*alice_client, "token.relay", "Lab IonQ"),
        (*alice_daemon, "token.delete", "Lab IonQ")]
    details = {(e["action"], e["subject"]): e["detail"] for e in entries}
    assert "secret rotated" in details["token.update", "Org IonQ"]
    assert "renamed from 'Org IonQ'; reach: hosts +lab.example.com:443" in details["token.update", "Lab IonQ"]
    assert details["token.set-access", "Lab IonQ"].endswith("for physics")
    assert details["group.add-member", "physics"] == "carol"
    modes = [e["detail"] for e in entries if e["action"] == "token.relay"]
    assert "relay off (cached in members' daemons)" in modes[0] and modes[1].endswith("; relay on")
    assert details["quota.set", "#1"] == "bob's requests on all organization tokens, 5 per 1d"
    for i, e in enumerate(entries):  # from where: the caller's address as the server saw it, or the CLI's host
        assert LOOPBACK_PEER.fullmatch(e["origin"]) if e["device"] else e["origin"] == socket.gethostname(), e
        at = datetime.datetime.fromisoformat(e["at"]).timestamp()  # and when (the first three: the rig's set-up)
        assert (began - 0.01 if i >= 3 else 0) <= at <= ended + 0.01, e
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)

    # The RPC: the same entries, in pages; filtered by actor (a user, or the CLI's OS user), action, time.
    rpc = _all_entries(stub, md)
    assert [(e.seq, e.actor, e.device_id, e.origin, e.action, e.subject, e.detail) for e in rpc] == [
        (e["seq"], e["actor"], e["device"], e["origin"], e["action"], e["subject"], e["detail"]) for e in entries]
    assert {e.actor for e in _all_entries(stub, md, actor="alice")} == {"alice"}
    assert len(_all_entries(stub, md, actor="cli:" + pwd.getpwuid(os.getuid()).pw_name)) == 6
    assert [e.action for e in _all_entries(stub, md, action="token")] == [
        e["action"] for e in entries if e["action"].startswith("token.")]
    since = Timestamp()
    since.FromMicroseconds(int(began * 1e6))
    assert _all_entries(stub, md, since=since)[0].action == "user.code"
    assert [e["action"] for e in _audit(rig.server, "--actor", "alice", "--action", "user", "--since", "1h")] == [
        "user.add", "user.code", "user.rm"]
    text = _ok(rig.server.cli("audit", "--action", "device.rm")).splitlines()
    assert len(text) == 1 and f"alice (device {client_device}) from ipv" in text[0] and carols.id in text[0]
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListAdminRecord(org_pb2.ListAdminRecordRequest(action="token.mint"), metadata=md)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "no admin action 'token.mint'" in refused.value.details()

    # A member cannot read it.
    member_stub, member_md = rig.member_client()
    with pytest.raises(grpc.RpcError) as refused:
        member_stub.ListAdminRecord(org_pb2.ListAdminRecordRequest(), metadata=member_md)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "reading the admin record is for org admins" in refused.value.details()

    # Never a secret: no token secret, enrollment code or access token in any entry, either form.
    record = json.dumps(entries) + _ok(rig.server.cli("audit")) + str(rpc)
    codes = [rig.server.admin_code, rig.member_code, *shown]
    for secret in (rig.secret, rotated, md[0][1].split()[1], *codes, *(c.split("_", 2)[2] for c in codes)):
        assert secret not in record


def test_the_cli_and_an_admin_client_are_recorded_on_postgresql(short_tmp, postgres):
    from testsupport.fakes import make_ca
    from testsupport.orgserver import OrgServer

    url = postgres.create_database(f"record_{short_tmp.name.replace('-', '_')}")
    server = OrgServer(short_tmp, make_ca(short_tmp / "ca"), "Acme", "--database", url).start()
    try:
        stub, md = server.admin_client()
        device = stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md).device_id
        stub.AddGroup(org_pb2.AddGroupRequest(name="physics"), metadata=md)
        _ok(server.cli("group", "rm", "physics"))
        assert [(e.actor, e.device_id, e.action, e.subject) for e in _all_entries(stub, md)] == [
            (CLI_ACTOR, "", "org.init", "Acme"), (CLI_ACTOR, "", "user.code", "alice"),
            ("alice", device, "group.add", "physics"), (CLI_ACTOR, "", "group.rm", "physics")]
        assert [e["action"] for e in _audit(server, "--actor", "alice")] == ["group.add"]
    finally:
        server.stop()


# -- in-process, on both stores ------------------------------------------------------------
@pytest.fixture(params=[SQLITE, POSTGRESQL])
def store(request, short_tmp, postgres):
    target = (str(short_tmp / "org.db") if request.param == SQLITE
              else postgres.create_database(f"adminrec_{short_tmp.name.replace('-', '_')}"))
    s = OrgStore.open(request.param, target)
    yield s
    s.close()


@pytest.fixture
def alice():
    token = ACTOR.set(Actor("alice", "0123456789abcdef", "ipv4:192.0.2.7:40000"))
    yield
    ACTOR.reset(token)


def _token(name: str) -> OrgTokenRecord:
    return OrgTokenRecord(f"id-{name}", name, "ionq", Reach(owner=Owner.ORG), 1, 1, 1)


def test_a_change_and_its_entry_commit_together_or_not_at_all(store, alice):
    record = AdminRecord(store, lambda: 42)
    with record.changing() as note:
        store.insert_token(_token("t"), b"n", b"c")
        note("token.create", "t", "id id-t")
    [entry] = record.entries(AdminQuery())[0]
    assert (entry.at_us, entry.actor, entry.device, entry.origin, entry.action, entry.subject) == (
        42, "alice", "0123456789abcdef", "ipv4:192.0.2.7:40000", "token.create", "t")

    def state():
        return record.entries(AdminQuery())[0], [t.name for t in store.tokens()], store.users(), store.groups()

    def refused(error, said: str, *steps) -> None:
        """One change of `steps` (each given `note`), refused with `error`: nothing of it stays."""
        before = state()
        with pytest.raises(error, match=said), record.changing() as note:
            for step in steps:
                step(note)
        assert state() == before

    # The store's own step fails: no entry. It is undone before the store reads on (the clash is
    # named, not a name it had just written; on PostgreSQL, not an aborted transaction).
    refused(AlreadyExistsError, "named 't' already exists", lambda note: store.insert_token(_token("t"), b"n", b"c"))
    add_users(store, record, new_users([("bob", "member")]))
    before = state()
    with pytest.raises(AlreadyExistsError, match="a user named 'bob' already exists"):
        add_users(store, record, new_users([("zed", "member"), ("bob", "member")]))
    assert state() == before
    # The change made, then its entry fails, or there is none: no change.
    add_group = lambda note: store.add_group("physics", [], 1)
    refused(ValueError, "'group.mint' is not in admin_record.ACTIONS", add_group, lambda note: note("group.mint", "x"))
    refused(RuntimeError, "without its admin record entry", add_group)
    # Nobody known to have asked (no actor set): refused before anything is written.
    def unattributed():
        with record.changing() as note:
            add_group(note)
            note("group.add", "physics")

    with pytest.raises(RuntimeError, match="no actor set"):
        contextvars.Context().run(unattributed)
    assert state() == before
    assert [e.action for e in record.entries(AdminQuery())[0]] == ["token.create", "user.add"]


def test_the_record_is_filtered_paged_and_outlives_the_trimmed_events(store, alice):
    clock = iter(range(1, 100))
    record = AdminRecord(store, lambda: next(clock))
    for actor in ("cli:ops(uid 1000)", "cli:opsx(uid 1001)", "alice"):
        token = ACTOR.set(Actor(actor, "", "host"))
        with record.changing() as note:
            store.add_group(f"g-{actor}", [], 1)
            note("group.add", f"g-{actor}")
            note("quota.rm", "#1")
        ACTOR.reset(token)
    # Old events go (a daemon further behind gets a snapshot); the record's entries stay.
    store.db.execute("INSERT INTO events (seq, kind, subject, name, at_us) VALUES (?, 'org', '', '', 0)",
                     (256 * (EVENTS_KEPT // 256 + 2) - 1,))
    with record.changing() as note:
        store.set_org_reach("ionq", Reach(owner=Owner.ORG))  # the next event's number is a multiple of 256: a trim
        note("provider.set", "ionq")
    assert store.oldest_event() > EVENTS_KEPT

    def seen(**query) -> list[tuple[int, str, str]]:
        return [(e.at_us, e.actor, e.action) for e in record.entries(AdminQuery(**query))[0]]

    assert [a for _, _, a in seen()] == ["group.add", "quota.rm"] * 3 + ["provider.set"]
    assert seen(actor="cli:ops") == [(1, "cli:ops(uid 1000)", "group.add"), (2, "cli:ops(uid 1000)", "quota.rm")]
    assert seen(actor="cli:ops(uid 1000)") == seen(actor="cli:ops") and seen(actor="cli:op") == []
    assert seen(action="quota") == seen(action="quota.rm") and len(seen(action="quota")) == 3
    assert seen(action="group", since_us=5) == [(5, "alice", "group.add")]
    page, more = record.entries(AdminQuery(limit=4))
    rest, done = record.entries(AdminQuery(after_seq=page[-1].seq, limit=4))
    assert (len(page), more, len(rest), done) == (4, True, 3, False)
    with pytest.raises(InvalidArgumentError, match="no admin action 'quot'"):
        record.entries(AdminQuery(action="quot"))


def test_a_token_change_is_told_by_what_moved_never_by_a_secret():
    before = OrgTokenRecord("id1", "Old", "ibm", Reach(("a.example:443", "b.example:443"), (), b"", "", Owner.ORG), 1, 1, 1)
    after = OrgTokenRecord("id1", "New", "ibm", Reach(("b.example:443", "c.example:443"), (), b"PEM",
                                                      "https://iam.example/token?apikey=canary-in-url", Owner.ORG),
                           2, 1, 2, relay=True)
    said = token_change(before, after, rotated=True)
    assert said == ("id id1; renamed from 'Old'; secret rotated; relay on; reach: hosts +c.example:443 "
                    "-a.example:443; ca set; token_url https://iam.example/token?…")
    assert token_change(before, before, rotated=False) == "id id1"
