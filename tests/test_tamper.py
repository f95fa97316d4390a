"""A damaged record fails alone; a wrong key fails clearly and loses nothing: through the daemon
process, its CLI and its log. The store's checks at open are tested in process (test_vault_inproc.py)."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import wait_for
from qpu_broker.keys import crypto
from qpu_broker.store.db import TokenRecord
from qpu_broker.tokens import seals
from qpu_broker_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
)

from testsupport.store_edits import data_key, edit_store, put_back


def test_flipped_byte_and_swapped_rows_are_detected(make_daemon):
    d = make_daemon().start()
    api = d.broker().qpu_token
    ids = {n: api.create(name=n, provider="ibm", token=f"secret-{n}").id for n in ("flip", "swap1", "swap2", "intact")}
    assert d.stop() == 0

    def tamper(db):
        (ct,) = db.execute("SELECT ciphertext FROM tokens WHERE id = ?", (ids["flip"],)).fetchone()
        flipped = bytes([ct[0] ^ 0x01]) + ct[1:]
        db.execute("UPDATE tokens SET ciphertext = ? WHERE id = ?", (flipped, ids["flip"]))
        a = db.execute("SELECT nonce, ciphertext FROM tokens WHERE id = ?", (ids["swap1"],)).fetchone()
        b = db.execute("SELECT nonce, ciphertext FROM tokens WHERE id = ?", (ids["swap2"],)).fetchone()
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ? WHERE id = ?", (*b, ids["swap1"]))
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ? WHERE id = ?", (*a, ids["swap2"]))

    edit_store(d.paths.store, tamper)
    d.start()
    result = d.broker().check()
    assert result.checked == 4
    assert sorted(x.name for x in result.damaged) == ["flip", "swap1", "swap2"]
    r = d.cli("check")
    assert r.returncode == 1 and "name='flip'" in r.stdout and "4 checked, 3 damaged" in r.stdout

    # The rest of the store keeps working, and damaged records are kept, not dropped.
    api = d.broker().qpu_token
    assert len(api.get_all()[QpuTokenType.PERSONAL]) == 4
    api.update(qpu_token_name="intact", name="still-fine")
    api.create(name="new", provider="dwave", token="s")
    # Rotating a damaged record repairs it in place.
    api.update(qpu_token_id=ids["flip"], token="fresh-secret")
    assert sorted(x.name for x in d.broker().check().damaged) == ["swap1", "swap2"]


def test_wrong_key_file_is_a_clear_lock_not_an_empty_store(make_daemon):
    d = make_daemon().start()
    api = d.broker().qpu_token
    api.create(name="keep-me", provider="ionq", token="ionq-secret")
    assert d.stop() == 0
    good_key = d.paths.key_file.read_bytes()
    d.paths.key_file.write_bytes(b"A" * 44 + b"\n")

    d.start()
    status = d.broker().status()
    assert status.locked and "cannot unlock" in status.lock_reason and str(d.paths.key_file) in status.lock_reason
    with pytest.raises(LockedError, match="cannot unlock"):
        d.broker().qpu_token.create(name="x", provider="ibm", token="s")
    assert [t.name for t in d.broker().qpu_token.get_all()[QpuTokenType.PERSONAL]] == ["keep-me"]
    r = d.cli("token", "add", "x", "--provider", "ibm", input="s\n")
    assert r.returncode == 1 and "cannot unlock" in r.stderr

    d.paths.key_file.write_bytes(good_key)
    assert d.cli("unlock").returncode == 0
    assert not d.broker().status().locked
    assert d.broker().check().damaged == []


def test_store_from_a_newer_release_is_refused_untouched(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="t", provider="ibm", token="s")
    d.stop()
    edit_store(d.paths.store, lambda db: db.execute("PRAGMA user_version = 99"))
    before = d.paths.store.read_bytes()
    proc = d.spawn()
    assert proc.wait(timeout=30) == 1
    assert "schema 99, newer than this qpu-broker knows" in d.log() and "upgrade qpu-broker" in d.log()
    assert d.paths.store.read_bytes() == before


def test_schema_version_is_recorded(daemon):
    db = sqlite3.connect(daemon.paths.store)
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_swapped_names_are_detected_and_refused_not_used_for_the_wrong_token(rig):
    d, hw, _ = rig
    api = d.broker().qpu_token
    assert d.stop() == 0

    def swap(db):
        db.execute("UPDATE tokens SET name = 'tmp' WHERE name = 'my-dwave'")
        db.execute("UPDATE tokens SET name = 'my-dwave' WHERE name = 'my-ionq'")
        db.execute("UPDATE tokens SET name = 'my-ionq' WHERE name = 'tmp'")
        # and one edited column elsewhere: the created time of another row
        db.execute("UPDATE tokens SET created_us = created_us + 1 WHERE name = 'my-fujitsu'")

    edit_store(d.paths.store, swap)
    d.start()
    api = d.broker().qpu_token
    assert sorted(x.name for x in d.broker().check().damaged) == ["my-dwave", "my-fujitsu", "my-ionq"]
    for provider in ("dwave", "ionq", "fujitsu"):  # by name, each would now send the other's secret: refused
        with pytest.raises(FailedPreconditionError, match="does not open"):
            d.broker().forward("GET", hw.url(provider), provider=provider,
                               qpu_tokens=TokenProvider(**{provider: QpuToken("personal", name=f"my-{provider}")}))
    assert not any(s.seen for s in hw.servers.values())
    # Renaming cannot launder it (a rename re-seals, so it must open first); rotating repairs it.
    with pytest.raises(FailedPreconditionError, match="rotate it"):
        api.update(qpu_token_name="my-dwave", name="laundered")
    api.update(qpu_token_name="my-dwave", token=hw.secrets["dwave"])
    assert sorted(x.name for x in d.broker().check().damaged) == ["my-fujitsu", "my-ionq"]


def test_an_older_copy_of_the_store_put_back_is_reported_and_held_until_accepted(rig):
    d, hw, _ = rig
    api = d.broker().qpu_token
    assert d.stop() == 0
    backup = d.paths.store.read_bytes()  # the data dir's backup: no anchor in it
    d.start()
    api = d.broker().qpu_token
    api.update(qpu_token_name="my-ionq", token="rotated-away-is-this-one-not")  # the old secret must not come back
    api.delete(qpu_token_name="my-dwave")
    assert d.stop() == 0
    put_back(d, backup)
    d.start()
    status = d.broker().status()
    assert status.locked and "older than the last one this machine saw" in status.lock_reason
    assert "qpu-broker check --accept-rollback" in status.lock_reason
    assert "older than the last one" in d.log()
    with pytest.raises(LockedError, match="older than"):
        d.broker().forward("GET", hw.url("dwave"), provider="dwave",
                           qpu_tokens=TokenProvider(dwave=QpuToken("personal", name="my-dwave")))
    assert not hw.servers["dwave"].seen
    r = d.cli("check")
    assert r.returncode == 1 and r.stdout.startswith("rollback: the store is older"), r.stdout
    assert d.cli("unlock").returncode == 1  # unlocking is not accepting
    # The user restored it on purpose: one documented command.
    r = d.cli("check", "--accept-rollback")
    assert r.returncode == 0 and "0 damaged" in r.stdout, r.stdout + r.stderr
    assert not d.broker().status().locked
    assert d.stop() == 0
    d.start()  # accepted: no alarm any more
    assert not d.broker().status().locked


def test_a_token_past_its_expiry_is_refused_until_rotated_and_its_expiry_is_sealed(rig):
    d, hw, _ = rig
    api = d.broker().qpu_token
    short = api.create(name="short-lived", provider="ionq", token=hw.secrets["ionq"], expires_in=1)
    assert short.expires_at is not None and "expires_at=" in str(short)
    tokens = TokenProvider(ionq=QpuToken("personal", name="short-lived"))

    def expired():
        try:
            d.broker().forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=tokens)
        except FailedPreconditionError as exc:
            return str(exc)
        return None

    message = wait_for(expired, "the token to expire")
    assert "expired at" in message and "(qpu-broker token rotate 'short-lived' --expires-in 90d)" in message
    listed = d.cli("token", "list")
    assert "EXPIRES" in listed.stdout and "never" in listed.stdout  # the rig's other tokens never expire
    r = d.cli("token", "rotate", "short-lived", "--expires-in", "90d", input=hw.secrets["ionq"] + "\n")
    assert r.returncode == 0, r.stderr
    assert d.broker().forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=tokens).status_code == 200
    assert d.cli("token", "add", "bad", "--provider", "ibm", "--expires-in", "soon", input="s\n").returncode == 2
    # The expiry is sealed with the record: extending it on disk breaks the record.
    assert d.stop() == 0
    edit_store(d.paths.store, lambda db: db.execute(
        "UPDATE tokens SET expires_us = expires_us + 86400000000 WHERE name = 'short-lived'"))
    d.start()
    assert [x.name for x in d.broker().check().damaged] == ["short-lived"]


def test_a_held_store_takes_no_writes_and_stays_held(rig):
    d, _hw, _ = rig
    assert d.stop() == 0
    backup = d.paths.store.read_bytes()
    d.start()
    d.broker().qpu_token.update(qpu_token_name="my-ionq", token="rotated-secret")
    assert d.stop() == 0
    put_back(d, backup)
    edit_store(d.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'generation'"))  # no help
    d.start()
    for argv in (("token", "rm", "my-dwave"), ("org", "logout"), ("passphrase",)):
        r = d.cli(*argv, input="pw\n")
        assert r.returncode == 1 and "accept-rollback" in r.stderr, (argv, r.stderr)
    assert d.stop() == 0
    d.start()  # still held: nothing it refused could have cleared the alarm
    assert d.broker().status().locked and "older than" in d.broker().status().lock_reason


def test_a_backup_restored_under_a_running_daemon_is_caught_at_the_next_use(rig):
    d, hw, _ = rig
    api = d.broker().qpu_token
    backup = d.home.parent / "backup.db"
    live = sqlite3.connect(d.paths.store)
    live.backup(sqlite3.connect(backup))
    api.update(qpu_token_name="my-ionq", token="rotated-secret")
    api.delete(qpu_token_name="my-dwave")
    sqlite3.connect(backup).backup(live)  # what `sqlite3 store.db ".restore backup.db"` does
    live.close()
    with pytest.raises(LockedError, match="went back to generation"):
        d.broker().forward("GET", hw.url("dwave"), provider="dwave",
                           qpu_tokens=TokenProvider(dwave=QpuToken("personal", name="my-dwave")))
    assert not hw.servers["dwave"].seen
    assert d.broker().status().locked


def test_an_old_style_row_planted_in_a_current_store_is_refused_not_resealed(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="a", provider="ibm", token="a-secret")
    assert d.stop() == 0
    key = data_key(d)

    def plant(db):
        row = db.execute("SELECT id, kind, name, provider, created_us, updated_us, key_term FROM tokens").fetchone()
        record = TokenRecord(*row[:6])
        nonce, ct = crypto.seal(key, b"planted", seals.token_ad(record, row[6], 1))
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ?, seal = 1, name = 'renamed' WHERE id = ?",
                   (nonce, ct, row[0]))
        db.execute("DELETE FROM meta WHERE key = 'seal'")

    edit_store(d.paths.store, plant)
    d.start()
    assert [x.name for x in d.broker().check().damaged] == ["renamed"]


def test_lifetimes_out_of_range_are_refused_before_anything_is_stored(daemon):
    api = daemon.broker().qpu_token
    for too_long in (10**12, float("inf"), float("nan"), -1):
        with pytest.raises(InvalidArgumentError, match="lifetime"):
            api.create(name="t", provider="ibm", token="s", expires_in=too_long)
    assert daemon.cli("token", "add", "t", "--provider", "ibm", "--expires-in", "9999999w", input="s\n").returncode == 2
    assert daemon.cli("token", "list", "--offset", "99999999999999999999").returncode == 2
    assert api.get_all()[QpuTokenType.PERSONAL] == []
    assert daemon.cli("token", "list").returncode == 0


def test_a_rename_and_a_rotation_at_once_both_land_and_nothing_is_damaged(daemon):
    import threading

    api = daemon.broker().qpu_token
    for i in range(10):
        api.create(name=f"t{i}", provider="ibm", token=f"secret-{i}")
        created = api.get(f"t{i}")
        start = threading.Barrier(2)
        errors: list[Exception] = []

        def run(fn, errors=errors, start=start):
            start.wait()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - collected and checked below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(lambda i=i, c=created: daemon.broker().qpu_token.update(
                       qpu_token_id=c.id, name=f"r{i}"),)),
                   threading.Thread(target=run, args=(lambda i=i, c=created: daemon.broker().qpu_token.update(
                       qpu_token_id=c.id, token=f"rotated-{i}"),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert api.get(qpu_token_id=created.id).name == f"r{i}"
    assert daemon.broker().check().damaged == []


