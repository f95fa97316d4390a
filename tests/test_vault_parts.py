"""The store's parts in process, as daemon/main.open_vault wires them: no daemon, no socket.

Each part has one job (personal tokens, the store's integrity, the agent's lock, the org
login); these tests hold the seams between them: what one part keeps (a count, a login) stays
true when another part changes the store under it.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from qpu_broker.common.config import Config
from qpu_broker.daemon.main import open_vault
from qpu_broker.tokens.events import Events
from qpu_broker.tokens.org_login import OrgLogin
from qpu_broker_client import LockedError
from qpu_broker_client.secret import Secret


@pytest.fixture
def vault(short_tmp):
    v = open_vault(Config(), short_tmp / "store.db", short_tmp / "store.key", Events(), environ={})
    yield v
    v.close()


def test_the_count_after_accepting_a_backup_is_the_backups(vault, short_tmp):
    """PersonalTokens keeps its count; StoreIntegrity accepts another store under it."""
    asyncio.run(vault.personal.create("personal", "kept", "ibm", b"one"))
    assert vault.personal.count() == 1  # counted, and the count kept
    backup = short_tmp / "backup.db"
    live = sqlite3.connect(short_tmp / "store.db")
    live.backup(sqlite3.connect(backup))
    asyncio.run(vault.personal.create("personal", "later", "ibm", b"two"))
    assert vault.personal.count() == 2
    sqlite3.connect(backup).backup(live)  # the backup put back under the running parts
    live.close()
    with pytest.raises(LockedError, match="went back to generation"):
        vault.personal.defaults()
    asyncio.run(vault.agent.accept_rollback())
    assert not vault.agent.locked and vault.agent.rollback == ""
    assert vault.personal.count() == 1
    records, total = vault.personal.list("", 10, 0)
    assert [r.name for r in records] == ["kept"] and total == 1


def test_the_org_login_is_sealed_and_goes_with_a_lock(vault):
    login = OrgLogin(("org.example:443",), "org.example:443", b"CA", "dev-1", Secret(b"k" * 32), "store-1")
    asyncio.run(vault.org_login.save(login))
    assert vault.org_login.stored() and vault.org_login.read() == login
    assert b"k" * 32 not in (vault.integrity.reader.meta("org_login") or b"")
    vault.agent.lock()
    assert vault.org_login.locked and vault.org_login.stored()
    with pytest.raises(LockedError):
        vault.org_login.read()
    asyncio.run(vault.agent.unlock(b""))
    asyncio.run(vault.org_login.clear())
    assert not vault.org_login.stored() and vault.org_login.read() is None
