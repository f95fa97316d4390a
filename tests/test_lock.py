"""Lock and unlock, passphrases, and back-off after wrong ones."""

from __future__ import annotations

import re

import pytest
from conftest import wait_for
from qpu_broker_client import (
    FailedPreconditionError,
    LockedError,
    QpuTokenType,
    ResourceExhaustedError,
    UnauthenticatedError,
)


def test_lock_blocks_secret_use_and_unlock_restores(daemon):
    b = daemon.broker()
    tok = b.qpu_token.create(name="t", provider="ibm", token="s")
    b.lock()
    assert b.status().locked
    with pytest.raises(LockedError, match="locked"):
        b.qpu_token.create(name="u", provider="ibm", token="s")
    with pytest.raises(LockedError):
        b.qpu_token.update(qpu_token_id=tok.id, token="rotated")
    with pytest.raises(LockedError):
        b.check()
    assert isinstance(LockedError("x"), FailedPreconditionError)
    # Metadata is not secret: it stays listable while locked.
    assert [t.id for t in b.qpu_token.get_all()[QpuTokenType.PERSONAL]] == [tok.id]
    r = daemon.cli("token", "rotate", "t", input="new\n")
    assert r.returncode == 1 and "locked" in r.stderr
    assert daemon.cli("unlock").stdout.strip() == "unlocked"
    b.qpu_token.create(name="u", provider="ibm", token="s")
    assert b.check().checked == 2


def _retry_wait(exc: BaseException) -> float:
    return float(re.search(r"try again in ([0-9.]+) s", str(exc)).group(1))


def test_passphrase_set_change_remove_and_backoff(make_daemon):
    d = make_daemon().start()
    b = d.broker()
    tok = b.qpu_token.create(name="kept", provider="fujitsu", token="fj-secret")
    assert b.change_passphrase(None, "first pass") == "passphrase"
    assert not d.paths.key_file.exists(), "the key file no longer opens anything and must go"
    assert d.stop() == 0

    d.start()
    b = d.broker()
    s = b.status()
    assert s.locked and s.key_source == "passphrase" and "qpu-broker unlock" in s.lock_reason
    with pytest.raises(LockedError):
        b.qpu_token.create(name="x", provider="ibm", token="s")

    # Wrong passphrases back off: 0.1 s, doubling to 10 s, on the daemon's monotonic clock.
    waits = []
    for _ in range(5):
        with pytest.raises(UnauthenticatedError, match="wrong passphrase"):
            wait_for(lambda: _attempt(b, "wrong"), "the back-off to pass")
        with pytest.raises(ResourceExhaustedError) as refused:
            b.unlock("first pass")  # right passphrase, too soon: refused without trying it
        waits.append(_retry_wait(refused.value))
    assert waits[-1] > 0.8 and all(w <= 0.1 * 2**i for i, w in enumerate(waits)), waits
    assert b.status().locked
    wait_for(lambda: _attempt(b, "first pass"), "unlock after the back-off", timeout=15)
    assert not b.status().locked

    with pytest.raises(UnauthenticatedError, match="current passphrase is wrong"):
        b.change_passphrase("not it", "second pass")
    wait_for(lambda: _attempt(b, None, change=("first pass", "second pass")), "passphrase change")
    d.stop()
    d.start()
    b = d.broker()
    with pytest.raises(UnauthenticatedError):
        b.unlock("first pass")
    wait_for(lambda: _attempt(b, "second pass"), "unlock with the new passphrase")
    assert b.qpu_token.get(qpu_token_id=tok.id).name == "kept"
    assert b.check().damaged == []

    assert b.change_passphrase("second pass", None) == "key-file"
    assert d.paths.key_file.exists()
    d.stop()
    d.start()
    assert not d.broker().status().locked  # a key file needs no prompt
    assert d.broker().check().checked == 1


def _attempt(b, passphrase, change=None):
    """One unlock (or change) attempt; False while the back-off refuses it."""
    try:
        if change:
            b.change_passphrase(*change)
        else:
            b.unlock(passphrase)
    except ResourceExhaustedError:
        return False
    return True


def test_cli_unlock_reads_passphrase_from_stdin(make_daemon):
    d = make_daemon().start()
    d.broker().change_passphrase(None, "cli pass")
    d.broker().lock()
    r = d.cli("unlock", input="cli pass\n")
    assert r.returncode == 0 and r.stdout.strip() == "unlocked", r.stderr
    d.broker().lock()
    r = d.cli("unlock", input="nope\n")
    assert r.returncode == 1 and r.stderr.strip() == "qpu-broker: cannot unlock: wrong passphrase"


def test_auto_lock_locks_an_unused_agent_and_status_does_not_count_as_use(make_daemon):
    d = make_daemon()
    d.home.mkdir(mode=0o700)
    (d.home / "config.toml").write_text("[agent]\nauto_lock_seconds = 1\n")
    d.start()
    b = d.broker()
    b.qpu_token.create(name="t", provider="ibm", token="s")
    # Polling status all along (as a status bar would) must not keep the key in memory.
    wait_for(lambda: b.status().locked, "the agent to lock itself")
    assert "auto_lock_seconds" in b.status().lock_reason
    with pytest.raises(LockedError, match="auto_lock_seconds"):
        b.qpu_token.update(qpu_token_name="t", token="new")
    assert d.cli("unlock").stdout.strip() == "unlocked"
    assert "auto-lock: unused for" in d.log()
