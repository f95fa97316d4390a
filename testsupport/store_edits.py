"""A store file edited by hand, as an attacker or an old release would leave it: for the tamper
tests, through a daemon process (tests/test_tamper.py) or in process (tests/test_vault_inproc.py).
`at` is anything with the daemon's `paths` (a testsupport Daemon, or an InProcess)."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Callable

from qpu_broker.keys import kek as keys


def edit_store(path: pathlib.Path, fn: Callable[[sqlite3.Connection], object]) -> None:
    db = sqlite3.connect(path)
    with db:
        fn(db)
    db.close()


def meta(path: pathlib.Path, *keys_: str) -> dict[str, bytes]:
    db = sqlite3.connect(path)
    rows = dict(db.execute(f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(keys_))})", keys_))
    db.close()
    return rows


def set_meta(**values: bytes) -> Callable[[sqlite3.Connection], None]:
    def edit(db: sqlite3.Connection) -> None:
        for key, value in values.items():
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    return edit


def put_back(at, backup: bytes) -> None:
    """A copy of the store put back in place of the live one (its WAL gone with it)."""
    for suffix in ("-wal", "-shm"):
        at.paths.store.with_name(at.paths.store.name + suffix).unlink(missing_ok=True)
    at.paths.store.write_bytes(backup)


def data_key(at) -> bytes:
    """White box: the data key of a key-file store, to forge what an older release wrote."""
    db = sqlite3.connect(at.paths.store)
    wrapped = db.execute("SELECT value FROM meta WHERE key = 'wrapped_key'").fetchone()[0]
    db.close()
    material = keys.read_material(at.paths.key_file, "key file")
    return keys.unwrap(keys.kek_from_material(material, keys.KeySource.KEY_FILE), bytes(wrapped), keys.KeySource.KEY_FILE)
