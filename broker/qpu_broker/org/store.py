"""The org server's SQLite store: users (key hashes only) and sealed org tokens."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sqlite3

from qpu_broker_client.errors import AlreadyExistsError, NotFoundError

from ..sqlitedb import open_db

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        key_id     TEXT NOT NULL UNIQUE,
        key_hash   TEXT NOT NULL,
        created_us INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        provider      TEXT NOT NULL,
        nonce         BLOB NOT NULL,
        ciphertext    BLOB NOT NULL,
        allowed_hosts TEXT NOT NULL DEFAULT '[]',
        version       INTEGER NOT NULL,
        created_us    INTEGER NOT NULL,
        updated_us    INTEGER NOT NULL
    );
    """,
)


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    role: str
    key_id: str
    key_hash: str
    created_us: int


@dataclasses.dataclass(frozen=True)
class OrgTokenRecord:
    id: str
    name: str
    provider: str
    allowed_hosts: tuple[str, ...]
    version: int
    created_us: int
    updated_us: int


_TOKEN_COLUMNS = "id, name, provider, allowed_hosts, version, created_us, updated_us"


def _token(row: tuple) -> OrgTokenRecord:
    return OrgTokenRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], row[6])


class OrgStore:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._db = open_db(path, MIGRATIONS, "the org store")

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            count = self._db.execute(sql, args).rowcount
            self._bump()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return count

    def _bump(self) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES ('revision', '1') ON CONFLICT (key) "
                         "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    # -- meta ------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (key, value))

    def revision(self) -> int:
        return int(self.meta("revision") or 0)

    # -- users -----------------------------------------------------------------
    def add_user(self, user: User) -> None:
        try:
            self._write("INSERT INTO users (name, role, key_id, key_hash, created_us) VALUES (?, ?, ?, ?, ?)",
                        dataclasses.astuple(user))
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"a user named {user.name!r} already exists") from None

    def user_by_key_id(self, key_id: str) -> User | None:
        row = self._db.execute("SELECT name, role, key_id, key_hash, created_us FROM users WHERE key_id = ?",
                               (key_id,)).fetchone()
        return None if row is None else User(*row)

    def users(self) -> list[User]:
        rows = self._db.execute("SELECT name, role, key_id, key_hash, created_us FROM users ORDER BY name").fetchall()
        return [User(*r) for r in rows]

    def set_role(self, name: str, role: str) -> None:
        if not self._write("UPDATE users SET role = ? WHERE name = ?", (role, name)):
            raise NotFoundError(f"no user named {name!r}")

    def remove_user(self, name: str) -> None:
        if not self._write("DELETE FROM users WHERE name = ?", (name,)):
            raise NotFoundError(f"no user named {name!r}")

    # -- tokens ----------------------------------------------------------------
    def insert_token(self, record: OrgTokenRecord, nonce: bytes, ciphertext: bytes) -> None:
        try:
            self._write(
                "INSERT INTO tokens (id, name, provider, allowed_hosts, version, created_us, updated_us, nonce, ciphertext) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.name, record.provider, json.dumps(list(record.allowed_hosts)), record.version,
                 record.created_us, record.updated_us, nonce, ciphertext))
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None

    def token(self, *, token_id: str = "", name: str = "") -> OrgTokenRecord:
        where, arg = ("id = ?", token_id) if token_id else ("name = ?", name)
        row = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE {where}", (arg,)).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token {'with id ' + repr(token_id) if token_id else 'named ' + repr(name)}")
        return _token(row)

    def tokens(self) -> list[OrgTokenRecord]:
        return [_token(r) for r in self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY rowid")]

    def sealed(self, token_id: str) -> tuple[bytes, bytes]:
        row = self._db.execute("SELECT nonce, ciphertext FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token with id {token_id!r}")
        return bytes(row[0]), bytes(row[1])

    def replace_token(self, record: OrgTokenRecord, sealed: tuple[bytes, bytes] | None) -> None:
        try:
            if sealed is None:
                changed = self._write(
                    "UPDATE tokens SET name = ?, allowed_hosts = ?, version = ?, updated_us = ? WHERE id = ?",
                    (record.name, json.dumps(list(record.allowed_hosts)), record.version, record.updated_us, record.id))
            else:
                changed = self._write(
                    "UPDATE tokens SET name = ?, allowed_hosts = ?, version = ?, updated_us = ?, nonce = ?, ciphertext = ? "
                    "WHERE id = ?",
                    (record.name, json.dumps(list(record.allowed_hosts)), record.version, record.updated_us, *sealed, record.id))
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None
        if not changed:
            raise NotFoundError(f"no organization token with id {record.id!r}")

    def delete_token(self, token_id: str) -> None:
        if not self._write("DELETE FROM tokens WHERE id = ?", (token_id,)):
            raise NotFoundError(f"no organization token with id {token_id!r}")
