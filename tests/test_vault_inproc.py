"""The vault in process (testsupport/inproc.py): its integrity checks at open, its lock and its
passphrase back-off, with a restart being the store closed and opened again as the daemon opens it.

Moved here from test_tamper.py and test_lock.py, where each start of a daemon process was only
the way to reach open_vault: names and assertions kept, the daemon's status read from the
vault's parts (as the Status and Check servicers read them), clocks injected instead of waited on.
What only the process shows (the CLI, the socket, key material from the environment) stays there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3

import pytest
from qpu_broker.keys import crypto
from qpu_broker.keys.kek import KeySource
from qpu_broker.store.db import TokenRecord
from qpu_broker.tokens import seals
from qpu_broker_client import (
    FailedPreconditionError,
    LockedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)

from testsupport.inproc import InProcess, personal
from testsupport.store_edits import data_key, edit_store, meta, put_back, set_meta


def _tracebacks(caplog) -> list[str]:
    """What the daemon's log would show as a traceback: a record logged with an exception."""
    return [r.getMessage() for r in caplog.records if r.exc_info]


@pytest.fixture
def first(short_tmp):
    """A store with one token, closed: what a daemon leaves when it stops."""
    parts = InProcess(short_tmp / "home")
    parts.create("a", "ibm", "a-secret")
    parts.close()
    return parts


def test_a_store_file_with_an_added_index_view_or_trigger_or_without_its_keys_is_held(first, caplog):
    # An index or view added by hand could answer one read (the state check) with rows that
    # another read (a lookup) does not see; a table rebuilt without its keys could hold two
    # versions of a row. None of that is a store qpu-broker wrote.
    caplog.set_level(logging.INFO)
    pristine = first.paths.store.read_bytes()
    edits = [
        lambda db: db.execute("CREATE INDEX tokens_v ON tokens (updated_us, id)"),
        lambda db: db.execute("CREATE TRIGGER t AFTER UPDATE ON tokens BEGIN SELECT 1; END"),
        lambda db: db.execute("CREATE VIEW tokens_view AS SELECT * FROM tokens"),
        lambda db: db.executescript(
            "CREATE TABLE t2 AS SELECT * FROM tokens; DROP TABLE tokens; ALTER TABLE t2 RENAME TO tokens; "
            "CREATE INDEX tokens_by_kind ON tokens (kind); CREATE INDEX tokens_by_kind_provider ON tokens (kind, provider);"),
    ]
    for edit in edits:
        put_back(first, pristine)
        edit_store(first.paths.store, edit)
        parts = InProcess(first.home)
        status = parts.vault.agent.key_status()
        assert status.locked and "the store file was edited" in status.lock_reason, status.lock_reason
        assert "not what putting back a backup does" in status.lock_reason
        assert _tracebacks(caplog) == []
        parts.close()
    put_back(first, pristine)
    parts = InProcess(first.home)
    assert not parts.vault.agent.key_status().locked
    parts.close()


def test_a_store_emptied_by_hand_or_with_a_garbled_counter_is_held_not_adopted(first, caplog):
    caplog.set_level(logging.INFO)
    pristine = first.paths.store.read_bytes()
    edits = [  # emptied, with a store id of its own: "brand new" only if this daemon made it
        lambda db: db.executescript("DELETE FROM tokens; DELETE FROM meta WHERE key IN ('generation', 'state_mac');"
                                    "UPDATE meta SET value = CAST('0123456789abcdef' AS BLOB) WHERE key = 'store_id';"),
        lambda db: db.execute("UPDATE meta SET value = 'abc' WHERE key = 'generation'"),
        lambda db: db.execute("UPDATE meta SET value = 9 WHERE key = 'generation'"),  # an INTEGER, not text
        lambda db: db.execute("UPDATE meta SET value = CAST(X'FFFE' AS BLOB) WHERE key = 'store_id'"),
    ]
    for edit in edits:
        put_back(first, pristine)
        edit_store(first.paths.store, edit)
        parts = InProcess(first.home)
        assert parts.vault.agent.key_status().locked
        assert _tracebacks(caplog) == []
        parts.close()


def test_a_store_of_the_release_before_gets_its_first_mac_and_a_removed_one_is_caught(first):
    anchor = first.paths.key_file.with_name("store.generation")
    assert anchor.read_text().split()[2:] == ["mac"]
    # What the release before left: no MAC in the store, none expected by the anchor.
    edit_store(first.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'state_mac'"))
    anchor.write_text(" ".join(anchor.read_text().split()[:2]) + "\n")
    parts = InProcess(first.home)
    assert not parts.vault.agent.key_status().locked and parts.run(parts.vault.personal.check())[1] == []
    parts.close()
    assert "state_mac" in meta(first.paths.store, "state_mac") and anchor.read_text().split()[2:] == ["mac"]
    # From now on, a MAC taken away is an edit.
    edit_store(first.paths.store, lambda db: db.execute("DELETE FROM meta WHERE key = 'state_mac'"))
    parts = InProcess(first.home)
    assert "do not match its own record" in parts.vault.agent.key_status().lock_reason
    parts.close()


def test_a_default_token_switched_by_hand_is_held(short_tmp):
    """Which token exec uses for a provider is part of the store's sealed state: pointing the
    default at another of the user's tokens by editing the file is caught like any edit."""
    parts = InProcess(short_tmp / "home")
    first, second = parts.create("a", "dwave", "a-secret"), parts.create("b", "dwave", "b-secret")
    parts.run(parts.vault.personal.set_default("dwave", first))
    parts.close()
    edit_store(parts.paths.store, lambda db: db.execute("UPDATE meta SET value = ? WHERE key = 'default_tokens'",
                                                         (json.dumps({"dwave": second.id}).encode(),)))
    parts = InProcess(short_tmp / "home")
    assert parts.vault.agent.key_status().locked
    assert first.id != second.id
    parts.close()


class _Clock:
    """The Keyring's monotonic clock, moved by the test instead of waited on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _retry_wait(exc: BaseException) -> float:
    return float(re.search(r"try again in ([0-9.]+) s", str(exc)).group(1))


def _attempt(parts: InProcess, clock: _Clock, call):
    """One unlock (or change) attempt, made again once each back-off has passed on `clock`."""
    while True:
        try:
            return parts.run(call())
        except ResourceExhaustedError as exc:
            clock.now += _retry_wait(exc) + 0.05


def test_passphrase_set_change_remove_and_backoff(short_tmp):
    clock = _Clock()
    parts = InProcess(short_tmp / "home", monotonic=clock)
    agent = parts.vault.agent
    tok = parts.create("kept", "fujitsu", "fj-secret")
    assert parts.run(agent.change_passphrase(b"", b"first pass")) is KeySource.PASSPHRASE
    assert not parts.paths.key_file.exists(), "the key file no longer opens anything and must go"
    parts.close()

    parts = InProcess(short_tmp / "home", monotonic=clock)
    agent = parts.vault.agent
    s = agent.key_status()
    assert s.locked and s.source is KeySource.PASSPHRASE and "qpu-broker unlock" in s.lock_reason
    with pytest.raises(LockedError):
        parts.create("x", "ibm", "s")

    # Wrong passphrases back off: 0.1 s, doubling to 10 s, on the daemon's monotonic clock.
    waits = []
    for _ in range(5):
        with pytest.raises(UnauthenticatedError, match="wrong passphrase"):
            _attempt(parts, clock, lambda: agent.unlock(b"wrong"))
        with pytest.raises(ResourceExhaustedError) as refused:
            parts.run(agent.unlock(b"first pass"))  # right passphrase, too soon: refused without trying it
        waits.append(_retry_wait(refused.value))
    assert waits[-1] > 0.8 and all(w <= 0.1 * 2**i for i, w in enumerate(waits)), waits
    assert agent.locked
    _attempt(parts, clock, lambda: agent.unlock(b"first pass"))
    assert not agent.locked

    with pytest.raises(UnauthenticatedError, match="current passphrase is wrong"):
        parts.run(agent.change_passphrase(b"not it", b"second pass"))
    _attempt(parts, clock, lambda: agent.change_passphrase(b"first pass", b"second pass"))
    parts.close()
    parts = InProcess(short_tmp / "home", monotonic=clock)
    agent = parts.vault.agent
    with pytest.raises(UnauthenticatedError):
        parts.run(agent.unlock(b"first pass"))
    _attempt(parts, clock, lambda: agent.unlock(b"second pass"))
    assert parts.vault.personal.find("personal", token_id=tok.id).name == "kept"
    assert parts.run(parts.vault.personal.check())[1] == []

    assert parts.run(agent.change_passphrase(b"second pass", b"")) is KeySource.KEY_FILE
    assert parts.paths.key_file.exists()
    parts.close()
    parts = InProcess(short_tmp / "home", monotonic=clock)
    assert not parts.vault.agent.locked  # a key file needs no prompt
    assert parts.run(parts.vault.personal.check())[0] == 1
    parts.close()


def test_missing_key_file_is_named(first):
    first.paths.key_file.rename(first.paths.key_file.with_suffix(".bak"))
    parts = InProcess(first.home)
    status = parts.vault.agent.key_status()
    assert status.locked and "missing" in status.lock_reason and str(first.paths.key_file) in status.lock_reason
    parts.close()


def test_systemd_credential_seals_a_new_store(short_tmp):
    creds = short_tmp / "creds"
    creds.mkdir(mode=0o700)
    (creds / "qpu-broker.key").write_bytes(os.urandom(32))
    parts = InProcess(short_tmp / "home", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert parts.vault.agent.key_status().source is KeySource.CREDENTIAL
    assert not parts.paths.key_file.exists(), "a credential-sealed store makes no key file"
    parts.create("t", "ibm", "s")
    parts.close()

    # Without the credential the store stays locked and says which credential it needs.
    parts = InProcess(short_tmp / "home", {})
    status = parts.vault.agent.key_status()
    assert status.locked and "qpu-broker.key" in status.lock_reason and "LoadCredentialEncrypted" in status.lock_reason
    parts.close()
    parts = InProcess(short_tmp / "home", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert not parts.vault.agent.locked and parts.run(parts.vault.personal.check())[0] == 1
    parts.close()


def test_a_store_of_the_first_release_is_resealed_and_old_rows_are_refused_after(short_tmp):
    parts = InProcess(short_tmp / "home")
    parts.create("old", "ibm", "old-secret")
    parts.create("other", "ibm", "other-secret")
    parts.close()
    key = data_key(parts)

    def as_release_1(db, name):
        row = db.execute("SELECT id, kind, name, provider, created_us, updated_us, key_term FROM tokens WHERE name = ?",
                         (name,)).fetchone()
        record = TokenRecord(*row[:6])
        nonce, ct = crypto.seal(key, f"{name}-secret".encode(), seals.token_ad(record, row[6], 1))
        db.execute("UPDATE tokens SET nonce = ?, ciphertext = ?, seal = 1 WHERE id = ?", (nonce, ct, row[0]))

    def first_release(db):  # what the first release left: no seal, generation or store id, no anchor
        as_release_1(db, "old")
        db.execute("DELETE FROM meta WHERE key IN ('seal', 'generation', 'store_id')")

    edit_store(parts.paths.store, first_release)
    parts.paths.key_file.with_name("store.generation").unlink()
    parts = InProcess(short_tmp / "home")  # unlocked at start (key file): re-sealed at once
    assert parts.run(parts.vault.personal.check())[1] == []
    db = sqlite3.connect(parts.paths.store)
    assert {r[0] for r in db.execute("SELECT seal FROM tokens")} == {seals.SEAL}
    db.close()
    parts.close()
    # A first-release row planted afterwards (from an old backup, say) is refused.
    edit_store(parts.paths.store, lambda db: as_release_1(db, "other"))
    parts = InProcess(short_tmp / "home")
    assert [x.record.name for x in parts.run(parts.vault.personal.check())[1]] == ["other"]
    parts.close()


def test_an_older_copy_with_its_counter_raised_or_the_newest_counter_copied_in_is_held(inproc_rig):
    parts, hw, _ = inproc_rig
    home = parts.home
    parts.close()
    backup = parts.paths.store.read_bytes()
    parts = InProcess(home)
    tokens = parts.vault.personal
    parts.run(tokens.update(tokens.find("personal", name="my-ionq"), name=None, secret=b"rotated-away-is-this-one-not"))
    parts.run(tokens.delete(tokens.find("personal", name="my-dwave")))
    parts.close()
    newest = meta(parts.paths.store, "generation", "state_mac")
    dwave = {"dwave": personal("my-dwave")}
    # Raise the old copy's counter past the anchor; or give it the newest store's counter and MAC.
    for forge in (set_meta(generation=str(int(newest["generation"]) + 5).encode()), set_meta(**newest)):
        put_back(parts, backup)
        edit_store(parts.paths.store, forge)
        parts = InProcess(home)
        status = parts.vault.agent.key_status()
        assert status.locked and "do not match its own record" in status.lock_reason, status.lock_reason
        assert "qpu-broker check --accept-rollback" in status.lock_reason
        with pytest.raises(LockedError, match="do not match"):
            parts.forward("GET", hw.url("dwave"), "dwave", dwave)
        assert not hw.servers["dwave"].seen
        assert parts.vault.agent.rollback.startswith("the store's contents"), parts.vault.agent.rollback  # what Check says
        parts.close()
    # Restored on purpose: accepted, it is used as it is, and sealed anew.
    parts = InProcess(home)
    parts.run(parts.vault.agent.accept_rollback())
    assert parts.vault.agent.rollback == "" and parts.run(parts.vault.personal.check())[1] == []
    assert parts.forward("GET", hw.url("dwave"), "dwave", dwave).status == 200
    parts.close()
    parts = InProcess(home)
    assert not parts.vault.agent.locked
    parts.close()


def test_a_passphrase_store_is_verified_at_unlock_and_writes_wait_for_its_key(short_tmp):
    parts = InProcess(short_tmp / "home")
    agent, tokens = parts.vault.agent, parts.vault.personal
    parts.create("kept", "ibm", "kept-secret")
    parts.create("gone", "ibm", "gone-secret")
    assert parts.run(agent.change_passphrase(b"", b"pass phrase")) is KeySource.PASSPHRASE
    parts.close()
    backup = parts.paths.store.read_bytes()
    parts = InProcess(short_tmp / "home")
    agent, tokens = parts.vault.agent, parts.vault.personal
    # Locked since start: a write is refused until the key has been at hand once...
    with pytest.raises(LockedError, match="run 'qpu-broker unlock' first"):
        parts.run(tokens.delete(tokens.find("personal", name="gone")))
    parts.run(agent.unlock(b"pass phrase"))
    agent.lock()
    # ...and after that a locked agent still deletes (the key that seals the counter stays; it opens nothing).
    parts.run(tokens.delete(tokens.find("personal", name="gone")))
    parts.close()
    newest = meta(parts.paths.store, "generation", "state_mac")
    put_back(parts, backup)
    edit_store(parts.paths.store, set_meta(**newest))
    parts = InProcess(short_tmp / "home")
    agent, tokens = parts.vault.agent, parts.vault.personal
    assert agent.locked  # as any passphrase store at start: the key is needed to tell
    with pytest.raises(FailedPreconditionError, match="do not match its own record"):
        parts.run(agent.unlock(b"pass phrase"))
    assert "accept-rollback" in agent.key_status().lock_reason
    parts.run(agent.accept_rollback())  # what 'check --accept-rollback' calls
    assert agent.rollback == "" and agent.locked  # accepted as it is; it is locked: unlock
    parts.run(agent.unlock(b"pass phrase"))
    assert [t.name for t in tokens.list("", 10, 0)[0]] == ["kept", "gone"]  # as it is
    parts.close()
