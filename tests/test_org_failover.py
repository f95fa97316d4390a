"""A member's daemon logged in to several org servers fails over between them.

Two real org servers, replicas of one org: the second has a copy of the first's data dir (the
same server key) and serves the first's SQLite store (`--database sqlite:…`), so a device
enrolled at one is known to both, as with replicas on one PostgreSQL database. One pair
serves every check here, in order."""

from __future__ import annotations

import json
import pathlib
import secrets
import shutil
import signal
import tempfile
import threading
import time

import pytest
from conftest import Daemon, wait_for
from qpu_broker.common.org_servers import login_id, parse_servers
from qpu_broker_client import InvalidArgumentError, QpuTokenType
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.orgserver import ORG, OrgServer, store_login_of_release_before

FAILOVER_WITHIN = 5.0  # seconds from a replica's death to the member connected to the other


class Pair:
    def __init__(self, root: pathlib.Path) -> None:
        self.ca = make_ca(root / "ca")
        self.secret = f"canary-org-{secrets.token_hex(8)}"
        self.fake = FakeServer(header_check("Authorization", lambda: "apiKey " + self.secret), self.ca)
        self.a = OrgServer(root / "a", self.ca).start()
        r = self.a.cli("provider", "set", "ionq", "--host", self.fake.netloc, "--ca-file", str(self.ca.ca_file))
        assert r.returncode == 0, r.stderr
        self.a.add_user("bob")
        stub, md = self.a.client(self.a.admin_code)
        # Cached: its secret and records stay with the member's daemon across the switch.
        stub.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=self.secret.encode(),
                                                    cached=True), metadata=md, timeout=10)
        assert self.a.stop() == 0
        self.b = OrgServer(root / "b", self.ca, copy_of=self.a)
        self.b.database = f"sqlite:{self.a.data / 'store' / 'org.db'}"
        self.a.start(self.a.port)
        self.b.start()
        self.member = Daemon(root / "member")
        self.member.home.mkdir(mode=0o700, parents=True)
        (self.member.home / "config.toml").write_text("[org]\ngrace_seconds = 900\n")
        self.member.start()

    @staticmethod
    def up(server: OrgServer) -> None:
        if server.proc.poll() is not None:
            server.start(server.port)

    @staticmethod
    def down(server: OrgServer) -> None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()

    def login(self, *servers: str) -> None:
        argv = ["org", "login", *(x for s in servers for x in ("--server", s)), "--ca", str(self.ca.ca_file)]
        r = self.member.cli(*argv, input=self.a.code_for("bob") + "\n")  # each login enrolls a device
        assert r.returncode == 0, r.stderr
        wait_for(lambda: self.status().state == "connected", "the org push stream")

    def status(self):
        return self.member.broker().org_status()

    def forward(self) -> int:
        return self.member.broker().forward("GET", self.fake.url("/v0.3/jobs"), provider="ionq",
                                            qpu_tokens=ORG).status_code

    def records(self, server: OrgServer) -> list[dict]:
        r = server.cli("usage", "--json", "--member", "bob")
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def close(self) -> None:
        for proc in (self.member.proc, self.a.proc, self.b.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self.fake.close()


@pytest.fixture(scope="module")
def pair():
    root = pathlib.Path(tempfile.mkdtemp(prefix="qb-fo-", dir="/tmp"))
    made = Pair(root)
    yield made
    made.close()
    shutil.rmtree(root, ignore_errors=True)


def test_bad_server_values_are_one_line_errors_before_the_code_is_asked(pair):
    for bad, says in (("nope", "'nope' has no port"), ("host:http", "'host:http' is not HOST:PORT"),
                      (f"{pair.a.address},{pair.b.address}", "give each server its own --server")):
        r = pair.member.cli("org", "login", "--server", pair.a.address, "--server", bad)
        assert r.returncode == 1 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "enrollment code" not in r.stderr + r.stdout
    with pytest.raises(InvalidArgumentError, match="'nope' has no port"):
        pair.member.broker().org_login([pair.a.address, "nope"], "qbe_" + "0" * 16 + "_" + "A" * 43)
    assert pair.status().state == "not-logged-in"


def test_kill_the_connected_server_and_the_other_takes_over_losing_nothing(pair):
    pair.up(pair.a)
    pair.up(pair.b)
    pair.login(pair.a.address, pair.b.address)
    s = pair.status()
    assert (s.state, s.server, s.servers) == ("connected", pair.a.address, (pair.a.address, pair.b.address))
    text = pair.member.cli("org", "status").stdout
    assert f"servers: {pair.a.address} (connected), {pair.b.address}\n" in text, text
    handle = pair.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION][0].id

    # Forward all along, from before the kill until well after the other server took over.
    results: list[object] = []
    stop = threading.Event()

    def use() -> None:
        while not stop.is_set():
            try:
                results.append(pair.forward())
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                results.append(exc)

    user = threading.Thread(target=use, daemon=True)
    user.start()
    wait_for(lambda: len(results) >= 5, "uses before the kill")
    pair.down(pair.a)
    killed = time.monotonic()
    wait_for(lambda: pair.status().server == pair.b.address and pair.status().state == "connected",
             "the member connected to the other server", timeout=FAILOVER_WITHIN)
    took = time.monotonic() - killed
    after = len(results)
    wait_for(lambda: len(results) >= after + 5, "uses after the switch")
    stop.set()
    user.join(timeout=30)
    assert [r for r in results if r != 200] == [] and took < FAILOVER_WITHIN

    s = pair.status()
    assert s.servers == (pair.a.address, pair.b.address) and s.tokens == 1 and s.seconds_since_contact < FAILOVER_WITHIN
    text = pair.member.cli("org", "status", "--json").stdout
    assert json.loads(text)["servers"] == [pair.a.address, pair.b.address] and json.loads(text)["server"] == pair.b.address
    # The same token, under the same handle: the replicas share its id.
    assert [t.id for t in pair.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]] == [handle]
    # Every use was recorded, on one server or the other, none lost.
    wait_for(lambda: pair.status().usage_waiting == 0, "the member's queue to be empty")
    ids = {r["id"] for r in pair.records(pair.a) + pair.records(pair.b)}
    assert len(ids) == len(results)


def test_a_restarted_daemon_keeps_the_list_and_fails_over_at_start(pair):
    pair.up(pair.b)
    pair.login(pair.a.address, pair.b.address)
    if pair.a.proc.poll() is None:
        pair.down(pair.a)
    assert pair.member.stop() == 0
    pair.member.start()
    wait_for(lambda: pair.status().state == "connected", "the member to connect", timeout=FAILOVER_WITHIN)
    s = pair.status()
    assert s.servers == (pair.a.address, pair.b.address) and s.server == pair.b.address  # the first is still dead
    assert pair.forward() == 200


def test_an_old_single_server_login_keeps_its_records_across_an_upgrade_and_a_new_list(pair):
    if pair.a.proc.poll() is None:
        pair.down(pair.a)
    pair.up(pair.b)
    assert pair.member.stop() == 0
    # The release before kept an API key; a code is redeemed the same way (test_org_devices has a real old key).
    store_login_of_release_before(pair.member, pair.b.address, pair.ca.ca_file.read_bytes(), pair.a.code_for("bob"))
    pair.member.start()
    wait_for(lambda: pair.status().state == "connected", "the old login to connect")
    assert (pair.status().server, pair.status().servers) == (pair.b.address, (pair.b.address,))
    assert pair.forward() == 200
    wait_for(lambda: pair.status().usage_waiting == 0, "the use to be sent")
    # Uses while the only server is down wait on disk, under the old login's id (its server).
    assert pair.b.stop() == 0
    wait_for(lambda: pair.status().state == "disconnected", "the member to notice")
    for _ in range(3):
        assert pair.forward() == 200
    assert pair.status().usage_waiting == 3
    before = len(pair.records(pair.a))
    # Log in again with a new list: the other server first, spelt so that it sorts first too.
    pair.up(pair.a)
    first = f"127.0.0.1:{pair.a.port}"
    pair.login(first, pair.b.address)
    assert pair.status().server == first
    wait_for(lambda: pair.status().usage_waiting == 0, "the records queued under the old login to be sent")
    assert len(pair.records(pair.a)) == before + 3


def test_a_frozen_server_is_left_for_the_other_once_its_silence_is_noticed(pair):
    """SIGSTOP sends no FIN: the stream goes silent, and that is noticed (after one missed
    heartbeat, with a grace this short) and failed over like a broken one."""
    pair.up(pair.a)
    pair.up(pair.b)
    config = pair.member.home / "config.toml"
    config.write_text("[org]\ngrace_seconds = 6\n")
    assert pair.member.cli("reload").returncode == 0
    pair.login(pair.a.address, pair.b.address)  # its stream's silence limit is the short grace's from the start
    pair.a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: pair.status().server == pair.b.address and pair.status().state == "connected",
                 "the member to leave the frozen server", timeout=15)
        assert pair.forward() == 200
    finally:
        pair.a.proc.send_signal(signal.SIGCONT)
        config.write_text("[org]\ngrace_seconds = 900\n")
        assert pair.member.cli("reload").returncode == 0


@pytest.mark.parametrize(("entries", "servers"), [
    (["a:1"], ("a:1",)),
    ([" a:1", "b:2", "a:1"], ("a:1", "b:2")),
    (["[::1]:7443", "10.0.0.7:7443"], ("[::1]:7443", "10.0.0.7:7443")),
])
def test_server_lists_are_checked_and_kept_in_order(entries, servers):
    assert parse_servers(entries) == servers


@pytest.mark.parametrize("entries", [[], ["a"], ["a:"], ["a:0"], ["a:99999"], ["a:1/x"], ["http://a:1"]])
def test_bad_server_lists_name_the_problem(entries):
    with pytest.raises(InvalidArgumentError, match="org server"):
        parse_servers(entries)


def test_a_login_id_is_its_server_alone_and_survives_a_new_list_that_keeps_it():
    assert login_id(("b:1",)) == "b:1"  # what a login to one server was keyed by before lists
    assert login_id(("b:1", "a:1")) == login_id(("a:1", "b:1")) == "a:1"
    assert login_id(("a:1", "b:1", "c:1"), previous="b:1") == "b:1"
    assert login_id(("a:1", "c:1"), previous="b:1") == "a:1"


def test_a_listed_server_of_another_org_is_not_failed_over_to(pair):
    """Every server in the list must answer for the same org: a look-alike (here, at the second
    server's address, a copy of its data and store whose org is named otherwise: the same key, the
    same CA, the same devices) is refused, and the daemon keeps its tokens."""
    import sqlite3

    pair.up(pair.a)
    pair.up(pair.b)
    pair.login(pair.a.address, pair.b.address)
    pair.down(pair.b)
    other = OrgServer(pair.a.root.parent / "other", pair.ca, copy_of=pair.b)
    shared, copied = sqlite3.connect(pair.a.data / "store" / "org.db"), sqlite3.connect(other.data / "store" / "org.db")
    shared.backup(copied)  # the store as it is now: bob's device is in it
    shared.close()
    copied.execute("UPDATE meta SET value = 'Look-alike' WHERE key = 'org'")
    copied.commit()
    copied.close()
    other.start(pair.b.port)
    try:
        assert pair.status().org == "Acme"
        pair.down(pair.a)
        wait_for(lambda: "answers for 'Look-alike'" in pair.status().detail, "the look-alike to be refused",
                 timeout=FAILOVER_WITHIN)
        assert pair.status().state != "connected" and pair.forward() == 200  # cached tokens, within grace
        pair.up(pair.a)
        wait_for(lambda: pair.status().state == "connected" and pair.status().server == pair.a.address,
                 "the member back on its own org's server", timeout=FAILOVER_WITHIN * 2)
    finally:
        other.stop()


def test_a_listed_server_of_another_name_collects_nothing_the_org_takes(pair, tmp_path):
    """A look-alike in the member's list (a certificate from the org's CA, for another name; it
    answers as the org would, and says 'expired' to get fresh signed requests): the daemon sends it
    no token made for the org's server, and what it signs for the look-alike is refused at the org."""
    import concurrent.futures

    import grpc
    from qpu_broker_client.error_mapping import ERROR_MARK_KEY
    from qpu_broker_client.errors import ACCESS_EXPIRED_MARK
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2_grpc

    from testsupport.fakes import issue_cert

    bearers, requests = [], []

    class LookAlike(org_pb2_grpc.OrgServiceServicer):
        def DeviceToken(self, request, context):
            requests.append(request)
            reply = org_pb2.DeviceTokenResponse(access_token=f"lookalike-{len(requests)}")
            reply.access_expires.FromMicroseconds(int((time.time() + 600) * 1e6))
            return reply

        def _collect(self, context):
            bearers.extend(v.removeprefix("Bearer ") for k, v in context.invocation_metadata() if k == "authorization")
            context.set_trailing_metadata(((ERROR_MARK_KEY, ACCESS_EXPIRED_MARK),))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "qpu-broker: the access token expired")

        def WhoAmI(self, request, context):
            self._collect(context)

        def Watch(self, request, context):
            self._collect(context)

    issue_cert(pair.ca, tmp_path / "lookalike.pem", tmp_path / "lookalike.key", ("127.0.0.2",))
    fake = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    org_pb2_grpc.add_OrgServiceServicer_to_server(LookAlike(), fake)
    creds = grpc.ssl_server_credentials([((tmp_path / "lookalike.key").read_bytes(), (tmp_path / "lookalike.pem").read_bytes())])
    port = fake.add_secure_port("127.0.0.2:0", creds)
    fake.start()
    try:
        pair.up(pair.a)
        pair.login(pair.a.address, f"127.0.0.2:{port}")
        pair.down(pair.a)
        wait_for(lambda: len(requests) >= 2, "the daemon to ask the look-alike", timeout=FAILOVER_WITHIN * 2)
        pair.up(pair.a)
        stub, _ = pair.a.stub("")
        for bearer in bearers:  # only what the look-alike made itself: nothing the org made
            s, md = pair.a.stub(bearer)
            with pytest.raises(grpc.RpcError) as caught:
                s.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md)
            assert caught.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
        for request in requests:
            assert request.audience == "127.0.0.2"
            with pytest.raises(grpc.RpcError) as caught:
                stub.DeviceToken(request)
            assert caught.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert any(r.code() is grpc.StatusCode.UNAUTHENTICATED and "not a name of this org server" in r.details()
                   for r in [_refusal(stub.DeviceToken, requests[-1])])
    finally:
        fake.stop(0)
    wait_for(lambda: pair.status().state == "connected" and pair.status().server == pair.a.address,
             "the member back on its own org's server", timeout=FAILOVER_WITHIN * 3)


def _refusal(call, request):
    """The refusal of `call` once its peer's back-off (from the failures just before) has passed."""
    import grpc

    def checked():
        try:
            call(request)
        except grpc.RpcError as exc:
            return None if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else exc
        raise AssertionError("taken")

    return wait_for(checked, "the back-off to pass", timeout=15)
