"""A damaged record fails alone; a wrong key fails clearly and loses nothing."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from conftest import wait_for
from qpu_broker.keys import crypto
from qpu_broker.keys import kek as keys
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


def _edit_store(path, fn):
    db = sqlite3.connect(path)
    with db:
        fn(db)
    db.close()


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

    _edit_store(d.paths.store, tamper)
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


def test_missing_key_file_is_named(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="t", provider="ibm", token="s")
    d.stop()
    d.paths.key_file.rename(d.paths.key_file.with_suffix(".bak"))
    d.start()
    status = d.broker().status()
    assert status.locked and "missing" in status.lock_reason and str(d.paths.key_file) in status.lock_reason


def test_systemd_credential_seals_a_new_store(make_daemon, short_tmp):
    creds = short_tmp / "creds"
    creds.mkdir(mode=0o700)
    (creds / "qpu-broker.key").write_bytes(os.urandom(32))
    d = make_daemon(CREDENTIALS_DIRECTORY=str(creds)).start()
    assert d.broker().status().key_source == "credential"
    assert not d.paths.key_file.exists(), "a credential-sealed store makes no key file"
    d.broker().qpu_token.create(name="t", provider="ibm", token="s")
    d.stop()

    # Without the credential the store stays locked and says which credential it needs.
    d.env.pop("CREDENTIALS_DIRECTORY")
    d.start()
    status = d.broker().status()
    assert status.locked and "qpu-broker.key" in status.lock_reason and "LoadCredentialEncrypted" in status.lock_reason
    d.stop()
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start()
    assert not d.broker().status().locked and d.broker().check().checked == 1


def test_store_from_a_newer_release_is_refused_untouched(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="t", provider="ibm", token="s")
    d.stop()
    _edit_store(d.paths.store, lambda db: db.execute("PRAGMA user_version = 99"))
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

    _edit_store(d.paths.store, swap)
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


def _data_key(d) -> bytes:
    """White box: the data key of a key-file store, to forge what an older release wrote."""
    db = sqlite3.connect(d.paths.store)
    wrapped = db.execute("SELECT value FROM meta WHERE key = 'wrapped_key'").fetchone()[0]
    db.close()
    material = keys.read_material(d.paths.key_file, "key file")
    return keys.unwrap(keys.kek_from_material(material, keys.KeySource.KEY_FILE), bytes(wrapped), keys.KeySource.KEY_FILE)


def test_a_store_of_the_first_release_is_resealed_and_old_rows_are_refused_after(make_daemon):
    d = make_daemon().start()
    api = d.broker().qpu_token
    api.create(name="old", provider="ibm", token="old-secret")
    api.create(name="other", provider="ibm", token="other-secret")
    assert d.stop() == 0
    key = _data_key(d)

    def as_release_1(db, name):
        row = db.execute("SELECT id, kind, name, provider, created_us, updated_us, key_term FROM tokens WHERE name = ?",
                         (name,)).fetchone()
        record = TokenRecord(*row[:6])
        nonce, ct = crypto.seal(key, f"{name}-secret".encode(), seals.token_ad(record, row[6], 1))
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ?, seal = 1 WHERE id = ?", (nonce, ct, row[0]))

    def first_release(db):  # what the first release left: no seal, generation or store id, no anchor
        as_release_1(db, "old")
        db.execute("DELETE FROM meta WHERE key IN ('seal', 'generation', 'store_id')")

    _edit_store(d.paths.store, first_release)
    d.paths.key_file.with_name("store.generation").unlink()
    d.start()  # unlocked at start (key file): re-sealed at once
    assert d.broker().check().damaged == []
    db = sqlite3.connect(d.paths.store)
    assert {r[0] for r in db.execute("SELECT seal FROM tokens")} == {seals.SEAL}
    db.close()
    assert d.stop() == 0
    # A first-release row planted afterwards (from an old backup, say) is refused.
    _edit_store(d.paths.store, lambda db: as_release_1(db, "other"))
    d.start()
    assert [x.name for x in d.broker().check().damaged] == ["other"]


def _put_back(d, backup: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        d.paths.store.with_name(d.paths.store.name + suffix).unlink(missing_ok=True)
    d.paths.store.write_bytes(backup)


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
    _put_back(d, backup)
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
    _edit_store(d.paths.store, lambda db: db.execute(
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
    _put_back(d, backup)
    _edit_store(d.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'generation'"))  # no help
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
    key = _data_key(d)

    def plant(db):
        row = db.execute("SELECT id, kind, name, provider, created_us, updated_us, key_term FROM tokens").fetchone()
        record = TokenRecord(*row[:6])
        nonce, ct = crypto.seal(key, b"planted", seals.token_ad(record, row[6], 1))
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ?, seal = 1, name = 'renamed' WHERE id = ?",
                   (nonce, ct, row[0]))
        db.execute("DELETE FROM meta WHERE key = 'seal'")

    _edit_store(d.paths.store, plant)
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


def _meta(path, *keys_) -> dict[str, bytes]:
    db = sqlite3.connect(path)
    rows = dict(db.execute(f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(keys_))})", keys_))
    db.close()
    return rows


def _set_meta(**values):
    def edit(db):
        for key, value in values.items():
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    return edit


def test_an_older_copy_with_its_counter_raised_or_the_newest_counter_copied_in_is_held(rig):
    d, hw, _ = rig
    assert d.stop() == 0
    backup = d.paths.store.read_bytes()
    d.start()
    api = d.broker().qpu_token
    api.update(qpu_token_name="my-ionq", token="rotated-away-is-this-one-not")
    api.delete(qpu_token_name="my-dwave")
    assert d.stop() == 0
    newest = _meta(d.paths.store, "generation", "state_mac")
    dwave = TokenProvider(dwave=QpuToken("personal", name="my-dwave"))
    # Raise the old copy's counter past the anchor; or give it the newest store's counter and MAC.
    for forge in (_set_meta(generation=str(int(newest["generation"]) + 5).encode()), _set_meta(**newest)):
        _put_back(d, backup)
        _edit_store(d.paths.store, forge)
        d.start()
        status = d.broker().status()
        assert status.locked and "do not match its own record" in status.lock_reason, status.lock_reason
        assert "qpu-broker check --accept-rollback" in status.lock_reason
        with pytest.raises(LockedError, match="do not match"):
            d.broker().forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=dwave)
        assert not hw.servers["dwave"].seen
        r = d.cli("check")
        assert r.returncode == 1 and r.stdout.startswith("rollback: the store's contents"), r.stdout
        assert d.stop() == 0
    # Restored on purpose: accepted, it is used as it is, and sealed anew.
    d.start()
    r = d.cli("check", "--accept-rollback")
    assert r.returncode == 0 and "0 damaged" in r.stdout, r.stdout + r.stderr
    assert d.broker().forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=dwave).status_code == 200
    assert d.stop() == 0
    d.start()
    assert not d.broker().status().locked


def test_a_passphrase_store_is_verified_at_unlock_and_writes_wait_for_its_key(make_daemon):
    d = make_daemon().start()
    b = d.broker()
    b.qpu_token.create(name="kept", provider="ibm", token="kept-secret")
    b.qpu_token.create(name="gone", provider="ibm", token="gone-secret")
    assert b.change_passphrase(None, "pass phrase") == "passphrase"
    assert d.stop() == 0
    backup = d.paths.store.read_bytes()
    d.start()
    # Locked since start: a write is refused until the key has been at hand once...
    r = d.cli("token", "rm", "gone")
    assert r.returncode == 1 and "run 'qpu-broker unlock' first" in r.stderr, r.stderr
    d.broker().unlock("pass phrase")
    d.broker().lock()
    # ...and after that a locked agent still deletes (the key that seals the counter stays; it opens nothing).
    assert d.cli("token", "rm", "gone").returncode == 0
    assert d.stop() == 0
    newest = _meta(d.paths.store, "generation", "state_mac")
    _put_back(d, backup)
    _edit_store(d.paths.store, _set_meta(**newest))
    d.start()
    assert d.broker().status().locked  # as any passphrase store at start: the key is needed to tell
    with pytest.raises(FailedPreconditionError, match="do not match its own record"):
        d.broker().unlock("pass phrase")
    assert "accept-rollback" in d.broker().status().lock_reason
    r = d.cli("check", "--accept-rollback")
    assert r.returncode == 0 and "accepted as it is; it is locked: run 'qpu-broker unlock'" in r.stdout, r.stdout
    d.broker().unlock("pass phrase")
    assert [t.name for t in d.broker().qpu_token.get_all()[QpuTokenType.PERSONAL]] == ["kept", "gone"]  # as it is


def test_a_store_of_the_release_before_gets_its_first_mac_and_a_removed_one_is_caught(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="a", provider="ibm", token="a-secret")
    assert d.stop() == 0
    anchor = d.paths.key_file.with_name("store.generation")
    assert anchor.read_text().split()[2:] == ["mac"]
    # What the release before left: no MAC in the store, none expected by the anchor.
    _edit_store(d.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'state_mac'"))
    anchor.write_text(" ".join(anchor.read_text().split()[:2]) + "\n")
    d.start()
    assert not d.broker().status().locked and d.broker().check().damaged == []
    assert d.stop() == 0
    assert "state_mac" in _meta(d.paths.store, "state_mac") and anchor.read_text().split()[2:] == ["mac"]
    # From now on, a MAC taken away is an edit.
    _edit_store(d.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'state_mac'"))
    d.start()
    assert "do not match its own record" in d.broker().status().lock_reason


def test_a_store_file_with_an_added_index_view_or_trigger_or_without_its_keys_is_held(make_daemon):
    # An index or view added by hand could answer one read (the state check) with rows that
    # another read (a lookup) does not see; a table rebuilt without its keys could hold two
    # versions of a row. None of that is a store qpu-broker wrote.
    d = make_daemon().start()
    d.broker().qpu_token.create(name="a", provider="ibm", token="a-secret")
    assert d.stop() == 0
    pristine = d.paths.store.read_bytes()
    edits = [
        lambda db: db.execute("CREATE INDEX tokens_v ON tokens (updated_us, id)"),
        lambda db: db.execute("CREATE TRIGGER t AFTER UPDATE ON tokens BEGIN SELECT 1; END"),
        lambda db: db.execute("CREATE VIEW tokens_view AS SELECT * FROM tokens"),
        lambda db: db.executescript(
            "CREATE TABLE t2 AS SELECT * FROM tokens; DROP TABLE tokens; ALTER TABLE t2 RENAME TO tokens; "
            "CREATE INDEX tokens_by_kind ON tokens (kind); CREATE INDEX tokens_by_kind_provider ON tokens (kind, provider);"),
    ]
    for edit in edits:
        _put_back(d, pristine)
        _edit_store(d.paths.store, edit)
        d.start()
        status = d.broker().status()
        assert status.locked and "the store file was edited" in status.lock_reason, status.lock_reason
        assert "not what putting back a backup does" in status.lock_reason
        assert "Traceback" not in d.log()
        assert d.stop() == 0
    _put_back(d, pristine)
    d.start()
    assert not d.broker().status().locked


def test_a_store_emptied_by_hand_or_with_a_garbled_counter_is_held_not_adopted(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="a", provider="ibm", token="a-secret")
    assert d.stop() == 0
    pristine = d.paths.store.read_bytes()
    edits = [  # emptied, with a store id of its own: "brand new" only if this daemon made it
        lambda db: db.executescript("DELETE FROM tokens; DELETE FROM meta WHERE key IN ('generation', 'state_mac');"
                                    "UPDATE meta SET value = CAST('0123456789abcdef' AS BLOB) WHERE key = 'store_id';"),
        lambda db: db.execute("UPDATE meta SET value = 'abc' WHERE key = 'generation'"),
        lambda db: db.execute("UPDATE meta SET value = 9 WHERE key = 'generation'"),  # an INTEGER, not text
        lambda db: db.execute("UPDATE meta SET value = CAST(X'FFFE' AS BLOB) WHERE key = 'store_id'"),
    ]
    for edit in edits:
        _put_back(d, pristine)
        _edit_store(d.paths.store, edit)
        d.start()
        assert d.broker().status().locked, d.log()
        assert "Traceback" not in d.log()
        assert d.stop() == 0


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


def test_a_default_token_switched_by_hand_is_held(make_daemon):
    """Which token exec uses for a provider is part of the store's sealed state: pointing the
    default at another of the user's tokens by editing the file is caught like any edit."""
    d = make_daemon().start()
    api = d.broker().qpu_token
    first, second = api.create(name="a", provider="dwave", token="a-secret"), api.create(name="b", provider="dwave", token="b-secret")
    api.set_default("a")
    assert d.stop() == 0
    _edit_store(d.paths.store, lambda db: db.execute("UPDATE meta SET value = ? WHERE key = 'default_tokens'",
                                                     (json.dumps({"dwave": second.id}).encode(),)))
    d.start()
    assert d.broker().status().locked, d.log()
    assert first.id != second.id and "Traceback" not in d.log()
