"""The org store's contract, run against both backends: the same tests on an SQLite file and
on a real PostgreSQL server (initdb/pg_ctl in a temp dir; see testsupport/postgres.py).

Two `OrgStore`s on one database stand for two org-server replicas (or a replica and an
admin's CLI): what one writes the other reads, events are numbered in commit order, and a
quota's check and count are one step across them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sqlite3
import threading

import pytest
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.db import POSTGRESQL, SQLITE
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.store import (
    MIGRATIONS,
    SQLITE_MIGRATIONS,
    OrgStore,
    OrgTokenRecord,
    UsageQuery,
)
from qpu_broker.orgserver.users import new_users
from qpu_broker_client.errors import (
    AlreadyExistsError,
    NotFoundError,
    ResourceExhaustedError,
)
from qpu_broker_client.usage import REQUESTS, Quota, UsageRecord

HOUR_US = 3600 * 1_000_000


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def database(request, short_tmp, postgres):
    """(kind, target) of a fresh, empty database of each backend."""
    if request.param == SQLITE:
        return SQLITE, str(short_tmp / "org.db")
    return POSTGRESQL, postgres.create_database(f"contract_{short_tmp.name.replace('-', '_')}")


@pytest.fixture
def store(database):
    s = OrgStore.open(*database)
    yield s
    s.close()


@pytest.fixture
def replica(database, store):
    s = OrgStore.open(*database)  # after `store`: the schema is made once
    yield s
    s.close()


def token(name: str, token_id: str = "", at_us: int = 1) -> OrgTokenRecord:
    return OrgTokenRecord(token_id or f"id-{name}", name, "ionq", Reach(owner=Owner.ORG), 1, at_us, at_us)


def record(rid: str, member: str = "bob", token_id: str = "id-t", at_us: int = 5) -> UsageRecord:
    return UsageRecord(rid, member, token_id, "t", "ionq", "forward", "GET", "api.ionq.co", "/v0.3/jobs", 200,
                       "answered", 10, 20, at_us)


def test_users_are_added_all_or_none_and_their_ended_keys_are_told_apart(store, replica):
    (_, _), (bob, _) = made = new_users([("alice", "admin"), ("bob", "member")])
    store.add_users([u for u, _ in made])
    assert [u.name for u in replica.users()] == ["alice", "bob"]
    assert replica.user_by_key_id(bob.key_id) == bob
    [(carol, _)] = new_users([("carol", "member")])
    with pytest.raises(AlreadyExistsError, match="'bob' already exists: nobody was added"):
        store.add_users([carol, new_users([("bob", "member")])[0][0]])
    assert replica.user("carol") is None  # the whole list, or none of it
    store.set_role("bob", "admin")
    assert replica.user("bob").role == "admin"
    with pytest.raises(NotFoundError):
        store.set_role("nobody", "admin")
    store.replace_key("bob", "newid", "newhash", 10)
    assert replica.ended_key(bob.key_id) == ("key-revoked", bob.key_hash)
    store.remove_users(["bob"], 11)
    assert replica.ended_key("newid") == ("removed", "newhash")
    assert replica.user("bob") is None
    with pytest.raises(NotFoundError):
        store.remove_users(["bob"], 12)


def test_tokens_and_their_sealed_bytes_round_trip(store, replica):
    store.insert_token(token("t", at_us=1), b"\x00nonce\xff", b"\x00\x01cipher\xfe")
    store.insert_token(token("u", at_us=2), b"n2", b"c2")
    assert replica.sealed("id-t") == (b"\x00nonce\xff", b"\x00\x01cipher\xfe")
    assert [t.name for t in replica.tokens()] == ["t", "u"]
    assert [t.name for t in replica.tokens(["id-u", "id-missing"])] == ["u"]
    assert replica.token(name="u").id == "id-u"
    store.insert_token(token("v", at_us=2), b"n3", b"c3")  # created in the same µs as u: the id orders them
    assert [t.name for t in replica.tokens_after(-1, "", 2)] == ["t", "u"]
    assert [t.name for t in replica.tokens_after(2, "id-u", 2)] == ["v"]
    assert replica.tokens_after(2, "id-v", 2) == []
    store.delete_token(store.token(name="v"))
    with pytest.raises(AlreadyExistsError):
        store.insert_token(token("t", "other-id"), b"n", b"c")
    with pytest.raises(AlreadyExistsError):
        store.replace_token(OrgTokenRecord("id-u", "t", "ionq", Reach(owner=Owner.ORG), 2, 2, 3), None)
    store.replace_token(OrgTokenRecord("id-u", "u2", "ionq", Reach(hosts=("x.example",), owner=Owner.ORG), 2, 2, 3, True),
                        (b"n3", b"c3"))
    got = replica.token(token_id="id-u")
    assert (got.name, got.version, got.relay, got.own.hosts) == ("u2", 2, True, ("x.example",))
    assert replica.sealed("id-u") == (b"n3", b"c3")
    store.delete_token(got)
    with pytest.raises(NotFoundError):
        replica.token(token_id="id-u")
    with pytest.raises(NotFoundError):
        store.delete_token(got)


def test_a_tokens_expiry_is_stored_and_changed_with_its_version(store, replica):
    far = (2**31 + 100 * 365 * 86400) * 1_000_000  # past 2038 and a century on: 64 bits on both backends
    store.insert_token(dataclasses.replace(token("t", at_us=1), expires_us=far), b"n", b"c")
    store.insert_token(token("u", at_us=2), b"n2", b"c2")
    assert [(t.name, t.expires_us) for t in replica.tokens()] == [("t", far), ("u", 0)]  # 0: never
    assert replica.tokens_after(-1, "", 1)[0].expires_us == far and replica.tokens(["id-t"])[0].expires_us == far
    store.replace_token(dataclasses.replace(replica.token(name="t"), version=2, expires_us=5), None)
    assert replica.token(token_id="id-t").expires_us == 5
    store.replace_token(dataclasses.replace(replica.token(name="t"), version=3, expires_us=far), (b"n3", b"c3"))
    assert (replica.token(name="t").expires_us, replica.sealed("id-t")) == (far, (b"n3", b"c3"))
    store.replace_token(dataclasses.replace(replica.token(name="t"), version=4, name="t2"), None)
    assert replica.token(token_id="id-t").expires_us == far  # a change of something else keeps it


def test_tokens_from_before_lifetimes_never_expire(database):
    from qpu_broker.orgserver.db import open_database

    older = open_database(*database, {k: v[:-1] for k, v in MIGRATIONS.items()}, "the org store")
    with older.writing():
        older.execute("INSERT INTO tokens (id, name, provider, nonce, ciphertext, version, created_us, updated_us) "
                      "VALUES ('id-old', 'old', 'ionq', ?, ?, 1, 1, 1)", (b"n", b"c"))
    older.close()
    store = OrgStore.open(*database)
    assert store.token(name="old").expires_us == 0
    store.close()


def test_every_change_members_hear_of_is_one_numbered_event(store, replica):
    start = store.revision()
    store.insert_token(token("t"), b"n", b"c")
    store.replace_token(OrgTokenRecord("id-t", "t", "ionq", Reach(owner=Owner.ORG), 2, 1, 2), None)
    store.set_org_reach("ionq", Reach(hosts=("a.example",), owner=Owner.ORG))
    store.add_users([u for u, _ in new_users([("bob", "member")])])  # nobody's stream changes: no event
    store.set_role("bob", "admin")
    store.delete_token(store.token(token_id="id-t"))
    events = replica.events_after(start)
    assert [(e.kind, e.subject) for e in events] == [
        ("created", "id-t"), ("updated", "id-t"), ("org", "ionq"), ("user", "bob"), ("deleted", "id-t")]
    assert [e.seq for e in events] == list(range(start + 1, start + 6))
    assert replica.revision() == store.revision() == start + 5
    assert events[-1].name == "t"  # a deleted token's name stays with its event
    assert replica.events_after(start + 3) == events[3:]


def test_events_from_racing_writers_are_numbered_in_commit_order(database, store):
    """Two replicas writing at once: numbers run without a gap, and a reader that saw N never
    finds a smaller number committed after."""
    stores = [store, OrgStore.open(*database)]
    start = store.revision()
    reader = OrgStore.open(*database)
    seen: list[int] = []

    def write(half: int):
        for i in range(half, 60, 2):
            stores[half].insert_token(token(f"t{i}"), b"n", b"c")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # one thread per store: each has one connection
        writers = [pool.submit(write, half) for half in range(2)]
        last = start
        while len(seen) < 60:  # read while they write: a late commit with a smaller number would show here
            for e in reader.events_after(last):
                seen.append(e.seq)
                last = e.seq
            if all(w.done() for w in writers) and reader.revision() == last:
                break
        for w in writers:
            w.result()
    assert seen == list(range(start + 1, start + 61))
    assert {e.subject for e in reader.events_after(start)} == {f"id-t{i}" for i in range(60)}
    reader.close()
    stores[1].close()


def test_usage_keeps_one_record_per_id_in_arrival_order(store, replica):
    assert store.add_usage([record("a"), record("b", member="carol"), record("a")], 100) == 2
    assert replica.add_usage([record("b"), record("c", token_id="id-u")], 101) == 1
    rows = store.usage(UsageQuery())
    assert [r.id for r in rows] == ["a", "b", "c"] and rows[0].seq < rows[1].seq < rows[2].seq
    assert [r.id for r in store.usage(UsageQuery(member="carol"))] == ["b"]
    assert [r.id for r in store.usage(UsageQuery(token="id-u"))] == ["c"]
    assert [r.id for r in store.usage(UsageQuery(after_seq=rows[0].seq, limit=1))] == ["b"]
    finished = replica.finish_usage("a", 201, "answered", 99, 1234)
    assert (finished.status, finished.answer_bytes, finished.qpu_us) == (201, 99, 1234)
    assert store.finish_usage("missing", 200, "answered", 1, 0) is None


def test_quotas_upsert_cascade_and_count(store, replica):
    store.insert_token(token("t"), b"n", b"c")
    qid = store.set_quota(Quota(0, "", "id-t", "", REQUESTS, 10, HOUR_US, 0))
    assert store.set_quota(Quota(0, "", "id-t", "", REQUESTS, 20, HOUR_US, 0)) == qid  # the same quota, replaced
    with store.counting():
        store.add_quota_use(qid, "", 0, 3)
        store.add_quota_use(qid, "", 0, 4)
    assert replica.quota_used(qid, "", 0) == 7
    [q] = replica.quotas(member="bob", token_id="id-t")
    assert (q.limit, q.token_name) == (20, "t")
    store.delete_token(store.token(token_id="id-t"))
    assert replica.quotas()[0].token_name == "(deleted)"
    store.delete_quota(qid)
    assert replica.quota_used(qid, "", 0) == 0 and replica.quotas() == []
    with pytest.raises(NotFoundError):
        store.delete_quota(qid)


def test_racing_replicas_never_overrun_a_quota(database, store):
    """Two replicas, eight callers each, 64 tries for 20 requests: exactly 20 are granted."""
    store.insert_token(token("t"), b"n", b"c")
    store.set_quota(Quota(0, "", "id-t", "", REQUESTS, 20, HOUR_US, 0))
    replicas = [OrgStore.open(*database) for _ in range(4)]
    locks = [threading.Lock() for _ in replicas]  # one connection is one caller at a time, as in a server

    def attempt(i: int) -> bool:
        with locks[i % 4]:
            try:
                Quotas(replicas[i % 4]).reserve("bob", "id-t")
                return True
            except ResourceExhaustedError:
                return False

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(attempt, range(64)))
    assert granted == 20
    [q] = Quotas(store).status(None)
    assert q.used == 20
    for r in replicas:
        r.close()


def test_both_schemas_have_the_same_tables_and_columns(postgres):
    store = OrgStore.open(POSTGRESQL, postgres.create_database("schema_shape"))
    reference = sqlite3.connect(":memory:")
    for migration in SQLITE_MIGRATIONS:
        reference.executescript(migration)
    tables = [r[0] for r in reference.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    sqlite_shape = {t: sorted(c[1] for c in reference.execute(f"PRAGMA table_info('{t}')")) for t in tables}
    rows = store.db.execute("SELECT table_name, column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name <> 'schema_version'").fetchall()
    pg_shape: dict[str, list[str]] = {}
    for table, column in rows:
        pg_shape.setdefault(table, []).append(column)
    assert {t: sorted(c) for t, c in pg_shape.items()} == sqlite_shape
    store.close()


def test_opening_again_migrates_nothing_and_a_newer_schema_is_refused(database, store):
    store_id = store.meta("store_id")
    assert store_id and len(store_id) == 32
    again = OrgStore.open(*database)
    assert again.meta("store_id") == store_id  # the same store, not a new one
    again.close()
    from qpu_broker.orgserver.db import open_database
    from qpu_broker_client.errors import FailedPreconditionError

    newer = {k: v[:-1] for k, v in MIGRATIONS.items()}
    with pytest.raises(FailedPreconditionError, match="newer than this qpu-broker knows"):
        open_database(*database, newer, "the org store")


def test_an_sqlite_store_from_before_events_keeps_its_revision(short_tmp):
    from qpu_broker.store.sqlite import open_db

    old = open_db(short_tmp / "old.db", SQLITE_MIGRATIONS[:5], "old")
    old.execute("INSERT INTO meta (key, value) VALUES ('revision', '41')")
    old.close()
    store = OrgStore.open(SQLITE, str(short_tmp / "old.db"))
    assert store.revision() == 41 and store.meta("revision") is None
    store.insert_token(token("t"), b"n", b"c")
    assert store.revision() == 42
    store.close()


def test_new_user_names_are_checked():
    from qpu_broker_client.errors import InvalidArgumentError

    for bad in ("", "a b", "*", "x\n", "a" * 129, "alice\u200b", "\u202eecila", "a\x9b31mX"):
        with pytest.raises(InvalidArgumentError):
            new_users([(bad, "member")])
    with pytest.raises(InvalidArgumentError, match="listed twice"):
        new_users([("a", "member"), ("a", "admin")])
    with pytest.raises(InvalidArgumentError, match="member or admin"):
        new_users([("a", "root")])
    from qpu_broker.orgserver.users import read_user_lines

    assert read_user_lines(["# staff", "ann admin # lead", "eve#ops admin", "  bob  "], "f") == [
        ("ann", "admin"), ("eve#ops", "admin"), ("bob", "member")]


def test_two_changes_to_one_token_made_at_once_never_both_win(store, replica):
    """Each change is written over the version it was made from: the second of two changes made
    from version 1 (two admins, two replicas) is refused, not silently lost."""
    from qpu_broker_client.errors import FailedPreconditionError

    store.insert_token(token("t"), b"n1", b"c1")
    base = store.token(token_id="id-t")
    rotate = OrgTokenRecord(base.id, base.name, base.provider, base.own, 2, 1, 2, False)
    make_relay = OrgTokenRecord(base.id, base.name, base.provider, base.own, 2, 1, 2, True)
    store.replace_token(rotate, (b"n2", b"c2"))
    with pytest.raises(FailedPreconditionError, match="changed by someone else meanwhile"):
        replica.replace_token(make_relay, None)
    assert (replica.token(token_id="id-t").version, replica.sealed("id-t")) == (2, (b"n2", b"c2"))


def test_a_removed_users_own_quotas_and_counts_go_with_them(store, replica):
    store.add_users([u for u, _ in new_users([("bob", "member")])])
    mine = store.set_quota(Quota(0, "bob", "", "", REQUESTS, 5, HOUR_US, 0))
    each = store.set_quota(Quota(0, "*", "", "", REQUESTS, 9, HOUR_US, 0))
    with store.counting():
        store.add_quota_use(mine, "bob", 0, 2)
        store.add_quota_use(each, "bob", 0, 3)
    replica.remove_users(["bob"], 10)
    assert [q.member for q in store.quotas()] == ["*"] and store.quota_used(each, "bob", 0) == 0


def test_database_urls_are_read_as_libpq_reads_them(tmp_path, monkeypatch):
    from qpu_broker.orgserver.db import parse_database
    from qpu_broker_client.errors import InvalidArgumentError

    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    for url, said in (("postgresql://qpu:pa?ss@db.example/org", "must not carry a password"),
                      ("postgresql://qpu:pa#ss@db.example/org", "must not carry a password"),
                      ("postgresql://db.example/org?sslpassword=x", "must not carry a password"),
                      ("postgresql://qpu@db.example/org", "without verifying its TLS certificate"),
                      ("postgresql://qpu@db.example/org?sslmode=require", "sslmode=require")):
        with pytest.raises(InvalidArgumentError, match=said):
            parse_database(url, tmp_path)
    for fine in ("postgresql://qpu@db.example/org?sslmode=verify-full", "postgresql://qpu@/org?host=/run/postgresql",
                 "postgresql://qpu@127.0.0.1/org", "postgresql:///org"):
        assert parse_database(fine, tmp_path) == (POSTGRESQL, fine)
    monkeypatch.setenv("PGSSLMODE", "verify-ca")
    assert parse_database("postgresql://qpu@db.example/org", tmp_path)[0] == POSTGRESQL


def test_a_write_that_cannot_get_its_turn_fails_in_seconds_not_forever(postgres, monkeypatch):
    """Any role that can connect could take the writers' advisory lock: a write waits its lock
    timeout, then is UNAVAILABLE (the server's loop is not held longer)."""
    import psycopg
    from qpu_broker.orgserver.db import postgres_db
    from qpu_broker_client.errors import UnavailableError

    monkeypatch.setattr(postgres_db, "LOCK_TIMEOUT_MS", 300)
    url = postgres.create_database("lock_timeout")
    store = OrgStore.open(POSTGRESQL, url)
    with psycopg.connect(url) as squatter, squatter.transaction():
        squatter.execute("SELECT pg_advisory_xact_lock(%s)", (postgres_db.WRITE_LOCK,))
        with pytest.raises(UnavailableError, match="is busy"):
            store.insert_token(token("t"), b"n", b"c")
    store.insert_token(token("t"), b"n", b"c")  # its turn came: the connection is fine
    store.close()


def test_groups_decide_who_sees_a_token_and_every_change_is_an_event(store, replica):
    """Access per token: a limited token is for the members of its groups alone (admins are not
    filtered at all); each change is an event naming who could see the token before."""
    from qpu_broker.orgserver.store import ACCESS, DELETED, USER_EVENT

    store.add_users([u for u, _ in new_users([("bob", "member"), ("carol", "member"), ("dan", "member")])])
    store.insert_token(token("open", at_us=1), b"n", b"c")
    start = store.revision()
    store.add_group("physics", ["carol"], 5)
    store.add_group("ops", [], 6)
    with pytest.raises(AlreadyExistsError, match="'physics' already exists"):
        store.add_group("physics", [], 7)
    with pytest.raises(NotFoundError, match="no user named 'eve': nobody was added"):
        store.add_group_members("ops", ["dan", "eve"])
    assert replica.groups_of("dan") == frozenset()  # all of them, or none
    limited = OrgTokenRecord("id-lim", "lim", "ionq", Reach(owner=Owner.ORG), 1, 2, 2, False, ("physics",))
    with pytest.raises(NotFoundError, match="no group named 'nope'"):
        store.insert_token(dataclasses.replace(limited, groups=("nope",)), b"n", b"c")
    store.insert_token(limited, b"n", b"c")
    assert replica.token(token_id="id-lim").groups == ("physics",) and replica.token(name="open").groups is None
    for reader in ("bob", "carol", None):
        seen = [t.name for t in replica.tokens(visible_to=reader)]
        assert seen == (["open", "lim"] if reader != "bob" else ["open"]), reader
        assert sorted(t.name for t in replica.tokens(["id-lim", "id-open"], visible_to=reader)) == sorted(seen)
        assert [t.name for t in replica.tokens_after(1, "id-open", 5, visible_to=reader)] == seen[1:]
    with pytest.raises(NotFoundError) as hidden:
        replica.token(token_id="id-lim", visible_to="bob")
    with pytest.raises(NotFoundError) as missing:
        replica.token(token_id="id-xyz", visible_to="bob")
    assert str(hidden.value).replace("id-lim", "X") == str(missing.value).replace("id-xyz", "X")  # no oracle
    assert store.add_group_members("physics", ["bob", "carol"]) == ["bob"]  # carol was in it already
    assert [t.name for t in replica.tokens(visible_to="bob")] == ["open", "lim"]
    with pytest.raises(NotFoundError, match="'dan' is not in the group 'physics': nobody was removed"):
        store.remove_group_members("physics", ["bob", "dan"])
    store.remove_group_members("physics", ["bob"])
    assert store.set_token_access("id-lim", ("ops", "physics")).groups == ("ops", "physics")
    assert store.set_token_access("id-open", ("ops",)).groups == ("ops",)
    assert [t.name for t in replica.tokens(visible_to="bob")] == []
    assert store.remove_group("physics") == []  # lim keeps ops
    assert store.remove_group("ops") == ["lim", "open"]  # their last group: admins only, never everyone
    assert [t.groups for t in replica.tokens()] == [(), ()]
    assert replica.tokens(visible_to="carol") == [] and replica.groups() == []
    store.add_group("physics", ["carol"], 8)  # the same name again opens nothing it opened before
    assert replica.tokens(visible_to="carol") == []
    store.set_token_access("id-lim", None)
    store.delete_token(store.token(token_id="id-lim"))
    store.remove_users(["carol"], 9)
    assert replica.groups() == [("physics", 8, [])]  # a removed user leaves their groups
    events = [(e.kind, e.subject, e.audience) for e in replica.events_after(start)]
    assert events == [
        (USER_EVENT, "carol", None), ("created", "id-lim", None), (USER_EVENT, "bob", None), (USER_EVENT, "bob", None),
        (ACCESS, "id-lim", ("physics",)), (ACCESS, "id-open", None), (USER_EVENT, "carol", None),
        (USER_EVENT, "carol", None), (ACCESS, "id-lim", ()), (DELETED, "id-lim", None), (USER_EVENT, "carol", None)]
