"""A damaged record fails alone; a wrong key fails clearly and loses nothing."""

from __future__ import annotations

import os
import sqlite3

import pytest
from qpu_broker_client import LockedError, QpuTokenType


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
