"""Opening an SQLite store the one way both stores (daemon, org server) need it.

WAL with `synchronous=FULL` (an acknowledged write survives power loss),
`secure_delete` (replaced ciphertexts are overwritten, not left in free pages),
temp data in memory only, and numbered migrations recorded in `user_version`.
"""

from __future__ import annotations

import pathlib
import sqlite3

from qpu_broker_client.errors import FailedPreconditionError


def open_db(path: pathlib.Path, migrations: tuple[str, ...], what: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise FailedPreconditionError(f"cannot open {what} {path}: {exc}; restore it from a backup or move it away") from exc
    for pragma in ("synchronous=FULL", "foreign_keys=ON", "secure_delete=ON", "temp_store=MEMORY"):
        db.execute(f"PRAGMA {pragma}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        db.close()
        raise FailedPreconditionError(
            f"{what} {path} has schema {version}, newer than this qpu-broker knows ({len(migrations)}): upgrade qpu-broker")
    for number in range(version, len(migrations)):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return db
