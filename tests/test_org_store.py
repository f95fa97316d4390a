"""The org store's contract, run against both backends: the same tests on an SQLite file and
on a real PostgreSQL server (initdb/pg_ctl in a temp dir; see testsupport/postgres.py).

Two `OrgStore`s on one database stand for two org-server replicas (or a replica and an
admin's CLI): what one writes the other reads, events are numbered in commit order, and a
quota's check and count are one step across them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import queue
import re
import sqlite3
import threading

import pytest
from conftest import wait_for
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.db import POSTGRESQL, SQLITE
from qpu_broker.orgserver.db.schema import (
    CLOCK_SKEW_US_MAX,
    MIGRATIONS,
    SQLITE_MIGRATIONS,
)
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.record_writer import RecordWriter
from qpu_broker.orgserver.store import (
    Device,
    OrgStore,
    OrgTokenRecord,
    UsageQuery,
    User,
)
from qpu_broker.orgserver.users import DEFAULT_TERMS, CodeTerms, new_code, new_users
from qpu_broker_client.errors import (
    AlreadyExistsError,
    NotFoundError,
    ResourceExhaustedError,
)
from qpu_broker_client.usage import (
    QPU_US,
    REQUESTS,
    Quota,
    UsagePage,
    UsageRecord,
    quota_line,
)

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


def _before(step: int) -> dict[str, tuple[str, ...]]:
    """Both backends' migrations before SQLite's numbered `step` (PostgreSQL's later steps are
    SQLite's, one for one), to make a store as an older release left it."""
    later = len(SQLITE_MIGRATIONS) - step + 1
    return {k: v[:-later] for k, v in MIGRATIONS.items()}


def _users(*wanted: tuple[str, str], terms: CodeTerms = DEFAULT_TERMS):
    made = new_users(wanted, terms)
    return [u for u, _, _ in made], [c for _, c, _ in made]


def _device(device_id: str, user: str, code_id: str, at_us: int = 5, expires_us: int = 0) -> Device:
    return Device(device_id, user, bytes(range(32)), "laptop", at_us, expires_us, code_id, at_us)


def test_users_codes_and_devices_are_added_all_or_none_and_their_ends_are_told_apart(store, replica):
    users, codes = _users(("alice", "admin"), ("bob", "member"))
    store.add_users(users, codes)
    assert [u.name for u in replica.users()] == ["alice", "bob"]
    bob_code = codes[1]
    assert replica.code(bob_code.id) == bob_code and replica.open_codes("bob") == [bob_code]
    carol, clash = _users(("carol", "member")), _users(("bob", "member"))
    with pytest.raises(AlreadyExistsError, match="'bob' already exists: nobody was added"):
        store.add_users(carol[0] + clash[0], carol[1] + clash[1])
    assert replica.user("carol") is None and replica.code(carol[1][0].id) is None  # the whole list, or none of it
    store.set_role("bob", "admin")
    assert replica.user("bob").role == "admin"
    with pytest.raises(NotFoundError):
        store.set_role("nobody", "admin")
    # A code enrolls once: the second device it is offered is refused, and nothing is written.
    laptop = _device("1" * 16, "bob", bob_code.id)
    assert store.redeem(bob_code, laptop, 6)
    assert not replica.redeem(bob_code, _device("2" * 16, "bob", bob_code.id), 7)
    assert replica.code(bob_code.id).state == "used" and replica.device_caller("2" * 16) is None
    assert replica.device_caller(laptop.id) == (laptop, replica.user("bob"))
    # Another code keeps the devices; rotate-key (withdraw_others) ends them and the open codes.
    spare, _ = new_code("bob", "admin", CodeTerms(), 8)
    store.add_code(spare, withdraw_others=False)
    assert replica.device_caller(laptop.id) is not None
    start = replica.revision()
    rotated, _ = new_code("bob", "admin", CodeTerms(), 9)
    store.add_code(rotated, withdraw_others=True)
    assert replica.ended_device(laptop.id) == ("key-revoked", laptop.public_key) and replica.device_caller(laptop.id) is None
    assert replica.code(spare.id).state == "withdrawn" and replica.open_codes("bob") == [rotated]
    assert [(e.kind, e.subject) for e in replica.events_after(start)] == [("user", "bob")]  # their streams end
    desk = _device("3" * 16, "bob", rotated.id)
    assert store.redeem(rotated, desk, 10)
    assert store.remove_device(desk.id, 11) == desk
    assert replica.ended_device(desk.id)[0] == "device-removed" and replica.devices("bob") == []
    with pytest.raises(NotFoundError, match="no device"):
        store.remove_device(desk.id, 12)
    with pytest.raises(NotFoundError):
        store.add_code(new_code("nobody", "member", CodeTerms(), 12)[0], withdraw_others=True)
    phone = _device("4" * 16, "bob", "x")
    spare2, _ = new_code("bob", "admin", CodeTerms(), 12)
    store.add_code(spare2, withdraw_others=False)
    assert store.redeem(spare2, phone, 13)
    store.remove_users(["bob"], 14)
    assert replica.ended_device(phone.id)[0] == "removed" and replica.user("bob") is None
    assert replica.code(rotated.id).state == "used"  # a used code stays used; open ones are withdrawn
    with pytest.raises(NotFoundError):
        store.remove_users(["bob"], 15)


def test_a_service_code_enrolls_its_uses_and_no_code_enrolls_after_it_expired(store, replica):
    users, codes = _users(("ci", "service"), terms=CodeTerms(uses=2, expires_in_seconds=60, device_ttl_seconds=30))
    store.add_users(users, codes)
    [code] = codes
    assert (code.uses_left, code.device_ttl_us) == (2, 30_000_000)
    assert store.redeem(code, _device("a" * 16, "ci", code.id), code.created_us + 1)
    assert replica.code(code.id).state == "open" and replica.code(code.id).uses_left == 1
    assert not store.redeem(code, _device("b" * 16, "ci", code.id), code.expires_us)  # expired: nothing written
    assert replica.code(code.id).uses_left == 1 and replica.device_caller("b" * 16) is None
    assert store.redeem(code, _device("c" * 16, "ci", code.id), code.expires_us - 1)
    assert replica.code(code.id).state == "used" and [d.id for d in replica.devices("ci")] == ["a" * 16, "c" * 16]


def test_the_users_and_api_keys_of_the_release_before_become_users_and_one_use_codes(database):
    """Migration 7 (both backends): a user's API key becomes a one-use code without expiry, so the
    daemon logged in with it can redeem it once for a device; an ended key a withdrawn code."""
    from qpu_broker.orgserver import codes as enrollment_codes
    from qpu_broker.orgserver.db import open_database

    before_devices = {k: v[:next(i for i, m in enumerate(v) if "CREATE TABLE devices" in m)] for k, v in MIGRATIONS.items()}
    old = open_database(*database, before_devices, "the org store")
    key_id, secret = "0123456789abcdef", "S" * 43
    key_hash = hashlib.sha256(secret.encode()).hexdigest()
    old.execute("INSERT INTO users (name, role, key_id, key_hash, created_us) VALUES (?, ?, ?, ?, ?)",
                ("bob", "member", key_id, key_hash, 7))
    old.execute('INSERT INTO ended_keys (key_id, key_hash, "user", reason, at_us) VALUES (?, ?, ?, ?, ?)',
                ("fedcba9876543210", "h", "bob", "key-revoked", 3))
    old.close()
    store = OrgStore.open(*database)
    assert store.users() == [User("bob", "member", 7)]
    legacy = store.code(key_id)
    assert (legacy.user, legacy.state, legacy.uses_left, legacy.expires_us, legacy.device_ttl_us) == ("bob", "open", 1, 0, 0)
    assert enrollment_codes.parse(f"qbo_{key_id}_{secret}") == (key_id, secret)
    assert enrollment_codes.matches(secret, legacy.hash)
    assert store.code("fedcba9876543210").state == "withdrawn"
    assert store.redeem(legacy, _device("5" * 16, "bob", key_id), 10**18)  # no expiry: redeemed whenever it comes
    store.set_role("bob", "service")  # the new role is allowed by the rebuilt table
    store.close()


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

    older = open_database(*database, _before(10), "the org store")
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
    store.add_users(*_users(("bob", "member")))  # nobody's stream changes: no event
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
    rows = store.usage(UsageQuery()).records
    assert [r.id for r in rows] == ["a", "b", "c"] and rows[0].seq < rows[1].seq < rows[2].seq
    assert [r.id for r in store.usage(UsageQuery(member="carol")).records] == ["b"]
    assert [r.id for r in store.usage(UsageQuery(token="id-u")).records] == ["c"]
    assert store.usage(UsageQuery(after_seq=rows[0].seq, limit=1)) == UsagePage([rows[1]], rows[1].seq, True)
    charged = []
    replica.finish_usage("a", 201, "answered", 99, 1234, charge=lambda r: charged.append(r) or r.qpu_us // 2)
    [finished] = [r for r in store.usage(UsageQuery()).records if r.id == "a"]
    assert (finished.status, finished.answer_bytes, finished.qpu_us, finished.qpu_charged_us) == (201, 99, 1234, 617)
    assert charged == [dataclasses.replace(finished, qpu_charged_us=0)]  # charged in the same transaction
    store.finish_usage("missing", 200, "answered", 1, 0, charge=charged.append)
    assert len(charged) == 1


def test_a_follower_moves_past_every_row_it_read_matched_or_not(store, replica):
    """Issue 20, item 8: a follow that matched nothing stayed where it was and read the same rows
    at every poll (20,000 of a member's records dated before a filter: 746 ms WhoAmI for others).
    Each read now says where the next resumes: past every row it passed."""
    assert store.add_usage([record(f"old-{i}", at_us=5) for i in range(3000)], 2 * HOUR_US) == 3000
    assert store.add_usage([record("carols", member="carol", at_us=HOUR_US)], 2 * HOUR_US) == 1
    last = store.usage(UsageQuery(member="carol")).records[0].seq  # the last row stored
    follow = UsageQuery(member="bob", since_us=HOUR_US)
    assert store.usage(follow) == UsagePage([], last, False)  # nothing of bob's since then; every row passed
    assert replica.add_usage([record("new", at_us=HOUR_US)], 2 * HOUR_US) == 1
    page = store.usage(dataclasses.replace(follow, after_seq=last))
    assert [r.id for r in page.records] == ["new"] and page.after_seq == page.records[0].seq == last + 1
    assert store.usage(dataclasses.replace(follow, after_seq=page.after_seq)) == UsagePage([], page.after_seq, False)
    page = store.usage(UsageQuery(limit=2))  # a full page resumes after its last row
    assert [r.id for r in page.records] == ["old-0", "old-1"] and page.after_seq == page.records[-1].seq and page.more
    assert store.usage(UsageQuery(after_seq=10**15)) == UsagePage([], 10**15, False)  # never backwards


def test_a_read_that_matches_nothing_examines_a_bounded_number_of_rows_and_says_where_it_stopped(store):
    """Attack review, break 2 (item 8): ListUsage with a filter that matches nothing read the member's
    whole history at every call (1.4 M rows: 1.1 s each, others' WhoAmI 576 ms). A read now examines
    at most `scan_max` rows of an index and answers where it stopped; the reader pages on."""
    now = 40 * 24 * HOUR_US
    store.add_usage([record(f"late-{i}", at_us=now - 24 * HOUR_US) for i in range(500)], now)  # queued a day
    store.add_usage([record("carols", member="carol", at_us=now)], now)
    store.add_usage([record("a", at_us=now), record("b", at_us=now)], now)
    query, pages, found = UsageQuery(member="bob", since_us=now - HOUR_US), [], []
    while not pages or pages[-1].more:
        pages.append(store.usage(dataclasses.replace(query, after_seq=pages[-1].after_seq if pages else 0), scan_max=100))
        found += pages[-1].records
    assert [r.id for r in found] == ["a", "b"]
    bob = [r.seq for r in store.usage(UsageQuery(member="bob")).records]
    # Each read moved exactly `scan_max` of bob's rows on (carol's are not even in its index), and nothing twice.
    assert [p.after_seq for p in pages] == [bob[99], bob[199], bob[299], bob[399], bob[499], bob[501]]
    assert [len(p.records) for p in pages] == [0, 0, 0, 0, 0, 2]


def test_a_token_is_read_by_its_id_and_a_since_starts_where_its_records_can_begin(store, replica):
    """A token filter is one index search (a name is the id of the token that has it now); a `since`
    starts at the first record that arrived within the clock skew of it, even when a replica's clock
    was behind another's (arrival times never go back along `seq`)."""
    store.insert_token(token("Now", "id-now"), b"n", b"c")
    store.add_usage([record(f"old-{i}", token_id="id-now", at_us=HOUR_US) for i in range(300)], HOUR_US)
    store.add_usage([record("ahead", token_id="id-now", at_us=4 * HOUR_US)], 4 * HOUR_US)
    replica.add_usage([record("behind", token_id="id-now", at_us=2 * HOUR_US)], 2 * HOUR_US)  # its clock: 2 h behind
    page = store.usage(UsageQuery(member="bob", token="Now", since_us=2 * HOUR_US), scan_max=10)
    assert [r.id for r in page.records] == ["ahead", "behind"] and not page.more  # 300 old ones never examined
    assert store.usage(UsageQuery(token="t")).records == []  # the records' name of the day is not a token's
    assert store.usage(UsageQuery(token="id-now", since_us=3 * HOUR_US)).records[0].id == "ahead"
    assert store.add_usage([record("far", at_us=99 * HOUR_US)], 5 * HOUR_US) == 1  # past the skew: kept at it
    assert store.usage(UsageQuery(since_us=5 * HOUR_US)).records[0].at_us == 5 * HOUR_US + CLOCK_SKEW_US_MAX


def test_records_from_before_positions_are_given_them_when_the_store_is_opened(database):
    """Migration 11 (both backends): arrival times become their running maximum and a date past its
    bound moves to it, so a `since` read of an older store misses nothing."""
    from qpu_broker.orgserver.db import open_database

    older = open_database(*database, _before(12), "the org store")
    columns = "id, member, token_id, token_name, provider, kind, method, host, path, status, outcome, " \
              "request_bytes, answer_bytes, at_us, received_us"
    with older.writing():
        for rid, at_us, received_us in (("first", 3 * HOUR_US, 3 * HOUR_US), ("behind", 2 * HOUR_US, HOUR_US),
                                        ("ahead", 99 * HOUR_US, 4 * HOUR_US)):
            older.execute(f"INSERT INTO usage ({columns}) VALUES (?, 'bob', 't', 't', 'ionq', 'forward', 'GET', 'h', "
                          "'/', 200, 'answered', 1, 1, ?, ?)", (rid, at_us, received_us))
    older.close()
    store = OrgStore.open(*database)
    assert [r[0] for r in store.db.execute("SELECT received_us FROM usage ORDER BY seq")] == [
        3 * HOUR_US, 3 * HOUR_US, 4 * HOUR_US]
    rows = store.usage(UsageQuery(since_us=2 * HOUR_US), scan_max=10).records
    assert [(r.id, r.at_us) for r in rows] == [("first", 3 * HOUR_US), ("behind", 2 * HOUR_US),
                                               ("ahead", 4 * HOUR_US + CLOCK_SKEW_US_MAX)]
    store.close()


def test_pruning_takes_what_arrived_before_a_time_and_reads_resume_as_before(store, replica):
    store.add_usage([record(f"old-{i}") for i in range(25)], HOUR_US)
    store.add_usage([record("new", at_us=3 * HOUR_US)], 3 * HOUR_US)
    kept = store.usage(UsageQuery(after_seq=25)).records
    assert replica.prune_usage(2 * HOUR_US, batch=10) == 25
    assert store.usage(UsageQuery()).records == kept and store.usage(UsageQuery(after_seq=10)).records == kept
    assert replica.prune_usage(2 * HOUR_US) == 0


def test_the_newest_records_are_read_newest_first_a_page_at_a_time_examining_a_bounded_number(store, replica):
    """The console's reads (usage_newest): newest first, `limit` a page, each page going on below
    the last; member and token from their indexes; a `since` starting where its records can begin,
    its date checked on at most `scan_max` rows a read, which then says where the next goes on."""
    now = 40 * 24 * HOUR_US
    store.add_usage([record(f"old-{i}", at_us=HOUR_US) for i in range(30)], HOUR_US)
    store.add_usage([record(f"late-{i}", at_us=now - 24 * HOUR_US) for i in range(25)], now)  # queued a day
    replica.add_usage([record(f"new-{i}", member="carol" if i % 2 else "bob", at_us=now) for i in range(10)], now)
    seqs = {r.id: r.seq for r in store.usage(UsageQuery()).records}
    pages, before = [], 0
    while True:
        page, before = store.usage_newest(UsageQuery(limit=20), before)
        pages.append([r.id for r in page])
        if not before:
            break
    assert pages[0][:3] == ["new-9", "new-8", "new-7"] and [len(p) for p in pages] == [20, 20, 20, 5]
    assert [i for p in pages for i in p] == sorted(seqs, key=seqs.get, reverse=True)  # every record once, newest first
    carol, more = store.usage_newest(UsageQuery(member="carol", limit=5))
    assert [r.id for r in carol] == ["new-9", "new-7", "new-5", "new-3", "new-1"] and more == 0
    assert store.usage_newest(UsageQuery(member="carol", limit=2), seqs["new-7"])[0][0].id == "new-5"
    # A day's records: the 30 that arrived before it are never examined; the 25 queued ones are, at
    # most 10 a read, and none of them matches; the next read is told where to go on.
    query, found, reads = UsageQuery(since_us=now - HOUR_US, limit=1000), [], []
    before = 0
    while True:
        page, before = store.usage_newest(query, before, scan_max=10)
        found += [r.id for r in page]
        reads.append(before)
        if not before:
            break
    assert found == [f"new-{i}" for i in range(9, -1, -1)]
    assert reads == [seqs["new-0"], seqs["late-15"], seqs["late-5"], 0]  # 10 rows examined a read
    assert store.usage_newest(UsageQuery(token="t"))[0] == []  # the records' name of the day is not a token's
    assert store.usage_newest(UsageQuery(), 1) == ([], 0)


def test_the_newest_admin_entries_are_read_newest_first_a_page_at_a_time(store, as_local_operator):
    from qpu_broker.orgserver.admin_record import AdminQuery, AdminRecord

    record = AdminRecord(store, lambda: 7)
    for i in range(7):
        with record.changing() as note:
            store.add_group(f"g{i}", [], 1)
            note("group.add", f"g{i}")
    page, more = record.newest(AdminQuery(limit=3))
    assert [e.subject for e in page] == ["g6", "g5", "g4"] and more
    page, more = record.newest(AdminQuery(limit=3), page[-1].seq)
    assert [e.subject for e in page] == ["g3", "g2", "g1"] and more
    assert [e.subject for e in record.newest(AdminQuery(limit=3), page[-1].seq)[0]] == ["g0"]
    assert record.newest(AdminQuery(limit=3), page[-1].seq)[1] is False


def test_usage_reads_search_an_index_between_two_positions(short_tmp):
    """Every statement of every shape of usage read is a SEARCH of an index (never a SCAN of the
    table, never a sort): the member and token conditions in its key, `seq` bounded on both sides,
    and a `since` found with one probe of the arrival index."""
    store = OrgStore.open(SQLITE, str(short_tmp / "plans.db"))
    store.add_usage([record("a")], 100)
    plans: list[str] = []
    real = store.db.execute

    def explained(sql, args=()):
        if sql.startswith("SELECT") and "FROM usage WHERE" in sql:
            plans.extend(row[3] for row in real("EXPLAIN QUERY PLAN " + sql, args).fetchall())
        return real(sql, args)

    store.db.execute = explained
    expected = {UsageQuery(): "INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                UsageQuery(member="bob"): "INDEX usage_member (member=? AND seq>? AND seq<?)",
                UsageQuery(token="t"): "INDEX usage_token (token_id=? AND seq>? AND seq<?)",
                UsageQuery(member="bob", token="t"): "INDEX usage_member_token (member=? AND token_id=? AND seq>? AND seq<?)"}
    for query, index in expected.items():
        for since in (0, 5):
            plans.clear()
            store.usage(dataclasses.replace(query, since_us=since, after_seq=1))
            probe = ["SEARCH usage USING COVERING INDEX usage_received (received_us>?)"] if since else []
            window = ["SEARCH usage USING " + index.replace("INDEX", "COVERING INDEX")] if since else []
            assert plans == probe + window + ["SEARCH usage USING " + index], (query, since, plans)
            plans.clear()  # the console's newest-first reads: the same searches, walked backwards (no sort)
            store.usage_newest(dataclasses.replace(query, since_us=since), 5)
            assert plans == probe + window + ["SEARCH usage USING " + index], (query, since, plans)
    store.close()


def test_a_reservation_is_spent_once_by_its_member_for_its_token(store, replica):
    with store.counting():
        store.add_reservation("r1", "bob", "id-t", 7, 1000, 2000, kept=3)
        store.add_reservation("r2", "bob", "id-t", 8, 1000, 1500, kept=3)
    with replica.counting():
        assert replica.take_reservation("r1", "carol", "id-t", 1100) is None  # not carol's to spend
        assert replica.take_reservation("r1", "bob", "id-u", 1100) is None  # nor for another token
        assert replica.take_reservation("r1", "bob", "id-t", 1100) == 7
        assert replica.take_reservation("r1", "bob", "id-t", 1100) is None  # spent
        assert replica.take_reservation("r2", "bob", "id-t", 1600) is None  # expired
    with store.counting():  # a member's newest `kept` stay; the oldest go first
        for n in range(5):
            store.add_reservation(f"k{n}", "bob", "id-t", 1, 1000, 3000 + n, kept=3)
    with store.counting():
        assert [store.take_reservation(f"k{n}", "bob", "id-t", 1000) for n in range(5)] == [None, None, 1, 1, 1]


def test_reported_qpu_time_charges_only_its_reservation_within_the_members_share(store):
    store.insert_token(token("t"), b"n", b"c")
    pool = store.set_quota(Quota(0, "", "", "", QPU_US, 100, HOUR_US, 0))
    share = store.set_quota(Quota(0, "*", "id-t", "", QPU_US, 30, HOUR_US, 0))
    quotas = Quotas(store, clock=lambda: 10.0)

    def reported(rid: str, qpu_us: int, reservation: str, member: str = "bob") -> int:
        r = dataclasses.replace(record(rid, member=member), provider="dwave", qpu_us=qpu_us, reservation=reservation)
        with store.counting():
            return quotas.charge_reported(r)

    assert quotas.reserve("bob", "id-t")[1] == ""  # no reservation unless the use reports QPU time
    first, second = (quotas.reserve("bob", "id-t", qpu=True)[1] for _ in range(2))
    assert reported("a", 50, "") == 0 and reported("b", 50, "none") == 0  # no reservation: nothing
    assert reported("c", 50, first) == 30  # at most what bob's share had left when admitted
    assert reported("d", 50, first) == 0  # spent
    assert reported("e", 20, second) == 0  # bob's share is used up now: nothing more reaches the pool
    assert (store.quota_used(pool, "", 0), store.quota_used(share, "bob", 0)) == (30, 30)
    carols = quotas.reserve("carol", "id-t", qpu=True)[1]
    with pytest.raises(ResourceExhaustedError):
        quotas.reserve("bob", "id-t", qpu=True)  # a use is refused once the time is spent
    assert reported("f", 10, carols, member="carol") == 10
    assert quotas.charge(dataclasses.replace(record("g", member="carol"), qpu_us=25)) == 25  # a relayed answer: whole
    assert (store.quota_used(pool, "", 0), store.quota_used(share, "carol", 0)) == (65, 35)


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


def test_a_quota_with_a_validity_span_refuses_the_uses_it_binds_outside_it(store, replica):
    """Luna's time quota: one window, start to end; before and after it the uses it binds are
    refused (no new window begins), on both backends. Without a span the windows repeat, as before."""
    store.insert_token(token("t"), b"n", b"c")
    start, end = 100 * HOUR_US, 102 * HOUR_US  # 1970-01-05T04:00Z to 06:00Z
    spanned = Quota(0, "", "id-t", "t", REQUESTS, 5, end - start, start, valid_from_us=start, valid_until_us=end)
    store.set_quota(spanned)
    qpu = store.set_quota(dataclasses.replace(spanned, unit=QPU_US, member="*"))
    assert [(q.valid_from_us, q.valid_until_us) for q in replica.quotas()] == [(start, end)] * 2
    now = [start - 1]
    quotas = Quotas(replica, clock=lambda: now[0] / 1e6)
    with pytest.raises(ResourceExhaustedError, match=r"^quota #\d+ is not valid before 1970-01-05T04:00:00.000Z: "
                       r"everyone's requests on organization token 't', 5 per 2h, valid from 1970-01-05T04:00:00.000Z "
                       r"until 1970-01-05T06:00:00.000Z; .* refused outside that span: ask an org admin for a new policy$"):
        quotas.reserve("bob", "id-t")
    now[0] = start
    assert [q.used for q in quotas.reserve("bob", "id-t")[0]] == [1, 0]
    now[0] = end  # where a repeating quota's next window would begin
    with pytest.raises(ResourceExhaustedError, match=r"^quota #\d+ ended at 1970-01-05T06:00:00.000Z: "):
        quotas.reserve("bob", "id-t")
    # QPU time reported after the end is charged to the span's window, which is what is shown.
    assert quotas.charge(dataclasses.replace(record("late"), qpu_us=7)) == 7
    assert replica.quota_used(qpu, "bob", start) == 7
    shown = quotas.status("bob")
    assert [(q.used, q.resets_us, q.ends()) for q in shown] == [(1, end, True), (7, end, True)]
    assert quota_line(shown[0]).endswith(": 1 used, 4 left, ends 1970-01-05T06:00:00.000Z")
    store.delete_quota(qpu)
    store.set_quota(dataclasses.replace(spanned, valid_from_us=0, valid_until_us=0))  # no span: windows repeat
    assert quotas.reserve("bob", "id-t")[0][0].used == 1  # the next window's first use
    assert "resets 1970-01-05T08:00:00.000Z" in quota_line(quotas.status(None)[0])


def test_quotas_from_before_spans_repeat_their_windows_for_good(database):
    from qpu_broker.orgserver.db import open_database

    older = open_database(*database, _before(14), "the org store")
    with older.writing():
        older.execute("INSERT INTO quotas (member, token_id, unit, quota, period_us, start_us) "
                      "VALUES ('', '', 'requests', 1, ?, 0)", (HOUR_US,))
    older.close()
    store = OrgStore.open(*database)
    [q] = store.quotas()
    assert (q.valid_from_us, q.valid_until_us) == (0, 0)
    for hour in (5, 6000):  # each hour's window, however far on
        Quotas(store, clock=lambda hour=hour: hour * 3600.0).reserve("bob", "id-t")
    store.close()


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
    # And the same indexes (by name, table and columns in order): the reads' plans rely on them.
    sqlite_indexes = {(name, table, tuple(c[2] for c in reference.execute(f"PRAGMA index_info('{name}')")))
                      for name, table in reference.execute("SELECT name, tbl_name FROM sqlite_master "
                                                           "WHERE type = 'index' AND sql IS NOT NULL")}
    pg_indexes = {(name, table, tuple(c.strip() for c in re.search(r"\((.*)\)", definition)[1].split(",")))
                  for name, table, definition in store.db.execute(
                      "SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname "
                      "NOT IN (SELECT conname FROM pg_constraint)").fetchall()}
    assert pg_indexes == sqlite_indexes and ("reservations_member", "reservations", ("member", "expires_us")) in pg_indexes
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
    with pytest.raises(InvalidArgumentError, match="member, admin, service"):
        new_users([("a", "root")])
    # Several devices a code, and devices that expire, are for service members; terms have bounds.
    for role, terms, said in (("member", CodeTerms(uses=2), "are for service members"),
                              ("admin", CodeTerms(device_ttl_seconds=60), "are for service members"),
                              ("service", CodeTerms(uses=0), "--uses is 1 to 1000"),
                              ("service", CodeTerms(uses=1001), "--uses is 1 to 1000"),
                              ("member", CodeTerms(expires_in_seconds=0), "--expires-in is at most 365 days"),
                              ("service", CodeTerms(device_ttl_seconds=400 * 86400), "--device-ttl is at most")):
        with pytest.raises(InvalidArgumentError, match=said):
            new_users([("a", role)], terms)
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
    store.add_users(*_users(("bob", "member")))
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

    store.add_users(*_users(("bob", "member"), ("carol", "member"), ("dan", "member")))
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


@pytest.mark.parametrize(("records_sync", "level"), [("normal", 1), ("full", 2)])
def test_the_record_writers_connection_commits_as_records_sync_says(short_tmp, records_sync, level):
    """`serve --records-sync`: SQLite's `synchronous` on the connection relayed calls' records are
    committed on (NORMAL: survives any process's death; FULL: also a power loss), and only there."""
    path = str(short_tmp / "org.db")
    OrgStore.open(SQLITE, path).close()
    writer = RecordWriter(lambda: OrgStore.open(SQLITE, path, synchronous=records_sync))
    writer.start()
    try:
        assert asyncio.run(writer.write(lambda s: s.db.execute("PRAGMA synchronous").fetchone()[0])) == level
    finally:
        writer.close()
    other = OrgStore.open(SQLITE, path)  # every other connection: FULL
    assert other.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    other.close()


def test_the_record_writer_commits_on_the_callers_loop_when_idle_and_quick_and_on_its_thread_otherwise(short_tmp):
    """record_writer.py: where a commit waits on no disk (synchronous=NORMAL), a write that finds
    the writer idle is made on the caller's own thread (no hand-off to the writer's thread and
    back); one that finds it busy waits its turn on the writer's thread; at FULL every write is the
    thread's. A job's error is its caller's, and the writer goes on."""
    path = str(short_tmp / "org.db")
    OrgStore.open(SQLITE, path).close()

    def here(store):
        return threading.get_ident()

    def fails(store):
        raise ValueError("this job's own error")

    quick, full = (RecordWriter(lambda s=sync: OrgStore.open(SQLITE, path, synchronous=s)) for sync in ("normal", "full"))
    quick.start()
    full.start()
    try:
        assert asyncio.run(quick.write(here)) == threading.get_ident()
        with pytest.raises(ValueError, match="own error"):
            asyncio.run(quick.write(fails))
        assert asyncio.run(quick.write(here)) == threading.get_ident()
        assert asyncio.run(full.write(here)) != threading.get_ident()

        inside, release = threading.Event(), threading.Event()

        def holding(store):  # made inline on another thread's loop: the writer is busy meanwhile
            inside.set()
            assert release.wait(30)
            return threading.get_ident()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(asyncio.run, quick.write(holding))
            assert inside.wait(30)

            async def while_busy():
                queued = asyncio.create_task(quick.write(here))
                await asyncio.sleep(0)  # it found the writer busy and queued
                release.set()
                return await queued

            made_on = asyncio.run(while_busy())
            assert made_on not in (threading.get_ident(), other.result())  # the writer's thread
    finally:
        release.set()
        quick.close()
        full.close()


class _SlowToTakeItsTurn:
    """The writer's queue, whose thread, once it has taken a write, waits for `go_on` before it
    takes its turn at the store (as the GIL or the scheduler may keep it waiting)."""

    def __init__(self) -> None:
        self._queue = queue.SimpleQueue()
        self.taken, self.go_on = threading.Event(), threading.Event()

    def get(self):
        item = self._queue.get()
        if isinstance(item, tuple):
            self.taken.set()
            assert self.go_on.wait(30)
        return item

    def __getattr__(self, name):
        return getattr(self._queue, name)


def test_a_write_made_inline_never_goes_before_one_the_writers_thread_has_taken(short_tmp):
    """record_writer.py commits writes in the order they are asked for: a write that found the
    writer busy is queued, and once its thread has taken it (the queue empty again), a next write
    must not be made inline before it commits (a record's finish, then another call's begin and
    quota check, committed the other way round)."""
    path = str(short_tmp / "org.db")
    OrgStore.open(SQLITE, path).close()
    writer = RecordWriter(lambda: OrgStore.open(SQLITE, path, synchronous="normal"))
    writer._jobs = slow = _SlowToTakeItsTurn()
    writer.start()
    order, inside, release = [], threading.Event(), threading.Event()

    def holding(store):  # made inline on another thread's loop: the writer is busy meanwhile
        inside.set()
        assert release.wait(30)

    async def finish_then_begin(other: concurrent.futures.Future):
        finish = asyncio.create_task(writer.write(lambda s: order.append("finish")))
        await asyncio.sleep(0)  # it found the writer busy and queued
        release.set()
        await asyncio.wrap_future(other)  # the busy write over: the writer is free
        assert await asyncio.to_thread(slow.taken.wait, 30)  # and its thread took the finish: the queue is empty
        begin = asyncio.create_task(writer.write(lambda s: order.append("begin")))
        await asyncio.sleep(0)  # made inline here, at once, if it is going to be
        slow.go_on.set()
        await asyncio.gather(finish, begin)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(asyncio.run, writer.write(holding))
            assert inside.wait(30)
            asyncio.run(finish_then_begin(other))
        assert order == ["finish", "begin"]
    finally:
        release.set()
        slow.go_on.set()
        writer.close()


def test_the_quick_record_writer_leaves_checkpoints_to_its_thread(short_tmp):
    """record_writer.py: commits made on the event loop never wait on the disk, a WAL checkpoint's
    fsyncs included: the writer's connection does not checkpoint at a commit (SQLite's
    wal_autocheckpoint off), and its thread checkpoints every CHECKPOINT_EVERY commits."""
    from qpu_broker.orgserver.record_writer import CHECKPOINT_EVERY

    path = str(short_tmp / "org.db")
    OrgStore.open(SQLITE, path).close()
    checkpointed = []

    def opened():
        store = OrgStore.open(SQLITE, path, synchronous="normal")
        checkpoint = store.db.checkpoint
        store.db.checkpoint = lambda: (checkpointed.append(threading.get_ident()), checkpoint())
        return store

    writer = RecordWriter(opened)
    writer.start()
    try:
        async def writes():
            for _ in range(CHECKPOINT_EVERY):
                await writer.write(lambda s: s.set_meta("bench", "x"))
            return await writer.write(lambda s: s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

        assert asyncio.run(writes()) == 0
        wait_for(lambda: checkpointed, "the writer's thread to checkpoint")
        assert checkpointed[0] != threading.get_ident()
    finally:
        writer.close()



def test_console_links_work_once_and_sessions_end_idle_old_signed_out_or_with_the_admin(store, replica,
                                                                                      as_local_operator):
    """The console's sign-in links and sessions (console/sessions.py) on each backend, on two
    connections (a replica serves what another made), on an injected clock."""
    from qpu_broker.orgserver.admin_record import AdminQuery, AdminRecord
    from qpu_broker.orgserver.console.sessions import (
        ABSOLUTE_SECONDS,
        IDLE_SECONDS,
        LINK_SECONDS,
        Sessions,
        check_csrf,
    )
    from qpu_broker_client.errors import PermissionDeniedError, UnauthenticatedError

    now = [1_000_000.0]
    here, there = Sessions(store, lambda: now[0]), Sessions(replica, lambda: now[0])
    record = AdminRecord(store, lambda: int(now[0] * 1e6))
    store.add_users(*_users(("alice", "admin"), ("bob", "member"), ("carol", "admin")))
    with pytest.raises(PermissionDeniedError, match="'bob' is not an org admin"):
        here.new_link("bob", record)

    link = here.new_link("alice", record)
    assert hashlib.sha256(link.encode()).hexdigest() in str(store.db.execute("SELECT hash FROM console_links").fetchall())
    assert link not in str(store.db.execute("SELECT * FROM console_links").fetchall())  # only its hash is kept
    assert record.entries(AdminQuery(action="console"))[0][0].subject == "alice"
    admin, cookie = there.redeem(link, "console:test")
    assert admin == "alice"
    with pytest.raises(UnauthenticatedError, match="used already"):
        here.redeem(link, "console:test")
    late = here.new_link("alice", record)
    now[0] += LINK_SECONDS
    with pytest.raises(UnauthenticatedError, match="expired"):
        there.redeem(late, "console:test")
    with pytest.raises(UnauthenticatedError, match="not one this org server made"):
        there.redeem(late + "x", "console:test")

    session = here.session(cookie)  # the other replica's session
    assert session.admin == "alice" and cookie not in repr(session) and session.csrf not in repr(session)
    check_csrf(cookie, session.csrf)
    for wrong in ("", session.csrf[:-1] + ("1" if session.csrf.endswith("0") else "0"), there.session(there.redeem(here.new_link("alice", record), "console:test")[1]).csrf):
        with pytest.raises(PermissionDeniedError, match="CSRF"):
            check_csrf(cookie, wrong)

    now[0] += IDLE_SECONDS - 1  # used within the idle time: still on (and its idle clock restarts)
    there.session(cookie)
    now[0] += IDLE_SECONDS - 1
    here.session(cookie)
    now[0] += IDLE_SECONDS
    with pytest.raises(UnauthenticatedError, match="idle too long"):
        here.session(cookie)

    start = now[0]
    _, busy = here.redeem(here.new_link("alice", record), "console:test")
    while now[0] < start + ABSOLUTE_SECONDS - 60:
        now[0] += min(IDLE_SECONDS - 60, start + ABSOLUTE_SECONDS - 60 - now[0])
        here.session(busy)
    now[0] = start + ABSOLUTE_SECONDS
    with pytest.raises(UnauthenticatedError, match="longest life"):
        there.session(busy)

    _, signed_out = here.redeem(here.new_link("alice", record), "console:test")
    there.end(signed_out)
    with pytest.raises(UnauthenticatedError, match="has ended"):
        here.session(signed_out)

    _, carols = here.redeem(here.new_link("carol", record), "console:test")
    waiting = here.new_link("carol", record)
    store.set_role("carol", "member")  # demoted: her session and her unused link end, in the store at once
    _assert_no_console_left(replica, "carol")  # before any use of them
    with pytest.raises(UnauthenticatedError, match="no longer an org admin"):
        there.session(carols)
    store.set_role("carol", "admin")
    with pytest.raises(UnauthenticatedError, match="has ended"):  # ended for good, not only while demoted
        here.session(carols)
    _, again = here.redeem(here.new_link("carol", record), "console:test")
    pending = here.new_link("carol", record)
    store.remove_users(["carol"], int(now[0] * 1e6))  # removed: the same
    _assert_no_console_left(replica, "carol")
    store.add_users(*_users(("carol", "admin")))  # a new admin of the same name: not the links' nor the sessions'
    for link in (waiting, pending):
        with pytest.raises(UnauthenticatedError, match="withdrawn"):
            here.redeem(link, "console:test")
    with pytest.raises(UnauthenticatedError, match="has ended"):
        here.session(again)


def _assert_no_console_left(store, admin: str) -> None:
    for left in ("SELECT 1 FROM console_sessions WHERE admin = ?", "SELECT 1 FROM console_links WHERE admin = ? AND used_us = 0"):
        assert not store.db.execute(left, (admin,)).fetchall(), left


def test_a_flat_transaction_takes_what_is_written_inside_it_whole_and_an_ordinary_one_undoes_a_failed_part(store, replica):
    """The record writer's transactions are flat (db.Database.writing(flat=True)): the writes made
    inside them by the store's own writing() blocks are part of them, with no savepoints (on
    PostgreSQL each savepoint and its release were round trips under the write lock), and a
    failure anywhere fails the whole. An ordinary transaction still undoes a failed inner block
    alone, and goes on."""

    class Refused(Exception):
        pass

    def fails_inside(flat: bool) -> None:
        with store.db.writing(flat=flat):
            store.set_meta("kept", "yes" if not flat else "flat")
            try:
                with store.db.writing():
                    store.set_meta("undone", "no")
                    raise Refused
            except Refused:
                pass

    fails_inside(flat=False)
    assert (replica.meta("kept"), replica.meta("undone")) == ("yes", None)  # the inner block alone undone
    fails_inside(flat=True)
    assert (replica.meta("kept"), replica.meta("undone")) == ("flat", "no")  # no savepoint: part of the whole
    with pytest.raises(Refused), store.db.writing(flat=True):
        store.set_meta("kept", "never")
        with store.db.writing():
            raise Refused
    assert replica.meta("kept") == "flat"  # the whole undone
