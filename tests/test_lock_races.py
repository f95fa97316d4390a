"""Lock, unlock and passphrase changes racing writes: a key read while it is being wiped.

The data key is read on the store's writer thread (a rotation seals there) and wiped on the
event loop (lock, passphrase change). A wipe zero-fills, then munlocks through ctypes (other
threads run), then closes: a read in that window got 32 zero bytes, sealed under them, and the
write was acknowledged (a false tamper alarm after, and a secret anyone could open).

The first tests pause a wipe in that window through its seam and run a real write in it; the
hammer races the real daemon's lock, unlock and passphrase changes against writes
(QPU_BROKER_TEST_RACE_SECONDS runs it longer than the suite's few seconds).

Then a lock or hold that comes while an unlock or passphrase change runs: the tests pause
Argon2 (the slow step both wait on) and lock in the pause. Once `lock` has answered, the agent
stays locked until an unlock asked for after it; an unlock overtaken by a lock or hold answers
with what happened, after every listener heard whatever it was told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import sqlite3
import sys
import threading
import time

import pytest
from conftest import DEADLINE, wait_for
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from qpu_broker.common.config import Config
from qpu_broker.common.hardening import LockedBuffer, LockedSecrets
from qpu_broker.daemon.main import Vault, open_vault
from qpu_broker.keys import crypto
from qpu_broker.keys.data_key import Keyring
from qpu_broker.keys.kek import KeySource
from qpu_broker.tokens.audit_log import AuditLog
from qpu_broker.tokens.events import Events, Locked, Unlocked
from qpu_broker_client import (
    FailedPreconditionError,
    LockedError,
    QpuBrokerError,
    QpuToken,
    TokenProvider,
)

ZERO_KEY = bytes(32)


def _opens_under_zero_key(store: pathlib.Path) -> list[str]:
    """Ids of the rows that open under an all-zero key (with the associated data the vault binds)."""
    from qpu_broker.store.db import Store
    from qpu_broker.tokens.seals import token_ad

    found = []
    db = Store(store)
    try:
        for record, sealed in db.all_sealed():
            try:
                AESGCM(ZERO_KEY).decrypt(sealed.nonce, sealed.ciphertext, token_ad(record, sealed.key_term,
                                                                                   sealed.seal))
                found.append(record.id)
            except InvalidTag:
                pass
    finally:
        db.close()
    return found


def _writer_waits_for_the_key() -> bool:
    """The store's writer thread is inside Keyring.key (waiting for the lock a wipe holds)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return any(names.get(ident, "").startswith("store-writer") and frame.f_code is Keyring.key.__code__
               for ident, frame in sys._current_frames().items())


def _pause_wipes(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Every wipe stops between its zero-fill and its close (at munlock) until `go` is set;
    `in_wipe` is set once one is there."""
    in_wipe, go = threading.Event(), threading.Event()
    unlock_pages = LockedBuffer._unlock_pages

    def paused(buffer: LockedBuffer) -> None:
        in_wipe.set()
        assert go.wait(DEADLINE)
        unlock_pages(buffer)

    monkeypatch.setattr(LockedBuffer, "_unlock_pages", paused)
    return in_wipe, go


@pytest.fixture
def vault(short_tmp):
    # A fast KDF: the passphrase change's calibration is not what is tested here.
    v = open_vault(dataclasses.replace(Config(), kdf_seconds=0.001), short_tmp / "store.db", short_tmp / "store.key",
              Events(), environ={})
    yield v
    v.close()


def test_a_rotation_during_a_wipe_never_seals_under_the_zeroed_key(vault, short_tmp, monkeypatch):
    # A passphrase change used to swap the key's buffer too (a wipe of the old one); it no longer
    # touches the key in memory (test_a_lock_during_a_passphrase_change_stays_locked).
    record = asyncio.run(vault.personal.create("personal", "t", "ibm", b"first"))
    in_wipe, go = _pause_wipes(monkeypatch)
    dropper = threading.Thread(target=vault.agent.lock)
    dropper.start()
    assert in_wipe.wait(DEADLINE)

    outcome: list[object] = []

    def rotate() -> None:
        try:
            outcome.append(asyncio.run(vault.personal.update(record, name=None, secret=b"rotated")))
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            outcome.append(exc)

    writer = threading.Thread(target=rotate)
    writer.start()
    # The rotation either finished inside the window (it read the key mid-wipe) or waits at the
    # key's lock on the writer thread; only then does the wipe go on.
    wait_for(lambda: outcome or _writer_waits_for_the_key(), "the rotation to read the key or wait for it")
    go.set()
    writer.join(DEADLINE)
    dropper.join(DEADLINE)
    assert not writer.is_alive() and not dropper.is_alive()

    asyncio.run(vault.agent.unlock(b""))
    checked, damaged = asyncio.run(vault.personal.check())
    assert [d.record.id for d in damaged] == [], "a write was sealed under the wiped (all-zero) key"
    assert checked == 1
    assert _opens_under_zero_key(short_tmp / "store.db") == []
    assert isinstance(outcome[0], LockedError), outcome  # the key is gone: refused, nothing written
    assert vault.personal.secret(record).reveal() == b"first"


def test_a_cached_secret_read_during_a_clear_is_a_miss_not_zeros(monkeypatch):
    secrets: LockedSecrets[str, int] = LockedSecrets()
    secrets.put("t", b"cached secret", 1)
    in_wipe, go = _pause_wipes(monkeypatch)
    clearing = threading.Thread(target=secrets.clear)  # a lock's Locked event, heard off the loop
    clearing.start()
    assert in_wipe.wait(DEADLINE)
    try:
        got = secrets.get("t")
    finally:
        go.set()
        clearing.join(DEADLINE)
    assert got is None, got


def test_nothing_is_sealed_opened_or_derived_under_an_all_zero_key():
    # The last guard, should a wiped key ever be read again.
    with pytest.raises(crypto.ZeroKeyError):
        crypto.seal(ZERO_KEY, b"secret", b"ad")
    nonce, sealed = crypto.seal(crypto.new_key(), b"secret", b"ad")
    with pytest.raises(crypto.ZeroKeyError):
        crypto.open_sealed(ZERO_KEY, nonce, sealed, b"ad")
    with pytest.raises(crypto.ZeroKeyError):
        crypto.derive_subkey(ZERO_KEY, b"audit log")


# -- a lock or hold while an unlock or passphrase change runs ----------------------------------
HELD = "the store went back to generation 1 while this daemon ran (it had written 2): a backup was put back"


def _pause_argon2(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The next Argon2 derivation stops before it starts until `go` is set; `in_kdf` once it is there."""
    in_kdf, go = threading.Event(), threading.Event()
    derive = crypto.PassphraseKdf.derive

    def paused(kdf: crypto.PassphraseKdf, passphrase: bytes) -> bytes:
        if not in_kdf.is_set():
            in_kdf.set()
            assert go.wait(DEADLINE)
        return derive(kdf, passphrase)

    monkeypatch.setattr(crypto.PassphraseKdf, "derive", paused)
    return in_kdf, go


async def _during_argon2(monkeypatch, call, meanwhile) -> object:
    """Run `call()` until it is inside Argon2, run `meanwhile()` on the loop, then let it finish:
    its result, or the error it raised."""
    in_kdf, go = _pause_argon2(monkeypatch)
    task = asyncio.ensure_future(call())
    await asyncio.to_thread(in_kdf.wait, DEADLINE)
    assert in_kdf.is_set() and not task.done()
    meanwhile()
    go.set()
    try:
        return await task
    except QpuBrokerError as exc:
        return exc


@pytest.fixture
def passphrase_vault(vault):
    asyncio.run(vault.agent.change_passphrase(b"", b"old pass"))
    vault.agent.lock()
    return vault


def test_a_lock_during_a_passphrase_change_stays_locked(vault, short_tmp, monkeypatch):
    record = asyncio.run(vault.personal.create("personal", "t", "ibm", b"kept"))
    source = asyncio.run(_during_argon2(monkeypatch, lambda: vault.agent.change_passphrase(b"", b"new pass"), vault.agent.lock))
    # The change was asked for and answered: its wrapping is written. The key is not put back.
    assert source is KeySource.PASSPHRASE
    assert vault.agent.locked and "locked by request" in vault.agent.key_status().lock_reason
    with pytest.raises(LockedError):
        vault.personal.secret(record)
    assert not (short_tmp / "store.key").exists()
    assert vault.agent.key_status().source is KeySource.PASSPHRASE
    asyncio.run(vault.agent.unlock(b"new pass"))  # what the user was told is what the store holds
    assert vault.personal.secret(record).reveal() == b"kept"


def test_a_lock_during_the_change_of_a_passphrase_stays_locked(passphrase_vault, monkeypatch):
    v = passphrase_vault
    asyncio.run(v.agent.unlock(b"old pass"))
    source = asyncio.run(_during_argon2(monkeypatch, lambda: v.agent.change_passphrase(b"old pass", b"new pass"), v.agent.lock))
    assert source is KeySource.PASSPHRASE and v.agent.locked
    asyncio.run(v.agent.unlock(b"new pass"))
    assert not v.agent.locked


def test_an_unlock_a_lock_overtakes_is_refused_and_the_agent_stays_locked(passphrase_vault, monkeypatch):
    v = passphrase_vault
    heard: list[object] = []
    v.agent._events.subscribe(heard.append)
    outcome = asyncio.run(_during_argon2(monkeypatch, lambda: v.agent.unlock(b"old pass"), v.agent.lock))
    assert isinstance(outcome, LockedError) and "locked while this unlock was under way" in str(outcome), outcome
    assert v.agent.locked and Unlocked() not in heard
    asyncio.run(v.agent.unlock(b"old pass"))  # an unlock asked for after the lock unlocks
    assert not v.agent.locked and heard[-1] == Unlocked()


def test_a_passphrase_change_of_a_locked_agent_unlocks_it_as_unlock_does(passphrase_vault):
    heard: list[object] = []
    passphrase_vault.agent._events.subscribe(heard.append)
    asyncio.run(passphrase_vault.agent.change_passphrase(b"old pass", b"new pass"))
    assert not passphrase_vault.agent.locked and Unlocked() in heard  # the audit log and org link hear it


def _hold_on_the_writer(v: Vault) -> None:
    """A hold as a write that finds the store put back makes it: on the store's writer thread."""
    v.integrity._write_pool.submit(v.integrity.hold, HELD).result(DEADLINE)


def test_an_unlock_a_hold_overtakes_during_argon2_answers_the_hold(passphrase_vault, monkeypatch):
    v = passphrase_vault
    outcome = asyncio.run(_during_argon2(monkeypatch, lambda: v.agent.unlock(b"old pass"),
                                         lambda: _hold_on_the_writer(v)))
    assert isinstance(outcome, FailedPreconditionError) and HELD in str(outcome), outcome
    assert v.agent.locked and HELD in v.agent.key_status().lock_reason


def test_an_unlock_a_hold_overtakes_while_listeners_hear_it_answers_the_hold(short_tmp, caplog):
    """The daemon's wiring: the audit log, then a listener after it (the sessions, say). The hold
    lands as the audit log takes the chain up, so the key it reads is gone."""
    heard: list[object] = []

    async def scenario() -> object:
        events = Events(asyncio.get_running_loop())
        v = open_vault(dataclasses.replace(Config(), kdf_seconds=0.001), short_tmp / "store.db", short_tmp / "store.key",
                  events, environ={})

        def key_once_held() -> bytes:
            if not v.agent.rollback:
                _hold_on_the_writer(v)
            return v.keys.key()

        audit = AuditLog(short_tmp / "audit.log", short_tmp / "audit.anchor", key_once_held)
        events.subscribe(audit.on_event)
        events.subscribe(heard.append)
        try:
            v.agent.lock()
            heard.clear()
            try:
                await v.agent.unlock(b"")
            except QpuBrokerError as exc:
                return exc
            return None
        finally:
            v.close()

    with caplog.at_level(logging.WARNING):
        outcome = asyncio.run(scenario())
    assert isinstance(outcome, FailedPreconditionError) and HELD in str(outcome), outcome
    assert heard[:2] == [Unlocked(), Locked()]  # every listener heard both, in the order they came
    failures = [r.getMessage() for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == 1 and failures[0].startswith("AuditLog.on_event failed on Unlocked: the agent is locked")


def test_after_lock_answered_during_a_passphrase_change_the_daemon_stays_locked(rig):
    """The real daemon: Argon2 made slow enough (0.5 s) that a lock sent once the change says it is
    deriving lands inside it."""
    d, hw, _ = rig
    with open(d.home / "config.toml", "a") as f:
        f.write("[store]\nkdf_seconds = 0.5\n")
    b = d.broker()
    b.reload()
    answered: list[object] = []

    def change() -> None:
        try:
            answered.append(d.broker().change_passphrase(None, "new pass"))
        except QpuBrokerError as exc:
            answered.append(exc)

    changer = threading.Thread(target=change)
    changer.start()
    wait_for(lambda: "passphrase change: deriving" in d.log(), "the change to reach Argon2")
    b.lock()
    status = b.status()
    with pytest.raises(LockedError, match="locked") as refused:
        b.forward("GET", hw.url("dwave"), provider="dwave",
                  qpu_tokens=TokenProvider(dwave=QpuToken("personal", name="my-dwave")))
    changer.join(DEADLINE)
    assert answered == ["passphrase"]
    assert status.locked and refused.value.code == "FAILED_PRECONDITION"
    log = d.log()
    assert log.index("locked: data key dropped") < log.index("passphrase set: data key re-wrapped"), \
        "the lock did not land inside the change"
    assert b.status().locked, "the change put the key back after lock answered"
    assert not hw.servers["dwave"].seen
    b.unlock("new pass")
    assert not b.status().locked


# -- the hammer: the real daemon --------------------------------------------------------------
RACE_SECONDS = float(os.environ.get("QPU_BROKER_TEST_RACE_SECONDS", "4"))
PASSPHRASE = "race passphrase"


@dataclasses.dataclass
class Tally:
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, what: str, exc: BaseException | None = None) -> None:
        outcome = "ok" if exc is None else ("locked" if isinstance(exc, LockedError) else type(exc).__name__)
        with self.lock:
            key = f"{what} {outcome}"
            self.counts[key] = self.counts.get(key, 0) + 1
            # Locked is the one expected refusal; anything else (INTERNAL above all) is a bug.
            if exc is not None and not isinstance(exc, LockedError):
                self.unexpected.append(f"{what}: {type(exc).__name__}: {exc}")


def _run_until(deadline: float, tally: Tally, what: str, step) -> None:
    while time.monotonic() < deadline:
        try:
            step()
            tally.add(what)
        except QpuBrokerError as exc:
            tally.add(what, exc)
        except Exception as exc:  # noqa: BLE001 - counted and failed on below, not lost in a thread
            tally.add(what, exc)
            return


@pytest.mark.timeout(RACE_SECONDS + 120)
def test_lock_unlock_and_passphrase_changes_racing_writes(make_daemon):
    d = make_daemon().start("--log-level", "warning")
    b = d.broker()
    tally = Tally()
    # Each writer owns its tokens, so the last acknowledged secret and name of each are known.
    expected: dict[str, tuple[str, str]] = {}  # token id -> (name, secret)
    deadline = time.monotonic() + RACE_SECONDS

    seeds = {n: b.qpu_token.create(name=f"w{n}-0", provider="ibm", token=f"s{n}-0").id for n in range(3)}
    for n, token_id in seeds.items():
        expected[token_id] = (f"w{n}-0", f"s{n}-0")

    def writer(n: int) -> None:
        client = d.broker()
        mine = [seeds[n]]
        step = 0

        def write() -> None:
            nonlocal step
            step += 1
            token_id = mine[step % len(mine)]
            name, secret = expected[token_id]
            if step % 3 == 0:
                new_name = f"w{n}-{step}"
                client.qpu_token.update(qpu_token_id=token_id, name=new_name)
                expected[token_id] = (new_name, secret)
            elif step % 3 == 1:
                new_secret = f"s{n}-{step}"
                client.qpu_token.update(qpu_token_id=token_id, token=new_secret)
                expected[token_id] = (name, new_secret)
            elif len(mine) < 8:
                made = client.qpu_token.create(name=f"w{n}-new{step}", provider="ibm", token=f"s{n}-new{step}")
                mine.append(made.id)
                expected[made.id] = (made.name, f"s{n}-new{step}")

        _run_until(deadline, tally, "write", write)

    def locker() -> None:
        client = d.broker()

        def cycle() -> None:
            client.lock()
            client.unlock(PASSPHRASE)  # a key-file store takes no passphrase and ignores it

        _run_until(deadline, tally, "lock+unlock", cycle)

    def changer() -> None:
        client = d.broker()

        def change() -> None:  # key file -> passphrase -> key file: each swaps the data key's buffer
            if client.status().key_source == "passphrase":
                client.change_passphrase(PASSPHRASE, None)
            else:
                client.change_passphrase(None, PASSPHRASE)

        _run_until(deadline, tally, "passphrase change", change)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=locker), threading.Thread(target=changer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RACE_SECONDS + DEADLINE)
    print(f"\nrace for {RACE_SECONDS} s: {sorted(tally.counts.items())}")
    assert not any(t.is_alive() for t in threads)
    assert tally.unexpected == []
    assert tally.counts.get("write ok", 0) > 0 and tally.counts.get("lock+unlock ok", 0) > 0

    wait_for(lambda: _unlocked(b), "the agent to unlock")
    result = b.check()
    assert result.damaged == [] and result.checked == len(expected)
    if b.status().key_source == "passphrase":
        b.change_passphrase(PASSPHRASE, None)
    assert d.stop() == 0
    assert _opens_under_zero_key(d.paths.store) == []
    # Every acknowledged write is what the store holds, opened with the store's own key.
    vault = open_vault(Config(), d.paths.store, d.paths.key_file, Events(), environ={})
    try:
        assert vault.agent.rollback == "" and not vault.agent.locked
        for token_id, (name, secret) in expected.items():
            record = vault.personal.find("personal", token_id=token_id)
            assert (record.name, vault.personal.secret(record).reveal()) == (name, secret.encode())
        db = sqlite3.connect(d.paths.store)
        assert db.execute("SELECT count(*) FROM tokens").fetchone()[0] == len(expected)
        db.close()
    finally:
        vault.close()


def _unlocked(b) -> bool:
    b.unlock(PASSPHRASE)
    return not b.status().locked
