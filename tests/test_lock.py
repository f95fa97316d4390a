"""Lock and unlock through the daemon and its CLI; passphrases and their back-off are tested in
process on an injected clock (test_vault_inproc.py)."""

from __future__ import annotations

import pytest
from conftest import wait_for
from qpu_broker_client import (
    FailedPreconditionError,
    LockedError,
    QpuTokenType,
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
