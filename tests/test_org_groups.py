"""Access per token: groups. A member outside a token's groups neither sees it (lists, Watch,
snapshots, quotas) nor uses it (cached forward, relay, exec), is told "no such token" exactly as
for one that does not exist, and a change reaches their daemon within 2 s. Real processes (an
org server, an admin's and a member's daemon, the member's own gRPC client), plus the push
logic in-process."""

from __future__ import annotations

import sys

import grpc
import pytest
from conftest import wait_for
from qpu_broker.orgserver.groups import visible
from qpu_broker.orgserver.service import Change, seen_as
from qpu_broker.orgserver.store import ACCESS, CREATED, DELETED, UPDATED, OrgTokenRecord
from qpu_broker_client import NotFoundError, QpuToken, QpuTokenType, TokenProvider
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

ACCESS_WITHIN = 2.0  # the contract: an access change reaches connected daemons within 2 s
BOTH = ["Org IonQ", "Relay IonQ"]
RELAY = TokenProvider(ionq=QpuToken("organization", name="Relay IonQ"))
EXEC = ("import os, urllib.request as u; r = u.Request(os.environ['IONQ_API_URL'] + '/jobs', "
        "headers={'Authorization': 'apiKey ' + os.environ['IONQ_API_KEY']}); print(u.urlopen(r).status)")


def _cli(rig, *args: str) -> str:
    r = rig.server.cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _names(daemon) -> list[str]:
    return sorted(t.name for t in daemon.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION])


def _refused(call, request, md) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=md)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND, caught.value
    return caught.value.details()


def _watch_until_synced(stub, md, request) -> list[org_pb2.WatchEvent]:
    """A Watch stream's events up to its last snapshot page or its CAUGHT_UP, then closed."""
    stream = stub.Watch(request, metadata=md)
    events = []
    for event in stream:
        events.append(event)
        if event.kind == org_pb2.WatchEvent.KIND_CAUGHT_UP or (event.kind == org_pb2.WatchEvent.KIND_SNAPSHOT
                                                              and not event.more):
            break
    stream.cancel()
    return events


def test_a_member_outside_a_tokens_groups_neither_sees_nor_uses_it(member_rig):
    rig = member_rig
    carol_code = rig.server.add_user("carol")
    admin = rig.admin.broker()
    admin.qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization", cached=True)
    admin.qpu_token.create(name="Relay IonQ", provider="ionq", token=rig.secret, token_type="organization")
    (rig.member.home / "config.toml").write_text(
        f'[org]\ngrace_seconds = 900\n[providers.ionq]\nendpoint = "https://{rig.fake.netloc}"\n')
    assert rig.member.cli("reload").returncode == 0
    wait_for(lambda: _names(rig.member) == BOTH, "bob's daemon to get both tokens (everyone's, by default)")
    r = rig.member.cli("exec", "--org-token", "ionq=Org IonQ", "--", sys.executable, "-c", EXEC)
    assert r.returncode == 0 and r.stdout.strip() == "200", r.stdout + r.stderr

    # Limited to a group bob is not in: gone from his daemon within 2 s, secrets and all. (The
    # quota first: its change is pushed before the others, which the wait below waits for.)
    _cli(rig, "quota", "set", "--member", "bob", "--token", "Org IonQ", "--requests", "5", "--per", "1d")
    _cli(rig, "group", "add", "physics", "--member", "carol")
    for name in BOTH:
        _cli(rig, "token", "set-access", name, "--group", "physics")
    wait_for(lambda: _names(rig.member) == [], "bob's daemon to drop both", timeout=ACCESS_WITHIN)
    assert rig.member.broker().org_status().tokens == 0
    assert "access=physics" in _cli(rig, "token", "list")
    with pytest.raises(NotFoundError, match="no organization token named 'Org IonQ'"):
        rig.forward(rig.member)  # the cached token
    with pytest.raises(NotFoundError, match="no organization token named 'Relay IonQ'"):
        rig.member.broker().forward("GET", rig.fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=RELAY)
    r = rig.member.cli("exec", "--org-token", "ionq=Org IonQ", "--", sys.executable, "-c", EXEC)
    assert r.returncode != 0 and "no organization token named 'Org IonQ'" in r.stderr, r.stdout + r.stderr
    assert "Org IonQ" not in rig.member.cli("token", "list").stdout
    assert rig.secret not in rig.member.log()

    # Bob's own key and gRPC client: every RPC answers as if the tokens did not exist.
    stub, md = rig.member_client()
    admin_stub, admin_md = rig.server.admin_client()
    ids = {t.name: t.id for t in admin_stub.ListTokens(org_pb2.ListTokensRequest(), metadata=admin_md).tokens}
    assert sorted(ids) == BOTH
    listed = admin_stub.GetToken(org_pb2.GetTokenRequest(name="Org IonQ"), metadata=admin_md)
    assert (listed.access.only_groups, list(listed.access.groups)) == (True, ["physics"])
    assert stub.ListTokens(org_pb2.ListTokensRequest(page_size=1), metadata=md).tokens == []
    for asked in ([], list(ids.values())):
        assert stub.FetchSecrets(org_pb2.FetchSecretsRequest(ids=asked), metadata=md).secrets == []
    missing = "0" * 24
    for hidden in ids.values():  # no existence oracle: word for word what a missing id gets
        for call, request in ((stub.Reserve, org_pb2.ReserveRequest),
                              (stub.RelayForward, lambda token_id: org_pb2.RelayForwardRequest(
                                  token_id=token_id, provider="ionq", url=rig.fake.url("/v0.3/jobs"))),
                              (stub.RelaySign, lambda token_id: org_pb2.RelaySignRequest(
                                  token_id=token_id, provider="ionq", url=rig.fake.url("/v0.3/jobs")))):
            said = _refused(call, request(token_id=hidden), md)
            assert said.replace(hidden, missing) == _refused(call, request(token_id=missing), md)
    assert stub.ListQuotas(org_pb2.ListQuotasRequest(), metadata=md).quotas == []
    [snapshot] = _watch_until_synced(stub, md, org_pb2.WatchRequest())
    assert snapshot.tokens == []
    # Resuming across changes to hidden tokens (a rotation, one made for physics from the start and
    # deleted): nothing of them, not even a name.
    admin.qpu_token.update(qpu_token_name="Org IonQ", token=rig.secret, token_type="organization")  # a new version
    made = admin_stub.CreateToken(org_pb2.CreateTokenRequest(
        name="Physics only", provider="ionq", secret=b"s", access=org_pb2.TokenAccess(only_groups=True,
                                                                                      groups=["physics"])),
        metadata=admin_md)
    admin_stub.DeleteToken(org_pb2.DeleteTokenRequest(token=org_pb2.GetTokenRequest(id=made.id)), metadata=admin_md)
    resumed = _watch_until_synced(stub, md, org_pb2.WatchRequest(after_revision=snapshot.revision,
                                                                 store_id=snapshot.store_id))
    assert [e.kind for e in resumed] == [org_pb2.WatchEvent.KIND_CAUGHT_UP]
    carol, carol_md = rig.server.client(carol_code)
    assert sorted(t.name for t in carol.ListTokens(org_pb2.ListTokensRequest(), metadata=carol_md).tokens) == BOTH
    assert [s.id for s in carol.FetchSecrets(org_pb2.FetchSecretsRequest(), metadata=carol_md).secrets] == [ids["Org IonQ"]]

    # Into the group: back within 2 s, and usable; out again: gone within 2 s.
    _cli(rig, "group", "add-member", "physics", "bob")
    wait_for(lambda: _names(rig.member) == BOTH, "bob's daemon to get both back", timeout=ACCESS_WITHIN)
    assert rig.forward(rig.member).status_code == 200
    _cli(rig, "group", "rm-member", "physics", "bob")
    wait_for(lambda: _names(rig.member) == [], "bob's daemon to drop both again", timeout=ACCESS_WITHIN)

    # The group removed: its tokens are left to admins, never opened to everyone.
    said = _cli(rig, "group", "rm", "physics")
    assert "for org admins only" in said and "'Org IonQ'" in said, said
    wait_for(lambda: carol.ListTokens(org_pb2.ListTokensRequest(), metadata=carol_md).tokens == [], "carol to lose them")
    assert _names(rig.admin) == BOTH and rig.forward(rig.admin).status_code == 200  # admins see and use every token
    assert _names(rig.member) == []
    _cli(rig, "token", "set-access", "Org IonQ", "--everyone")
    wait_for(lambda: _names(rig.member) == ["Org IonQ"], "everyone's token back at bob's", timeout=ACCESS_WITHIN)
    assert rig.forward(rig.member).status_code == 200


def test_admins_manage_groups_over_grpc_and_members_cannot(member_rig):
    rig = member_rig
    admin, admin_md = rig.server.admin_client()
    stub, md = rig.member_client()
    made = admin.AddGroup(org_pb2.AddGroupRequest(name="ops", members=["bob"]), metadata=admin_md)
    assert (made.name, list(made.members)) == ("ops", ["bob"])
    token = admin.CreateToken(org_pb2.CreateTokenRequest(name="Ops IonQ", provider="ionq", secret=b"s"), metadata=admin_md)
    assert not token.access.only_groups  # everyone, by default
    token = admin.SetTokenAccess(org_pb2.SetTokenAccessRequest(
        token=org_pb2.GetTokenRequest(name="Ops IonQ"), access=org_pb2.TokenAccess(only_groups=True, groups=["ops"])),
        metadata=admin_md)
    assert list(token.access.groups) == ["ops"]
    [seen] = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens
    assert seen.name == "Ops IonQ" and not seen.HasField("access")  # members are not told the groups
    for bad, said in ((org_pb2.AddGroupRequest(name="a b"), "a group name is printable"),
                      (org_pb2.AddGroupRequest(name="x", members=["nobody"]), "no user named 'nobody'"),
                      (org_pb2.AddGroupRequest(name="ops"), "'ops' already exists")):
        with pytest.raises(grpc.RpcError) as caught:
            admin.AddGroup(bad, metadata=admin_md)
        assert said in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        admin.SetTokenAccess(org_pb2.SetTokenAccessRequest(token=org_pb2.GetTokenRequest(name="Ops IonQ"),
                                                           access=org_pb2.TokenAccess(groups=["ops"])), metadata=admin_md)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:  # taking nobody out: said, not an internal error
        admin.RemoveGroupMembers(org_pb2.GroupMembersRequest(group="ops"), metadata=admin_md)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "name the members" in caught.value.details()
    for call, request in ((stub.AddGroup, org_pb2.AddGroupRequest(name="mine", members=["bob"])),
                          (stub.ListGroups, org_pb2.ListGroupsRequest()),
                          (stub.AddGroupMembers, org_pb2.GroupMembersRequest(group="ops", members=["bob"])),
                          (stub.RemoveGroupMembers, org_pb2.GroupMembersRequest(group="ops", members=["bob"])),
                          (stub.RemoveGroup, org_pb2.RemoveGroupRequest(name="ops")),
                          (stub.SetTokenAccess, org_pb2.SetTokenAccessRequest(token=org_pb2.GetTokenRequest(name="Ops IonQ")))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=md)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert admin.RemoveGroupMembers(org_pb2.GroupMembersRequest(group="ops", members=["bob"]), metadata=admin_md).members == []
    assert stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens == []
    assert list(admin.RemoveGroup(org_pb2.RemoveGroupRequest(name="ops"), metadata=admin_md).admins_only_tokens) == ["Ops IonQ"]
    assert admin.ListGroups(org_pb2.ListGroupsRequest(), metadata=admin_md).groups == []
    listed = rig.server.cli("group", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"


def _record(groups) -> OrgTokenRecord:
    from qpu_broker.common.reach import Owner, Reach

    return OrgTokenRecord("id-t", "t", "ionq", Reach(owner=Owner.ORG), 2, 1, 2, False, groups)


@pytest.mark.parametrize(("change", "view", "sent"), [
    (Change(UPDATED, "id-t", "t", 5, _record(("a",))), frozenset({"b"}), None),  # never saw it: nothing
    (Change(UPDATED, "id-t", "t", 5, _record(("a",))), frozenset({"a", "b"}), UPDATED),
    (Change(UPDATED, "id-t", "t", 5, _record(None)), frozenset(), UPDATED),  # everyone's
    (Change(UPDATED, "id-t", "t", 5, _record(())), None, UPDATED),  # admins see every token
    (Change(UPDATED, "id-t", "t", 5, _record(())), frozenset({"a"}), None),  # admins only
    (Change(DELETED, "id-t", "t", 5, None, ("a",)), frozenset({"b"}), None),  # not even its name
    (Change(DELETED, "id-t", "t", 5, None, ("a",)), frozenset({"a"}), DELETED),
    (Change(ACCESS, "id-t", "t", 5, _record(("a",)), None), frozenset({"b"}), DELETED),  # lost it
    (Change(ACCESS, "id-t", "t", 5, _record(("b",)), ("a",)), frozenset({"b"}), CREATED),  # gained it
    (Change(ACCESS, "id-t", "t", 5, _record(("b",)), ("a",)), frozenset({"c"}), None),
    # Limited, then deleted before the change was pushed: who held it still hears it went.
    (Change(ACCESS, "id-t", "t", 5, None, None), frozenset(), DELETED),
])
def test_each_stream_is_sent_what_its_member_may_see_and_what_they_lost(change, view, sent):
    out = seen_as(change, view)
    assert (out.kind if out else None) == sent
    if sent == DELETED:
        assert out.token is None
    if sent in (CREATED, UPDATED):
        assert visible(out.token.groups, view)


def test_pushes_and_resumes_tell_each_member_only_what_they_may_see(short_tmp, as_local_operator):
    """The server's push logic in-process: each stream is sent what its member may see, told of a
    token it held and lost (even one deleted before the change was pushed), and nothing at all of
    one it never saw; a resume across a change of access or of the member's groups is a snapshot."""
    import os

    from qpu_broker.keys import device_key
    from qpu_broker.orgserver.db import SQLITE
    from qpu_broker.orgserver.devices import Caller
    from qpu_broker.orgserver.service import ORG_ONLY, OrgService, Resnapshot
    from qpu_broker.orgserver.store import OrgStore
    from qpu_broker.orgserver.users import new_users

    store = OrgStore.open(SQLITE, str(short_tmp / "org.db"))
    service = OrgService(store, os.urandom(32))
    made = new_users([("alice", "admin"), ("bob", "member"), ("carol", "member")])
    store.add_users([u for u, _, _ in made], [c for _, c, _ in made])
    users = {}
    for user, _, code in made:  # each stream is a device's, as the interceptor admits it
        enrolled = service.devices.enroll(code.code, device_key.public_key(device_key.new_private_key()), "laptop")
        users[user.name] = Caller(user.name, user.role, user.created_us, enrolled.device.id, 0)
    service.groups.add("physics", ["carol"])
    everyone = service.create("open", "ionq", b"s", ORG_ONLY)
    subs = {name: service.subscribe(user) for name, user in users.items()}

    def sent(name: str) -> list:
        out = []
        while not subs[name].queue.empty():
            item = subs[name].queue.get_nowait()
            seen = item if isinstance(item, Resnapshot) else seen_as(item, subs[name].view)
            if seen is not None:
                out.append("snapshot" if isinstance(seen, Resnapshot) else (seen.kind, seen.name))
        return out

    service.create("lim", "ionq", b"s", ORG_ONLY, relay=False, groups=["physics"])  # cached: members fetch it
    assert (sent("alice"), sent("bob"), sent("carol")) == ([(CREATED, "lim")], [], [(CREATED, "lim")])
    start = service.revision
    # Limited, then deleted, before the server pumped (the CLI writes, the server reads later).
    store.set_token_access(everyone.id, ("physics",))
    store.delete_token(everyone)
    service.pump()
    assert sent("bob") == [(DELETED, "open")]  # he held it: it goes from his daemon
    assert set(sent("carol")) == {(DELETED, "open")}
    assert service.changes_since(start, subs["bob"]) is None  # an access change between: a snapshot
    mid = service.revision
    hidden = service.create("hidden", "ionq", b"s", ORG_ONLY, groups=["physics"])
    service.delete(hidden)
    assert sent("bob") == [] and sent("carol") == [(CREATED, "hidden"), (DELETED, "hidden")]
    assert service.changes_since(mid, subs["bob"]) == []  # nothing of it, not even its name
    assert [(c.kind, c.name) for c in service.changes_since(mid, subs["carol"])] == [(DELETED, "hidden")]
    assert [r.name for r, _ in service.secrets(users["bob"], [])] == []
    service.groups.add_members("physics", ["bob"])
    assert sent("bob") == ["snapshot"] and subs["bob"].view == frozenset({"physics"})
    assert sent("carol") == []  # only bob's view changed
    assert service.changes_since(mid, subs["bob"]) is None  # his own groups changed between
    assert [r.name for r, _ in service.secrets(users["bob"], [])] == ["lim"]
    store.close()
