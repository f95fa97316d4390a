"""Relayed calls multiplexed on one Relay stream (OrgService.Relay), as the member's daemon makes
them: each call on it is admitted, limited, recorded and answered as its unary twin would be, by
its id and in the order calls finish; a removed device's next call is refused on the stream it
has open; a call named again with `cancel` is abandoned; a server of the release before (no
Relay) gets the unary calls."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import queue
import re
import signal
import socket
import threading
import time

import grpc
import pytest
from conftest import wait_for
from qpu_broker.orgserver.access_tokens import AccessTokens
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from test_org_relay import _records_of

from testsupport.fakes import FakeServer, Reply, json_reply, make_ca

WITHIN = 2.0  # seconds: the bound for removal and access changes


class _Stream:
    """A member's own Relay stream (their gRPC client, no daemon): calls sent when the test says,
    answers read by a thread as they come."""

    def __init__(self, stub: org_pb2_grpc.OrgServiceStub, md, reading: bool = True) -> None:
        self._calls: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        self._stream = stub.Relay(iter(self._calls.get, None), metadata=md, timeout=60)
        self.ended: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        if reading:
            self.read()

    def read(self) -> None:
        """Answers are read from now on (until then, gRPC's flow control holds the server's writes)."""
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._stream:
                self.answers.put(answer)
        except grpc.RpcError as exc:
            self.ended = exc
        self.answers.put(None)

    def send(self, **call) -> None:
        self._calls.put(org_pb2.RelayCall(**call))

    def next(self) -> org_pb2.RelayResult | None:
        return self.answers.get(timeout=30)

    def close(self) -> list[org_pb2.RelayResult]:
        """Done sending: what is still answered, up to the stream's end."""
        self._calls.put(None)
        rest = []
        while (answer := self.next()) is not None:
            rest.append(answer)
        return rest


def _org_with_relay_token(org, provider_fake, provider: str = "ionq", name: str = "Org IonQ") -> str:
    seen = org.log().count("organization settings changed")
    r = org.cli("provider", "set", provider, "--host", provider_fake.netloc, "--ca-file", str(org.ca.ca_file))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: org.log().count("organization settings changed") > seen, "the server to read it")
    admin, md = org.admin_client()
    token = admin.CreateToken(org_pb2.CreateTokenRequest(name=name, provider=provider,
                                                         secret=b"canary-relay-key"), metadata=md)
    assert token.relay  # the default
    return token.id


class _Held:
    """An ionq fake whose /v0.3/slow waits until the test releases it; other paths answer at once."""

    def __init__(self, org) -> None:
        self.held, self.release = threading.Event(), threading.Event()
        self.fake = FakeServer(self._answer, org.ca)
        self._org = org

    def held_call(self, call_id: int) -> tuple[str, org_pb2_grpc.OrgServiceStub, list, _Stream]:
        """The org's relay token to this fake, and bob's own stream with call `call_id` held at it:
        (token id, bob's stub and metadata, the stream)."""
        token_id = _org_with_relay_token(self._org, self.fake)
        stub, md = self._org.client(self._org.add_user("bob"))
        stream = _Stream(stub, md)
        stream.send(id=call_id, forward=_forward(token_id, self.fake.url("/v0.3/slow")))
        assert self.held.wait(30), stream.ended
        return token_id, stub, md, stream

    def _answer(self, seen):
        if seen.path.startswith("/v0.3/slow"):
            self.held.set()
            self.release.wait(30)
        return json_reply({"path": seen.path, "auth": seen.header("Authorization")})

    def close(self) -> None:
        self.release.set()
        self.fake.close()


def _forward(token_id: str, url: str) -> org_pb2.RelayForwardRequest:
    return org_pb2.RelayForwardRequest(token_id=token_id, provider="ionq", method="GET", url=url)


def test_calls_on_one_stream_are_answered_by_id_as_they_finish_each_as_its_unary_twin(org):
    provider = _Held(org)
    fake, release = provider.fake, provider.release
    try:
        token_id, stub, md, stream = provider.held_call(7)
        stream.send(id=8, forward=_forward("0" * 24, fake.url("/v0.3/jobs")))  # no such token
        stream.send(id=9, forward=_forward(token_id, fake.url("/v0.3/jobs")))
        stream.send(id=10)  # nothing to do
        first = {a.id: a for a in (stream.next(), stream.next(), stream.next())}
        assert sorted(first) == [8, 9, 10]  # the held call does not hold the others back
        assert first[9].forward.status == 200 and b'"path": "/v0.3/jobs"' in first[9].forward.body
        # Its failures are its unary twin's status, word for word, with its mark.
        with pytest.raises(grpc.RpcError) as unary:
            stub.RelayForward(_forward("0" * 24, fake.url("/v0.3/jobs")), metadata=md)
        failure = first[8].failure
        assert (failure.code, "qpu-broker: " + failure.message) == (unary.value.code().value[0], unary.value.details())
        assert first[10].failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "a forward, a sign or a cancel" in first[10].failure.message
        release.set()
        [last] = stream.close()
        assert last.id == 7 and last.forward.status == 200
        assert stream.ended is None  # the stream ended OK once every call was answered
        for answer in (*first.values(), last):  # the secret is taken out of every answer
            assert b"canary-relay-key" not in answer.SerializeToString()
        assert b"[redacted by qpu-broker]" in last.forward.body
        assert "canary-relay-key" not in org.log()  # nor in the server's log (its calls, its failures)
        # Recorded as the unary calls are: one record a call that reached the provider.
        records = [r for r in _records_of(org) if r["member"] == "bob"]
        assert len(records) == 2 and {r["status"] for r in records} == {200}, records
        assert "Traceback" not in org.log()
    finally:
        provider.close()


def test_a_relay_secret_and_the_access_token_stay_out_of_a_debug_log(org):
    """The org server logs each relayed forward at debug (its usage record holds every one): with
    --log-level debug, that line and every other one still carry no secret and no access token,
    on the stream and unary, for an answer that echoes the auth header back."""
    org.stop()
    org.log_level = "debug"
    org.start()
    provider = _Held(org)
    try:
        token_id = _org_with_relay_token(org, provider.fake)
        stub, md = org.client(org.add_user("bob"))
        stream = _Stream(stub, md)
        stream.send(id=1, forward=_forward(token_id, provider.fake.url("/v0.3/jobs")))
        answers = [stream.next().forward, stub.RelayForward(_forward(token_id, provider.fake.url("/v0.3/jobs")),
                                                             metadata=md)]
        assert stream.close() == []
        for answer in answers:  # the fake echoed the secret back: taken out
            assert answer.status == 200 and b"canary-relay-key" not in answer.SerializeToString()
        log = org.log()
        assert log.count(f"-> 200 (organization token {token_id})") == 2, log  # the debug line, each call
        assert "canary-relay-key" not in log and "qbt_" not in log and md[0][1].split()[-1] not in log
    finally:
        provider.close()


def test_a_removed_device_and_a_token_out_of_reach_are_refused_on_the_open_stream(org):
    fake = FakeServer(lambda seen: json_reply({"ok": True}), org.ca)
    try:
        token_id = _org_with_relay_token(org, fake)
        device = org.enroll(org.add_user("bob"))
        stub, _ = org.stub("")
        request = _forward(token_id, fake.url("/v0.3/jobs"))
        # A stream opened with an aged access token is refused as a call would be, saying so: the
        # daemon gets a new token and asks again (nothing ran).
        server_key = base64.urlsafe_b64decode((org.data / "server.key").read_bytes().strip())
        aged = AccessTokens(server_key, ("localhost",)).mint(device.id, int(time.time() * 1e6) - 1, "localhost")
        stream = _Stream(stub, [("authorization", f"Bearer {aged}")])
        stream.send(id=1, forward=request)
        assert stream.next() is None and stream.ended.code() is grpc.StatusCode.UNAUTHENTICATED
        assert ("qpu-broker-error", "access-expired") in stream.ended.trailing_metadata()

        stream = _Stream(stub, [("authorization", f"Bearer {device.access_token(stub)}")])
        stream.send(id=1, forward=request)
        assert stream.next().forward.status == 200

        # Limited to a group bob is not in: his next call on the same stream is NOT_FOUND, as a
        # missing token; in the group again, it works, on the same stream.
        assert org.cli("group", "add", "physics").returncode == 0
        assert org.cli("token", "set-access", "Org IonQ", "--group", "physics").returncode == 0
        stream.send(id=2, forward=request)
        assert stream.next().failure.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert org.cli("group", "add-member", "physics", "bob").returncode == 0
        stream.send(id=3, forward=request)
        assert stream.next().forward.status == 200

        # The device removed: its very next call is refused, saying so, on the stream it has open.
        admin, amd = org.admin_client()
        admin.RemoveDevice(org_pb2.RemoveDeviceRequest(id=device.id), metadata=amd)
        removed_at = time.monotonic()
        stream.send(id=4, forward=request)
        refused = stream.next()
        assert time.monotonic() - removed_at < WITHIN
        assert refused.failure.code == grpc.StatusCode.UNAUTHENTICATED.value[0], refused
        assert refused.failure.mark == "device-removed", refused
        stream.close()
        assert len(fake.seen) == 2  # the refused calls never reached the provider
    finally:
        fake.close()


def test_a_cancelled_call_is_abandoned_and_a_repeated_id_ends_the_stream(org):
    provider = _Held(org)
    fake, held, release = provider.fake, provider.held, provider.release
    try:
        token_id, stub, md, stream = provider.held_call(1)
        stream.send(id=1, cancel=True)
        stream.send(id=2, forward=_forward(token_id, fake.url("/v0.3/jobs")))
        assert stream.next().id == 2
        release.set()
        assert stream.close() == []  # no answer for the abandoned call
        # Its record stays, finished as a call whose caller went away (a unary call cancelled alike).
        wait_for(lambda: [r["outcome"] for r in _records_of(org) if r["status"] != 200] == ["failed"],
                 "the abandoned call's record to say it failed")

        # Two calls in flight under one id: whose answer would be whose? The stream ends, saying why.
        held.clear()
        release.clear()
        stream = _Stream(stub, md)
        stream.send(id=5, forward=_forward(token_id, fake.url("/v0.3/slow")))
        assert held.wait(30), stream.ended
        stream.send(id=5, forward=_forward(token_id, fake.url("/v0.3/jobs")))
        assert stream.next() is None
        assert stream.ended.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "in flight already" in stream.ended.details()
        release.set()
        assert "Traceback" not in org.log()
        org.stop()  # its rpc summary, written at stop: the abandoned calls counted as such, not OK
        assert re.search(r"OrgService/RelayForward CANCELLED x2\b", org.log()), org.log()
    finally:
        provider.close()


def test_a_server_stopping_answers_the_calls_in_flight_then_ends_the_stream_without_waiting_its_grace(org):
    """SIGTERM: the call in flight is answered, then the stream ends UNAVAILABLE saying why, and the
    server stops; before, every daemon's open stream held the stop for the whole grace (5 s) and
    took new calls meanwhile, cut off at its end."""
    provider = _Held(org)
    release = provider.release
    try:
        token_id, stub, md, stream = provider.held_call(1)
        idle = _Stream(stub, md)  # a stream with nothing in flight
        idle.send(id=1, sign=org_pb2.RelaySignRequest(token_id=token_id))  # open for sure: answered (refused)
        assert idle.next().failure.code
        org.proc.send_signal(signal.SIGTERM)
        release.set()
        answer = stream.next()
        assert answer.id == 1 and answer.forward.status == 200, answer
        assert stream.next() is None and idle.next() is None
        for ended in (stream.ended, idle.ended):
            assert ended.code() is grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.details(), ended
        stopping = time.monotonic()
        org.proc.wait(timeout=30)
        assert time.monotonic() - stopping < 4.0  # not the grace's 5 s
        assert re.search(r"\bRelay UNAVAILABLE x2\b", org.log()), org.log()
        assert "Traceback" not in org.log()
        # The answered call's record was finished after its answer went, and before the server stopped.
        assert [(r["status"], r["outcome"]) for r in _records_of(org)] == [(200, "answered")]
    finally:
        provider.close()


@pytest.mark.parametrize("reply, refused", [
    (Reply(200, b'{"id": "p1", "pad": "' + b"a" * (16 << 20) + b'"}'), "more than"),
    (Reply(200, gzip.compress(b'{"id": "p1"}'), [("Content-Encoding", "gzip")]), "compressed its answer")],
    ids=["over 16 MiB", "compressed"])
def test_a_dwave_answer_the_hop_refuses_still_finishes_its_record(org, reply, refused):
    """A relayed D-Wave answer's record is finished as its body closes (it is read for its QPU
    time: forwarder._timed); the hop refuses one over 16 MiB half read, and a compressed one (which
    a provider may send to a request without Accept-Encoding) unread. The first's body was left to
    the garbage collector, to be closed some time later outside the call (while the finish came
    after the answer, it then failed: LookupError, a traceback); the second's never ran: either
    record was left begun, `interrupted`."""
    fake = FakeServer(lambda seen: reply, org.ca)
    try:
        token_id = _org_with_relay_token(org, fake, "dwave", "Org D-Wave")
        stream = _Stream(*org.client(org.add_user("bob")))
        stream.send(id=1, forward=org_pb2.RelayForwardRequest(
            token_id=token_id, provider="dwave", method="GET", url=fake.url("/sapi/v2/problems/p1/answer/")))
        answer = stream.next()
        assert answer.failure.code == grpc.StatusCode.UNAVAILABLE.value[0] and refused in answer.failure.message
        assert stream.close() == []
        org.stop()  # a graceful stop: every finish committed first
        assert [(r["status"], r["outcome"]) for r in _records_of(org)] == [(200, "answered")]
        assert "Traceback" not in org.log()
    finally:
        fake.close()


class _Counting:
    """A loopback TCP hop to the org server counting the bytes that come back: how far the
    server's answers have gone out (TLS passes through it as it is)."""

    def __init__(self, port: int) -> None:
        self.back = 0
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self._port))
                threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
                threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, back: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                if back:
                    self.back += len(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def test_a_call_cancelled_while_its_answer_is_being_written_leaves_the_other_calls_answered(org):
    """A cancel that comes while the call's answer is being written (the daemon's caller gave up
    just then) must not cancel the write: grpc.aio leaves a cancelled write pending, and every
    later answer on the stream was lost (its caller waited out its timeout, its job submitted)."""
    big = b'{"data": "' + b"a" * (4 << 20) + b'"}'
    fake = FakeServer(lambda seen: Reply(200, big) if seen.path.endswith("/big") else json_reply({"ok": True}), org.ca)
    hop = _Counting(org.port)
    try:
        token_id = _org_with_relay_token(org, fake)
        device = org.enroll(org.add_user("bob"))
        # No BDP probing: the stream's window stays 64 KiB, so a big answer's write waits for the reader.
        channel = grpc.secure_channel(hop.address, grpc.ssl_channel_credentials(org.ca.ca_file.read_bytes()), options=[
            ("grpc.ssl_target_name_override", "localhost"), ("grpc.http2.bdp_probe", 0),
            ("grpc.max_receive_message_length", 32 << 20)])
        stub = org_pb2_grpc.OrgServiceStub(channel)
        md = [("authorization", f"Bearer {device.access_token(stub)}")]
        stream = _Stream(stub, md, reading=False)
        before = hop.back
        stream.send(id=1, forward=_forward(token_id, fake.url("/v0.3/big")))
        wait_for(lambda: hop.back - before > 32 << 10, "the big answer's write to begin")  # and wait for the reader
        stream.send(id=1, cancel=True)
        stream.send(id=2, forward=_forward(token_id, fake.url("/v0.3/jobs")))
        wait_for(lambda: len(_records_of(org)) == 2, "the second call to reach the provider")
        stream.read()
        answers = {a.id: a for a in stream.close()}
        assert 2 in answers and answers[2].forward.status == 200, sorted(answers)
        assert stream.ended is None
        assert "Traceback" not in org.log()
    finally:
        hop.close()
        fake.close()


def test_the_daemon_relays_on_a_stream_that_outlives_an_org_server_restart(member_rig):
    rig = member_rig
    rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization")
    wait_for(lambda: "Org IonQ" in rig.member.broker().org_status().relay_tokens, "the member's daemon")
    assert rig.forward(rig.member).status_code == 200
    port = int(rig.server.address.rpartition(":")[2])
    rig.server.stop()
    # The call went on the daemon's Relay stream (its rpc summary, written at stop, names it).
    assert re.search(r"\bRelay [A-Z_]+ x1\b", rig.server.log()), rig.server.log()
    rig.server.start(port)

    def relayed() -> bool:
        try:
            return rig.forward(rig.member).status_code == 200
        except Exception:  # noqa: BLE001 - UNAVAILABLE while the daemon's channel reconnects
            return False

    wait_for(relayed, "a relayed call through the daemon after the restart")
    assert [rig.forward(rig.member).status_code for _ in range(5)] == [200] * 5
    assert rig.secret not in rig.member.log() + rig.server.log()
    assert "Traceback" not in rig.member.log() + rig.server.log()


async def _client_of(handlers: dict, ca, calls):
    """The daemon's OrgClient against a real gRPC server (TLS, in this process) of `handlers` only,
    logged in as a device with a fresh access token; `calls(client)` is what it does."""
    from qpu_broker.keys import device_key
    from qpu_broker.org.records import Enrolled, Member
    from qpu_broker.tokens.org_login import OrgLogin
    from qpu_broker.wire.org_link import OrgClient
    from qpu_broker_client.secret import Secret

    async with _serving(handlers, ca) as port:
        client = OrgClient()
        try:
            login = OrgLogin((f"localhost:{port}",), "login", ca.ca_file.read_bytes(), "dev1",
                             Secret(device_key.new_private_key()), "store1")
            client.connect(login, 0, Enrolled(0, login, Member("Acme", "bob", "member"), "qbt_first",
                                               int((time.time() + 600) * 1e6)))
            return await calls(client)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def _serving(handlers: dict, ca):
    """A real gRPC server (TLS, in this process) of OrgService's `handlers` only: its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("qpubroker.org.v1.OrgService", handlers),))
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials(
        [(ca.key_file.read_bytes(), ca.cert_file.read_bytes())]))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


def _sign_request():
    from qpu_broker.org.records import RelayHeaders, RelaySign

    return RelaySign(RelayHeaders("t1", "aws", "GET", "https://braket.us-east-1.amazonaws.com/x", (), "", ""),
                     "e3b0c442", 0)


_SIGNED = org_pb2.RelaySignResponse(headers=[org_pb2.RelayHeader(name="Authorization", value="signed")])


def test_a_server_of_the_release_before_gets_the_unary_relayed_calls(tmp_path):
    """A server with no Relay method (the release before) answers UNIMPLEMENTED on the stream: the
    daemon's client makes the unary call instead, for that call and those after (real gRPC over
    TLS; the server is the old one's method, in this process)."""
    asked: list[str] = []

    async def relay_sign(request, context):
        asked.append("RelaySign")
        return _SIGNED

    handlers = {"RelaySign": grpc.unary_unary_rpc_method_handler(
        relay_sign, org_pb2.RelaySignRequest.FromString, org_pb2.RelaySignResponse.SerializeToString)}

    async def calls(client):
        return [await client.relay_sign(_sign_request()) for _ in range(3)]

    answers = asyncio.run(_client_of(handlers, make_ca(tmp_path / "ca"), calls))
    assert answers == [[("Authorization", "signed")]] * 3
    assert asked == ["RelaySign"] * 3


def test_a_stream_refused_for_an_aged_access_token_is_opened_again_with_a_new_one(tmp_path):
    """The server's clock ahead of ours: the stream's token is refused as expired; the client gets
    a new one (DeviceToken) and asks again on a new stream, once (nothing ran)."""
    seen: list[str] = []

    async def device_token(request, context):
        seen.append("DeviceToken")
        reply = org_pb2.DeviceTokenResponse(access_token="qbt_second")
        reply.access_expires.FromSeconds(int(time.time()) + 600)
        return reply

    async def relay(requests, context):
        bearer = dict(context.invocation_metadata())["authorization"]
        seen.append(bearer)
        if bearer == "Bearer qbt_first":
            context.set_trailing_metadata((("qpu-broker-error", "access-expired"),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "qpu-broker: the access token expired")
        async for call in requests:
            yield org_pb2.RelayResult(id=call.id, sign=_SIGNED)

    handlers = {
        "DeviceToken": grpc.unary_unary_rpc_method_handler(
            device_token, org_pb2.DeviceTokenRequest.FromString, org_pb2.DeviceTokenResponse.SerializeToString),
        "Relay": grpc.stream_stream_rpc_method_handler(
            relay, org_pb2.RelayCall.FromString, org_pb2.RelayResult.SerializeToString)}

    async def calls(client):
        return [await client.relay_sign(_sign_request()) for _ in range(3)]

    answers = asyncio.run(_client_of(handlers, make_ca(tmp_path / "ca"), calls))
    assert answers == [[("Authorization", "signed")]] * 3
    assert seen == ["Bearer qbt_first", "DeviceToken", "Bearer qbt_second"]  # one stream for the three after


def test_a_user_holds_at_most_16_relay_streams_on_a_server(org):
    """Each open stream may hold calls and their answers: one user's are bounded as their push and
    follow streams are (one per daemon), and a stream closed gives its place back."""
    from qpu_broker.orgserver.streams import STREAMS_PER_USER

    stub, md = org.client(org.add_user("bob"))
    streams = [_Stream(stub, md) for _ in range(STREAMS_PER_USER)]
    over = _Stream(stub, md)
    assert over.next() is None and over.ended.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"'bob' has {STREAMS_PER_USER} relay streams open" in over.ended.details()
    other, other_md = org.admin_client()  # another user's are their own
    assert _Stream(other, other_md).close() == []
    assert streams.pop().close() == []
    assert wait_for(lambda: _opens(stub, md), "a place given back to bob")
    for stream in streams:
        stream.close()


def _opens(stub, md) -> bool:
    """Whether a new stream of this user's is taken (its first call answered, whatever the answer)."""
    stream = _Stream(stub, md)
    stream.send(id=1, sign=org_pb2.RelaySignRequest(token_id="0" * 24))
    answer = stream.next()
    stream.close()
    return answer is not None


def test_a_retired_stream_to_a_hung_server_is_cancelled_not_kept(tmp_path):
    """A stream retired (a new access token, a switch) that the server never ends, though its calls
    are answered and the client is done sending, is cancelled after a while: not kept, with its
    reader, until the channel closes."""
    from qpu_broker.wire.org_relay import RelayStream

    ca = make_ca(tmp_path / "ca")

    async def main() -> bool:
        ended = asyncio.Event()

        async def relay(requests, context):  # answers, then never ends the stream
            try:
                async for call in requests:
                    yield org_pb2.RelayResult(id=call.id, sign=_SIGNED)
                await asyncio.Event().wait()
            finally:
                ended.set()

        handlers = {"Relay": grpc.stream_stream_rpc_method_handler(
            relay, org_pb2.RelayCall.FromString, org_pb2.RelayResult.SerializeToString)}
        async with _serving(handlers, ca) as port, grpc.aio.secure_channel(
                f"localhost:{port}", grpc.ssl_channel_credentials(ca.ca_file.read_bytes())) as channel:
            stream = RelayStream(org_pb2_grpc.OrgServiceStub(channel).Relay(), 0, (), lambda exc: exc, close_wait=0.2)
            assert await stream.ask("sign", org_pb2.RelaySignRequest(), 10) == _SIGNED
            stream.retire()
            await asyncio.wait_for(ended.wait(), 10)
            return not stream.open

    assert asyncio.run(main())
