"""Opening an SQLite store the one way both stores (daemon, org server) need it.

WAL with `synchronous=FULL` (an acknowledged write survives power loss; a queue may choose
NORMAL: a write survives the process being killed, not the machine losing power),
`secure_delete` (replaced ciphertexts are overwritten, not left in free pages),
temp data in memory only, and numbered migrations recorded in `user_version`.
"""

from __future__ import annotations

import pathlib
import sqlite3

from qpu_broker_client.errors import FailedPreconditionError


def open_db(path: pathlib.Path, migrations: tuple[str, ...], what: str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise FailedPreconditionError(f"cannot open {what} {path}: {exc}; restore it from a backup or move it away") from exc
    for pragma in (f"synchronous={synchronous}", "foreign_keys=ON", "secure_delete=ON", "temp_store=MEMORY"):
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


def _shape(db: sqlite3.Connection) -> list[tuple]:
    """What the schema is made of, without the SQL text (which SQLite versions may spell apart):
    every table, index, view and trigger, each table's columns, each index's columns."""
    objects = db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%' "
                         "ORDER BY type, name").fetchall()
    shape: list[tuple] = list(objects)
    for kind, name, _table in objects:
        if kind == "table":
            shape += [("column", name, *c[1:]) for c in db.execute(f"PRAGMA table_info('{name}')")]
        elif kind == "index":
            shape += [("indexed", name, *c) for c in db.execute(f"PRAGMA index_xinfo('{name}')")]
    return shape


def structure_problem(db: sqlite3.Connection, migrations: tuple[str, ...]) -> str:
    """Empty when `db` is exactly what the migrations build and its indexes agree with its
    tables; else what is wrong. An index, view or trigger added by hand (or a table rebuilt
    without its keys) could show one reader rows another does not see."""
    reference = sqlite3.connect(":memory:")
    try:
        for migration in migrations:
            reference.executescript(migration)
        if _shape(db) != _shape(reference):
            return "its schema is not the one qpu-broker made (a table, index, view or trigger was added or changed)"
    finally:
        reference.close()
    verdict = [row[0] for row in db.execute("PRAGMA quick_check")]
    if verdict != ["ok"]:
        return f"SQLite's quick_check fails ({verdict[0]})"
    return ""
