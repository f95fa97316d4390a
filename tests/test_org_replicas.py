"""Org-server replicas on one PostgreSQL database: a change made through either reaches the
members connected to both within 2 s, a member resumes on the other replica from the last
revision it saw (only what it missed, never a snapshot when the changes can be told), quotas
hold across replicas, and snapshots come in pages however many tokens the org has.

Everything is real: a PostgreSQL server (initdb/pg_ctl in a temp dir), two `org-server
serve` processes with TLS, members' daemons, an HTTPS fake provider.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from conftest import wait_for
from qpu_broker_client import (
    QpuBrokerError,
    QpuToken,
    QpuTokenType,
    ResourceExhaustedError,
    TokenProvider,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.orgserver import ORG, Device, OrgServer, reserve_tries

WITHIN = 2.0  # the contract: a change through any replica reaches every member within 2 s
SNAPSHOT = org_pb2.WatchEvent.KIND_SNAPSHOT


class Replicas:
    def __init__(self, make_daemon, root, database: str, postgres) -> None:
        self._postgres = postgres
        self.database = database
        self.ca = make_ca(root / "ca")
        self.secret = f"canary-org-{secrets.token_hex(8)}"
        self.fake = FakeServer(header_check("Authorization", lambda: "apiKey " + self.secret), self.ca)
        self.one = OrgServer(root, self.ca, "Acme", "--database", database).start()
        self.two = self.one.replica("replica-two").start()
        r = self.one.cli("provider", "set", "ionq", "--host", self.fake.netloc, "--ca-file", str(self.ca.ca_file))
        assert r.returncode == 0, r.stderr
        bob_code, carol_code = self.one.add_users(["bob", "carol"])
        self.codes = {"bob": bob_code, "carol": carol_code, "admin": self.one.admin_code}  # their daemons' logins
        self._devices: dict[str, Device] = {}
        self._make_daemon = make_daemon

    # Daemons start when a test first uses them: a test of the servers alone pays for none.
    @functools.cached_property
    def admin(self):
        return self.member("admin", [self.one.address])

    @functools.cached_property
    def bob(self):
        return self.member("bob", [self.one.address])

    @functools.cached_property
    def carol(self):
        return self.member("carol", [self.two.address])

    def member(self, name: str, servers: list[str], home: str = ""):
        d = self._make_daemon(home or name).start()
        d.broker().org_login(servers, self.codes[name], ca_pem=self.ca.ca_file.read_bytes())
        wait_for(lambda: d.broker().org_status().state == "connected", "the org push stream")
        return d

    def device(self, name: str) -> Device:
        return self._devices[name]

    def client(self, server: OrgServer, name: str):
        """`name`'s own gRPC client on `server`: one device of theirs, enrolled once through whichever
        replica first asked (the replicas share it), with an access token got from `server`."""
        if name not in self._devices:
            self._devices[name] = server.enroll(server.code_for(name))
        stub, _ = server.stub("")
        return stub, [("authorization", f"Bearer {self._devices[name].access_token(stub)}")]

    def postgres_log(self) -> str:
        return self._postgres.log.read_text()

    def forward(self, d):
        return d.broker().forward("GET", self.fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=ORG)

    def forward_named(self, d, name: str):
        return d.broker().forward("GET", self.fake.url("/v0.3/jobs"), provider="ionq",
                                  qpu_tokens=TokenProvider(ionq=QpuToken("organization", name=name)))

    def close(self) -> None:
        for server in (self.one, self.two):
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
        self.fake.close()


@pytest.fixture
def replicas(make_daemon, short_tmp, postgres):
    rig = Replicas(make_daemon, short_tmp, postgres.create_database(f"org_{short_tmp.name.replace('-', '_')}"), postgres)
    yield rig
    rig.close()


def _holds(d, name: str) -> bool:
    return any(t.name == name for t in d.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION])


def _watch(r: Replicas, server: OrgServer, name: str, request: org_pb2.WatchRequest) -> list[org_pb2.WatchEvent]:
    """The events of one Watch up to the end of its snapshot or catch-up (a raw stub, as any language's)."""
    stub, md = r.client(server, name)
    call = stub.Watch(request, metadata=md)
    got = []
    for event in call:
        got.append(event)
        if event.kind == org_pb2.WatchEvent.KIND_CAUGHT_UP or (event.kind == SNAPSHOT and not event.more):
            break
    call.cancel()
    return got


def test_a_change_through_either_replica_reaches_members_on_both_within_2s(replicas):
    r = replicas
    r.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=r.secret, token_type="organization")
    for member in (r.bob, r.carol):  # bob is on the replica the admin used, carol on the other
        wait_for(lambda m=member: _holds(m, "Org IonQ"), "the new org token on both replicas", timeout=WITHIN)
        assert r.forward(member).status_code == 200
    _no_secret_in_the_database(r)
    # An admin's CLI on the database is a third writer: both replicas push its change too.
    out = r.one.cli("token", "relay", "Org IonQ", "on")
    assert out.returncode == 0, out.stderr
    for member in (r.bob, r.carol):
        wait_for(lambda m=member: "Org IonQ" in m.broker().org_status().relay_tokens, "the relay flag", timeout=WITHIN)
    out = r.one.cli("user", "rm", "carol")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: r.carol.broker().org_status().state == "removed", "carol's daemon (on replica two) to be told",
             timeout=WITHIN)
    assert r.bob.broker().org_status().state == "connected"


def test_access_changes_through_the_cli_reach_members_on_both_replicas_within_2s(replicas):
    """Groups and a token's access, changed by the admin CLI on the database: each replica pushes
    the drop or the gain to its own members."""
    r = replicas
    r.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=r.secret, token_type="organization")
    for member in (r.bob, r.carol):
        wait_for(lambda m=member: _holds(m, "Org IonQ"), "everyone's token on both replicas", timeout=WITHIN)
    for args in (("group", "add", "team", "--member", "bob"), ("token", "set-access", "Org IonQ", "--group", "team")):
        out = r.one.cli(*args)
        assert out.returncode == 0, out.stderr
    wait_for(lambda: not _holds(r.carol, "Org IonQ"), "carol (replica two) to lose it", timeout=WITHIN)
    assert _holds(r.bob, "Org IonQ") and r.forward(r.bob).status_code == 200
    out = r.two.cli("group", "add-member", "team", "carol")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: _holds(r.carol, "Org IonQ"), "carol to get it back", timeout=WITHIN)
    assert r.forward(r.carol).status_code == 200
    out = r.one.cli("group", "rm-member", "team", "bob")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not _holds(r.bob, "Org IonQ"), "bob (replica one) to lose it", timeout=WITHIN)


def test_a_reconnect_to_the_other_replica_gets_only_what_it_missed(replicas):
    r = replicas
    admin = r.admin.broker().qpu_token
    for name in ("A", "B", "C"):
        admin.create(name=name, provider="ionq", token=r.secret, token_type="organization")
    [snapshot] = _watch(r, r.one, "bob", org_pb2.WatchRequest())
    assert snapshot.kind == SNAPSHOT and {t.name for t in snapshot.tokens} == {"A", "B", "C"}
    seen, store_id = snapshot.revision, snapshot.store_id
    admin.update(qpu_token_name="A", name="A2", token_type="organization")
    admin.delete(qpu_token_name="B", token_type="organization")
    admin.create(name="D", provider="ionq", token=r.secret, token_type="organization")
    admin.update(qpu_token_name="D", name="D2", token_type="organization")  # D's two changes: its latest only
    wait_for(lambda: _holds(r.carol, "D2"), "replica two to have pushed the changes")
    resumed = _watch(r, r.two, "bob", org_pb2.WatchRequest(after_revision=seen, store_id=store_id))
    kinds = org_pb2.WatchEvent.Kind.Name
    assert [(kinds(e.kind), [t.name for t in e.tokens]) for e in resumed] == [
        ("KIND_UPDATED", ["A2"]), ("KIND_DELETED", ["B"]), ("KIND_UPDATED", ["D2"]), ("KIND_CAUGHT_UP", [])]
    assert resumed[-1].revision == seen + 4 and resumed[-1].store_id == store_id
    # Up to date already: only CAUGHT_UP. Another store's numbers, or numbers from the future: a snapshot.
    assert [e.kind for e in _watch(r, r.one, "bob", org_pb2.WatchRequest(after_revision=seen + 4, store_id=store_id))] == [
        org_pb2.WatchEvent.KIND_CAUGHT_UP]
    for request in (org_pb2.WatchRequest(after_revision=seen, store_id="another-store"),
                    org_pb2.WatchRequest(after_revision=seen + 99, store_id=store_id)):
        [again] = _watch(r, r.two, "bob", request)
        assert again.kind == SNAPSHOT and {t.name for t in again.tokens} == {"A2", "C", "D2"}
    # After an org-wide change (here a quota) the member needs the whole picture again: a snapshot.
    out = r.one.cli("quota", "set", "--token", "C", "--requests", "5", "--per", "1d")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: "C" in r.carol.broker().org_status().metered_tokens, "the quota to reach replica two")
    [after_quota] = _watch(r, r.two, "bob", org_pb2.WatchRequest(after_revision=seen + 4, store_id=store_id))
    assert after_quota.kind == SNAPSHOT and [t.metered for t in after_quota.tokens if t.name == "C"] == [True]


def test_racing_members_on_both_replicas_never_overrun_a_quota(replicas):
    r = replicas
    stub, md = r.client(r.one, "alice")
    stub.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=r.secret.encode()), metadata=md)
    out = r.one.cli("quota", "set", "--token", "Org IonQ", "--requests", "20", "--per", "1d")
    assert out.returncode == 0, out.stderr
    members = [f"m{i}" for i in range(8)]
    codes = r.one.add_users(members)
    stub, md = r.client(r.one, "bob")
    token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id

    def attempts(i: int) -> int:
        return reserve_tries(r.one if i % 2 else r.two, codes[i], token_id, 8)  # half on each replica

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(attempts, range(8))) == 20  # 64 tries on two replicas for 20 units: exactly 20
    assert "20 used, 0 left" in r.two.cli("quota", "list").stdout


def test_a_thousand_tokens_and_more_come_in_pages_and_a_daemon_holds_them_all(replicas):
    """1,200 org tokens: two snapshot pages of at most a thousand tokens or a MiB; the daemon
    applies the snapshot once its last page arrives, and fetches secrets in bounded batches."""
    r = replicas
    script = ("import sys, pathlib\n"
              "from qpu_broker.common.reach import Owner, Reach\n"
              "from qpu_broker.orgserver.admin_record import ACTOR, local_operator\n"
              "from qpu_broker.orgserver.layout import OrgLayout\n"
              "from qpu_broker.orgserver.service import OrgService\n"
              "ACTOR.set(local_operator())\n"
              "store, key = OrgLayout(pathlib.Path(sys.argv[1])).open()\n"
              "service = OrgService(store, key)\n"
              "for i in range(1200):\n"
              "    service.create(f'bulk-{i:04}', 'ionq', sys.argv[2].encode(), Reach(owner=Owner.ORG))\n")
    done = subprocess.run([sys.executable, "-c", script, str(r.one.data), r.secret], capture_output=True, text=True,
                          timeout=120, env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr
    pages = _watch(r, r.two, "bob", org_pb2.WatchRequest())
    assert [len(p.tokens) for p in pages] == [1000, 200] and [p.more for p in pages] == [True, False]
    assert max(p.ByteSize() for p in pages) <= (1 << 20) + 64 * 1024  # a MiB of tokens, and the page's own fields
    # The org-wide CA comes once a page (its org_reach), not again with each token: the daemon merges.
    assert pages[0].org_reach["ionq"].ca_pem and not any(t.HasField("reach") for p in pages for t in p.tokens)
    assert pages[0].ByteSize() < 1000 * 200
    stub, md = r.client(r.one, "bob")  # ListTokens pages too
    first = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md)
    rest = stub.ListTokens(org_pb2.ListTokensRequest(page_token=first.next_page_token), metadata=md)
    assert (len(first.tokens), len(rest.tokens), rest.next_page_token) == (1000, 200, "")
    assert {t.id for t in first.tokens} | {t.id for t in rest.tokens} == {t.id for p in pages for t in p.tokens}
    with pytest.raises(grpc.RpcError) as bad:
        stub.ListTokens(org_pb2.ListTokensRequest(page_token="nonsense"), metadata=md)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    wait_for(lambda: r.carol.broker().org_status().tokens == 1200, "carol's daemon to hold every token")
    assert r.forward_named(r.carol, "bulk-1199").status_code == 200


def _no_secret_in_the_database(r) -> None:
    """Every table of the org's database, its server's log and both replicas' logs: names, never
    the secret, an enrollment code or a device's private key (public keys only)."""
    import psycopg

    url = (r.one.data / "database").read_text().strip()
    with psycopg.connect(url) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))
    assert "Org IonQ" in dump and r.secret not in dump and r.codes["bob"] not in dump
    assert all(repr(d.private_key) not in dump for d in r._devices.values())
    assert r.secret not in r.postgres_log() and r.secret not in r.one.log() + r.two.log()


def test_a_database_url_with_a_password_or_of_another_kind_is_refused(short_tmp, postgres):
    url = postgres.create_database("url_checks")
    for value, said in (("postgresql://qpu:hunter2@db.example/org", "must not carry a password"),
                        ("postgresql://db.example/org?password=hunter2", "must not carry a password"),
                        ("mysql://db.example/org", "neither sqlite:PATH nor postgresql://"),
                        ("sqlite:", "needs a path"),
                        (url, ""), (url, "already holds an organization")):
        data = short_tmp / f"d{secrets.token_hex(4)}"
        out = subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "init", "--data", str(data),
                              "--org", "X", "--admin", "a", "--database", value], capture_output=True, text=True,
                             timeout=60, check=False)
        if not said:  # the first org in this database
            assert out.returncode == 0, out.stderr
            continue
        assert out.returncode != 0 and said in out.stderr and "hunter2" not in out.stderr + out.stdout, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and not (data / "server.key").exists()


def test_kill_one_replica_members_fail_over_no_event_lost_no_quota_overrun(replicas):
    """Members logged in to both replicas; the one they use is killed (-9) while they forward
    with a metered token: they move to the other within seconds, resuming from their revision,
    a revocation made while they were moving reaches them, and the quota is never overrun."""
    r = replicas
    admin = r.admin.broker().qpu_token
    admin.create(name="Org IonQ", provider="ionq", token=r.secret, token_type="organization")
    admin.create(name="Doomed", provider="ionq", token=r.secret, token_type="organization")
    out = r.one.cli("quota", "set", "--token", "Org IonQ", "--requests", "40", "--per", "1d")
    assert out.returncode == 0, out.stderr
    both = [r.one.address, r.two.address]
    bob, carol = r.member("bob", both), r.member("carol", both)
    for d in (bob, carol):
        wait_for(lambda d=d: d.broker().org_status().server == r.one.address and _holds(d, "Doomed")
                 and "Org IonQ" in d.broker().org_status().metered_tokens, "the member on replica one, metered")
    granted = {"bob": 0, "carol": 0}
    stop = threading.Event()

    def use(d, who):
        while not stop.is_set():
            try:
                if r.forward(d).status_code == 200:
                    granted[who] += 1
            except QpuBrokerError:
                pass  # a use refused while the replica is gone (a metered token fails closed), or the quota spent

    users = [threading.Thread(target=use, args=(d, w)) for d, w in ((bob, "bob"), (carol, "carol"))]
    for t in users:
        t.start()
    wait_for(lambda: sum(granted.values()) >= 6, "uses before the kill")
    r.one.proc.send_signal(signal.SIGKILL)
    r.one.proc.wait()
    # Made through the surviving replica while the members are still finding it: nobody may miss it.
    stub, md = r.client(r.two, "alice")
    stub.DeleteToken(org_pb2.DeleteTokenRequest(token=org_pb2.GetTokenRequest(name="Doomed")), metadata=md)
    for d in (bob, carol):
        wait_for(lambda d=d: d.broker().org_status().server == r.two.address
                 and d.broker().org_status().state == "connected", "the member to fail over to replica two", timeout=10)
        wait_for(lambda d=d: not _holds(d, "Doomed"), "the revocation made during the failover", timeout=WITHIN)
    wait_for(lambda: sum(granted.values()) >= 40 or _spent(r), "the quota to be spent through replica two")
    stop.set()
    for t in users:
        t.join(timeout=30)
    assert sum(granted.values()) <= 40  # never more than the quota, whichever replica counted
    assert "40 used, 0 left" in r.two.cli("quota", "list").stdout
    with pytest.raises(ResourceExhaustedError):
        r.forward(bob)

    def answered() -> int:  # every use made, on either side of the kill, reaches the record once
        records = stub.ListUsage(org_pb2.ListUsageRequest(token="Org IonQ"), metadata=md).records
        return sum(1 for u in records if u.outcome == "answered")

    # Polled within the server's budget for one admin's usage reads (10 a second).
    wait_for(lambda: answered() == sum(granted.values()), "every use in the usage record", interval=0.2)


def _spent(r) -> bool:
    return "40 used, 0 left" in r.two.cli("quota", "list").stdout


def test_a_database_restart_is_ridden_out(replicas, postgres):
    """PostgreSQL restarts (connections cut): members keep their streams, and once it is back
    the replicas reconnect on their own and push changes again, to both replicas' members."""
    r = replicas
    r.admin.broker().qpu_token.create(name="Before", provider="ionq", token=r.secret, token_type="organization")
    wait_for(lambda: _holds(r.carol, "Before"), "the token on replica two")
    postgres.restart()
    assert r.bob.broker().org_status().state == "connected" and r.forward_named(r.carol, "Before").status_code == 200
    stub, md = r.client(r.two, "alice")
    stub.CreateToken(org_pb2.CreateTokenRequest(name="After", provider="ionq", secret=r.secret.encode()), metadata=md)
    for member in (r.bob, r.carol):  # bob is on replica one: its listener reconnected and heard the NOTIFY
        wait_for(lambda m=member: _holds(m, "After"), "a change after the restart on both replicas", timeout=5)
    assert "listening to the org store failed" in r.one.log() + r.two.log()


def _relay_sign(r: Replicas) -> org_pb2.RelaySignRequest:
    """A relay AWS token (made by alice through replica one) and a Braket Sign with it."""
    stub, md = r.client(r.one, "alice")
    token = stub.CreateToken(org_pb2.CreateTokenRequest(name="Org AWS", provider="aws", relay=True,
                                                        secret=b"AKIAIOSFODNN7EXAMPLE:" + b"s" * 40), metadata=md)
    return org_pb2.RelaySignRequest(token_id=token.id, provider="aws", method="POST",
                                    url="https://braket.us-east-1.amazonaws.com/quantum-task",
                                    body_sha256=hashlib.sha256(b"{}").hexdigest(), body_bytes=2)


def test_a_relayed_call_waiting_for_the_write_lock_stalls_no_other_call_of_its_replica(replicas):
    """A relayed call's record is written by the record writer, on a connection of its own
    (orgserver/record_writer.py): while it waits for its turn at the store's write lock (held here
    by another writer, as another replica's long transaction would), its replica answers other
    calls, and the relayed call completes, recorded, once the lock is free. (Written on the event
    loop, the wait stalled every call of the replica until the lock came or lock_timeout passed.)"""
    import psycopg
    from qpu_broker.orgserver.db.postgres_db import WRITE_LOCK

    r = replicas
    sign = _relay_sign(r)
    stub, md = r.client(r.one, "bob")
    assert stub.RelaySign(sign, metadata=md).headers  # warm: bob's device standing, the writer's connection
    waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
               "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    with psycopg.connect(r.database, autocommit=True) as holder, concurrent.futures.ThreadPoolExecutor(1) as pool:
        holder.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        signing = pool.submit(stub.RelaySign, sign, metadata=md, timeout=30)
        wait_for(lambda: holder.execute(waiting).fetchone()[0] == 1, "the relayed call's record to wait for the lock")
        t0 = time.monotonic()
        assert stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md, timeout=2).user == "bob"
        assert time.monotonic() - t0 < 2 and not signing.done()
        holder.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
        assert signing.result().headers
    admin, admin_md = r.client(r.two, "alice")
    records = admin.ListUsage(org_pb2.ListUsageRequest(member="bob"), metadata=admin_md).records
    assert [u.outcome for u in records] == ["signed", "signed"]


def test_a_removed_device_is_refused_relayed_calls_on_both_replicas_within_2s(replicas):
    """Calls reuse a device's standing for a moment (orgserver/devices.py); removing the device
    through one replica still ends its relayed calls on both within 2 s."""
    r = replicas
    sign = _relay_sign(r)
    one, md = r.client(r.one, "bob")
    two, _ = r.two.stub("")
    for stub in (one, two):  # each replica now holds bob's device standing
        assert stub.RelaySign(sign, metadata=md).headers

    def refused(stub) -> bool:
        try:
            stub.RelaySign(sign, metadata=md, timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAUTHENTICATED and "removed this device" in exc.details()
            return True
        return False

    admin, admin_md = r.client(r.one, "alice")
    admin.RemoveDevice(org_pb2.RemoveDeviceRequest(id=r.device("bob").id), metadata=admin_md)
    removed = time.monotonic()
    assert refused(one)  # the replica that removed it: at once
    wait_for(lambda: refused(two), "replica two to refuse the removed device", timeout=WITHIN)
    assert time.monotonic() - removed <= WITHIN


def test_a_relay_token_withheld_or_deleted_through_one_replica_is_refused_on_both_within_2s(replicas):
    """Relayed calls reuse the token's row for a moment (orgserver/kept.py); an access change or a
    deletion made through one replica still refuses them on both within 2 s (and access given
    back works on both as soon)."""
    r = replicas
    sign = _relay_sign(r)
    one, md = r.client(r.one, "bob")
    two, _ = r.two.stub("")

    def refused(stub) -> bool:
        try:
            stub.RelaySign(sign, metadata=md, timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND, exc.details()
            return True
        return False

    def within_2s_on_both(change, outcome: bool) -> None:
        change()
        made = time.monotonic()
        assert refused(one) is outcome  # the replica that made the change: at once
        wait_for(lambda: refused(two) is outcome, "replica two to follow", timeout=WITHIN)
        assert time.monotonic() - made <= WITHIN

    admin, admin_md = r.client(r.one, "alice")
    admin.AddGroup(org_pb2.AddGroupRequest(name="physics", members=["carol"]), metadata=admin_md)
    selector = org_pb2.GetTokenRequest(name="Org AWS")

    def access(groups: list[str] | None):
        return lambda: admin.SetTokenAccess(org_pb2.SetTokenAccessRequest(
            token=selector, access=org_pb2.TokenAccess(only_groups=groups is not None, groups=groups or [])),
            metadata=admin_md)

    assert not refused(one) and not refused(two)  # each replica now holds the token's row for bob's calls
    within_2s_on_both(access(["physics"]), True)
    within_2s_on_both(access(None), False)
    within_2s_on_both(lambda: admin.DeleteToken(org_pb2.DeleteTokenRequest(token=selector), metadata=admin_md), True)
