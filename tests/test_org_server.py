"""The org server over TLS: roles, devices, sealed secrets, and the push stream."""

from __future__ import annotations

import secrets
import threading

import grpc
import pytest
from conftest import wait_for
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import make_ca


def test_admin_manages_members_use_and_never_change(org):
    member_code = org.add_user("bob")
    admin, admin_md = org.client(org.admin_code)
    member, member_md = org.client(member_code)
    assert admin.WhoAmI(org_pb2.WhoAmIRequest(), metadata=admin_md).role == org_pb2.ROLE_ADMIN
    assert member.WhoAmI(org_pb2.WhoAmIRequest(), metadata=member_md).user == "bob"

    canary = f"canary-org-{secrets.token_hex(8)}"
    made = admin.CreateToken(org_pb2.CreateTokenRequest(name="Org IBM", provider="ibm", secret=canary.encode(),
                                                        cached=True), metadata=admin_md)
    assert made.version == 1 and made.name == "Org IBM"
    listed = member.ListTokens(org_pb2.ListTokensRequest(), metadata=member_md)
    assert [t.id for t in listed.tokens] == [made.id]
    fetched = member.FetchSecrets(org_pb2.FetchSecretsRequest(), metadata=member_md)
    assert [(s.id, s.secret) for s in fetched.secrets] == [(made.id, canary.encode())]

    sel = org_pb2.GetTokenRequest(id=made.id)
    attempts = {
        "get": lambda: member.GetToken(sel, metadata=member_md),
        "rename": lambda: member.UpdateToken(org_pb2.UpdateTokenRequest(token=sel, name="x"), metadata=member_md),
        "rotate": lambda: member.UpdateToken(org_pb2.UpdateTokenRequest(token=sel, secret=b"x"), metadata=member_md),
        "delete": lambda: member.DeleteToken(org_pb2.DeleteTokenRequest(token=sel), metadata=member_md),
        "create": lambda: member.CreateToken(org_pb2.CreateTokenRequest(name="m", provider="ibm", secret=b"s"),
                                             metadata=member_md),
    }
    for what, attempt in attempts.items():
        with pytest.raises(grpc.RpcError) as err:
            attempt()
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, what
        assert "org admin" in err.value.details(), what

    rotated = admin.UpdateToken(org_pb2.UpdateTokenRequest(token=sel, secret=b"new-secret", name="Org IBM 2"),
                                metadata=admin_md)
    assert rotated.version == 2 and rotated.name == "Org IBM 2"
    assert admin.GetToken(org_pb2.GetTokenRequest(name="Org IBM 2"), metadata=admin_md).id == made.id
    admin.DeleteToken(org_pb2.DeleteTokenRequest(token=sel), metadata=admin_md)
    assert list(member.ListTokens(org_pb2.ListTokensRequest(), metadata=member_md).tokens) == []

    # The secret was sealed at rest: never in clear in the server's files, nor in its log.
    for path in org.data.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    assert canary not in org.log()


def test_bad_tokens_are_unauthenticated_and_removed_users_lose_access(org):
    admin, admin_md = org.client(org.admin_code)
    token = admin_md[0][1].removeprefix("Bearer ")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bearer in ("", "nonsense", "qbt_0000000000000000.99999999999999999." + "A" * 43, forged):
        stub, md = org.stub(bearer)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert ("not valid" if bearer else "no access token") in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        admin.ListTokens(org_pb2.ListTokensRequest())  # no metadata at all
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in err.value.details()

    carol = org.add_user("carol")
    stub, md = org.client(carol)
    stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md)
    assert org.cli("user", "rm", "carol").returncode == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "removed from Acme" in err.value.details()
    # Promotion takes effect at once too.
    dave = org.add_user("dave")
    stub, md = org.client(dave)
    with pytest.raises(grpc.RpcError):
        stub.CreateToken(org_pb2.CreateTokenRequest(name="d", provider="dwave", secret=b"s"), metadata=md)
    assert org.cli("user", "set-role", "dave", "admin").returncode == 0
    assert stub.CreateToken(org_pb2.CreateTokenRequest(name="d", provider="dwave", secret=b"s"), metadata=md).name == "d"
    listed = org.cli("user", "list", "--json")
    assert '"name": "dave", "role": "admin"' in listed.stdout and org.admin_code not in listed.stdout


def test_a_certificate_from_another_ca_is_refused(org, short_tmp):
    other = make_ca(short_tmp / "other-ca", "someone else's CA")
    stub, md = org.stub(org.admin_code, ca_file=other.ca_file)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md, timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_watch_pushes_a_snapshot_then_changes(org):
    admin, md = org.client(org.admin_code)
    first = admin.CreateToken(org_pb2.CreateTokenRequest(name="a", provider="ionq", secret=b"s1"), metadata=md)
    member, member_md = org.client(org.add_user("erin"))
    events = []
    stream = member.Watch(org_pb2.WatchRequest(), metadata=member_md)

    def read():
        try:
            for event in stream:
                if event.kind != org_pb2.WatchEvent.KIND_HEARTBEAT:
                    events.append(event)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: events, "the snapshot")
    assert events[0].kind == org_pb2.WatchEvent.KIND_SNAPSHOT and [t.id for t in events[0].tokens] == [first.id]
    second = admin.CreateToken(org_pb2.CreateTokenRequest(name="b", provider="ionq", secret=b"s2"), metadata=md)
    admin.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(id=first.id), secret=b"s1b"), metadata=md)
    admin.DeleteToken(org_pb2.DeleteTokenRequest(token=org_pb2.GetTokenRequest(id=second.id)), metadata=md)
    # The server polls its store for changes other processes made (erin was added by the CLI);
    # when that poll lands after the stream began, it sends the snapshot again, which is right
    # (the protocol resyncs from any snapshot) and may come between the changes: not counted.
    changes = lambda: [e for e in events[1:] if e.kind != org_pb2.WatchEvent.KIND_SNAPSHOT]
    wait_for(lambda: len(changes()) >= 3, "three pushed changes")
    kinds = [(e.kind, e.tokens[0].id) for e in changes()[:3]]
    assert kinds == [(org_pb2.WatchEvent.KIND_CREATED, second.id), (org_pb2.WatchEvent.KIND_UPDATED, first.id),
                     (org_pb2.WatchEvent.KIND_DELETED, second.id)]
    assert changes()[1].tokens[0].version == 2
    stream.cancel()


def test_init_refuses_to_overwrite(org):
    r = org.cli("init", "--org", "Again", "--admin", "mallory")
    assert r.returncode == 1 and "already holds an org server" in r.stderr


def test_a_second_server_on_a_taken_port_refuses_to_start_in_one_line(org, short_tmp):
    """grpc sets SO_REUSEPORT unless told not to: two servers (two data dirs, two orgs) would share a port and
    members' logins land on either at random. The second must exit, saying why in one line."""
    from testsupport.orgserver import OrgServer

    other = OrgServer(short_tmp / "other", org.ca, "Other Org")
    proc = other.spawn(port=org.port)
    wait_for(lambda: proc.poll() is not None, "the second org server to exit")
    assert proc.returncode == 1
    said = (f"qpu-broker: cannot listen on 127.0.0.1:{org.port}: Address already in use; another process listens "
            "on that port ('ss -ltnp' names it): stop it, or choose another port")
    assert other.log().splitlines() == [said]
    stub, md = org.stub(org.admin_code)  # the first still answers, alone on its port
    with pytest.raises(grpc.RpcError) as err:
        stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md, timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_handlers_are_wrapped_once_at_registration_not_on_every_call():
    """wire/registration.py (both servers): each method's handler goes through the wraps once, when
    it is registered (a grpc.aio interceptor would run on every call), the last wrap outermost, for
    handlers registered by name and for a generic handler's alike; every call runs the wrapped one."""
    import asyncio

    from qpu_broker.wire.registration import WrappedServer

    asked = []

    def tagging(tag: bytes):
        def wrap(handler, method):
            asked.append((tag, method))
            inner = handler.unary_unary

            async def unary(request, context):
                return tag + await inner(request, context)
            return grpc.unary_unary_rpc_method_handler(unary)
        return wrap

    async def echo(request, context):
        return request

    async def calls() -> list[bytes]:
        server = grpc.aio.server()
        wrapped = WrappedServer(server, tagging(b"inner-"), tagging(b"outer-"))
        wrapped.add_registered_method_handlers("t.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        wrapped.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Generic", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return [await channel.unary_unary(f"/t.{s}/Echo")(b"x") for s in ("Echo", "Generic") for _ in range(3)]
        finally:
            await server.stop(None)

    assert asyncio.run(calls()) == [b"outer-inner-x"] * 6
    assert asked == [(b"inner-", "/t.Echo/Echo"), (b"outer-", "/t.Echo/Echo"),  # at registration
                     (b"inner-", "/t.Generic/Echo"), (b"outer-", "/t.Generic/Echo")]  # at its first call, once


def test_health_and_reflection_answer_and_every_org_method_keeps_its_policy_and_auth(org):
    """With the policy and auth wrapped around each handler at start: the standard health check and reflection answer
    without an access token; an org method refuses a call without one, and a request that does not
    decode is INVALID_ARGUMENT naming its type (the policy's), as before."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub, _ = org.stub("")
    channel = grpc.secure_channel(org.address, grpc.ssl_channel_credentials(org.ca.ca_file.read_bytes()))
    try:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        listed = next(iter(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        assert "qpubroker.org.v1.OrgService" in [s.name for s in listed.list_services_response.service]
        with pytest.raises(grpc.RpcError) as err:
            stub.ListTokens(org_pb2.ListTokensRequest())
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        garbled = channel.unary_unary("/qpubroker.org.v1.OrgService/ListTokens")
        with pytest.raises(grpc.RpcError) as err:
            garbled(b"\xff\xff\xff", metadata=org.client(org.admin_code)[1])
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "ListTokens request is not a valid protobuf message" in err.value.details()
    finally:
        channel.close()
