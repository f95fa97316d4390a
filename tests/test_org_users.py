"""Users in bulk: `org-server user add` takes many names (arguments, a file or stdin) in one
process and one transaction, and admins do the same remotely (AddUsers, ListUsers,
RemoveUsers); all or none, every new enrollment code shown once, members refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest
from conftest import DEADLINE, wait_for
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import make_ca
from testsupport.orgserver import OrgServer


@pytest.fixture
def server(short_tmp):
    s = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    yield s
    s.stop()


def _add_from_stdin(server: OrgServer, text: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "user", "add", "--data", str(server.data),
                           "--from", "-", *args], input=text, capture_output=True, text=True, timeout=DEADLINE, check=False)


def test_a_thousand_users_from_stdin_in_one_call_each_code_once(server):
    names = [f"user{i:04}" for i in range(1000)]
    lines = "# a comment, and a blank line\n\n" + "\n".join(names[:-1]) + f"\n{names[-1]} admin\n"
    started = time.monotonic()
    r = _add_from_stdin(server, lines)
    assert r.returncode == 0, r.stderr
    elapsed = time.monotonic() - started
    pairs = [line.split("\t") for line in r.stdout.splitlines()]
    assert [n for n, _ in pairs] == names and len({k for _, k in pairs}) == 1000
    assert "added 1000 users" in r.stderr and elapsed < DEADLINE  # one process: seconds, not 1000 starts
    listed = json.loads(server.cli("user", "list", "--json").stdout)
    assert {"name": "user0999", "role": "admin"} in listed and len(listed) == 1001
    stub, md = server.client(pairs[5][1])
    assert stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md).user == "user0005"  # each code works at once


def test_bulk_add_is_all_or_none_and_says_which_line_is_wrong(server):
    r = _add_from_stdin(server, "ann\nbob superuser\n")
    assert r.returncode != 0 and "line 2: expected NAME or NAME ROLE" in r.stderr and "Traceback" not in r.stderr
    assert server.cli("user", "add", "ann").returncode == 0
    r = server.cli("user", "add", "zed", "ann", "--json")
    assert r.returncode != 0 and "'ann' already exists: nobody was added" in r.stderr
    r = server.cli("user", "add", "zed", "zed")
    assert r.returncode != 0 and "listed twice" in r.stderr
    for bad in ("has space", "*", "x" * 129):
        r = server.cli("user", "add", bad)
        assert r.returncode != 0 and "user name" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "zed" not in server.cli("user", "list").stdout
    r = server.cli("user", "add", "yan", "xia", "--json")
    assert r.returncode == 0 and [u["name"] for u in json.loads(r.stdout)] == ["yan", "xia"]
    r = server.cli("user", "rm", "yan", "nobody")
    assert r.returncode != 0 and "no user named 'nobody'" in r.stderr
    assert "yan" in server.cli("user", "list").stdout  # none removed
    assert server.cli("user", "rm", "yan", "xia").returncode == 0


def test_admins_add_list_and_remove_users_remotely_members_cannot(server):
    stub, admin = server.client(server.admin_code)
    made = stub.AddUsers(org_pb2.AddUsersRequest(users=[
        org_pb2.NewUser(name="m1"), org_pb2.NewUser(name="m2", role=org_pb2.ROLE_ADMIN)]), metadata=admin).users
    assert [(u.name, u.role) for u in made] == [("m1", org_pb2.ROLE_MEMBER), ("m2", org_pb2.ROLE_ADMIN)]
    assert all(u.enrollment_code.startswith("qbe_") and not u.api_key for u in made)
    listed = stub.ListUsers(org_pb2.ListUsersRequest(), metadata=admin).users
    assert [u.name for u in listed] == ["alice", "m1", "m2"] and not any(u.enrollment_code for u in listed)
    member_stub, member = server.client(made[0].enrollment_code)
    for call, request in ((member_stub.AddUsers, org_pb2.AddUsersRequest(users=[org_pb2.NewUser(name="x")])),
                          (member_stub.ListUsers, org_pb2.ListUsersRequest()),
                          (member_stub.RemoveUsers, org_pb2.RemoveUsersRequest(names=["m2"]))):
        with pytest.raises(grpc.RpcError) as refused:
            call(request, metadata=member)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED and "ask an org admin" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        stub.AddUsers(org_pb2.AddUsersRequest(users=[org_pb2.NewUser(name="m1")]), metadata=admin)
    assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    # A member's open push stream ends when an admin removes them remotely.
    stream = member_stub.Watch(org_pb2.WatchRequest(), metadata=member)
    assert next(stream).kind == org_pb2.WatchEvent.KIND_SNAPSHOT
    assert stub.RemoveUsers(org_pb2.RemoveUsersRequest(names=["m1"]), metadata=admin).removed == 1
    with pytest.raises(grpc.RpcError) as ended:
        for _ in stream:
            pass
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    wait_for(lambda: "m1" not in server.cli("user", "list").stdout, "m1 gone from the list")
    assert made[1].enrollment_code not in server.log()  # codes are answered once, never logged


def test_one_user_holds_at_most_sixteen_push_streams_and_an_org_reach_is_bounded(server, short_tmp):
    stub, md = server.client(server.admin_code)
    streams = [stub.Watch(org_pb2.WatchRequest(), metadata=md) for _ in range(16)]
    for s in streams:
        assert next(s).kind == org_pb2.WatchEvent.KIND_SNAPSHOT
    extra = stub.Watch(org_pb2.WatchRequest(), metadata=md)
    with pytest.raises(grpc.RpcError) as refused:
        next(extra)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "16 push streams" in refused.value.details()
    streams[0].cancel()
    wait_for(lambda: _watch_opens(stub, md), "a stream's place to be free again")
    for s in streams[1:]:
        s.cancel()
    # A CA bundle as an org's settings would travel with every token to every member: refused.
    bundle = short_tmp / "bundle.pem"
    bundle.write_bytes(server.ca.ca_file.read_bytes() * 80)  # 40 KiB
    r = server.cli("provider", "set", "ionq", "--host", "eu.ionq.example", "--ca-file", str(bundle))
    assert r.returncode != 0 and "give the CA that signs the provider's certificate, not a bundle" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(grpc.RpcError) as refused:  # a token's own settings, over gRPC, the same
        stub.CreateToken(org_pb2.CreateTokenRequest(name="big", provider="ionq", secret=b"k", own=org_pb2.Reach(
            ca_pem=bundle.read_bytes())), metadata=md)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "not a bundle" in refused.value.details()


def _watch_opens(stub, md) -> bool:
    s = stub.Watch(org_pb2.WatchRequest(), metadata=md)
    try:
        return next(s).kind == org_pb2.WatchEvent.KIND_SNAPSHOT
    except grpc.RpcError:
        return False
    finally:
        s.cancel()
