"""The SQLite store: token records, their sealed secrets, and the wrapped data key.

The store only keeps bytes; it never sees a plaintext secret or a key, and it
does not know the wire format. Schema changes are numbered migrations, applied
in order at open and recorded in `PRAGMA user_version`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sqlite3
from collections.abc import Iterator

from qpu_broker_client.errors import AlreadyExistsError, NotFoundError

from qpu_broker.store.sqlite import open_db, structure_problem


class StoreEdited(Exception):
    """The file holds what qpu-broker never writes: edited by hand."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the first release.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        provider    TEXT NOT NULL,
        nonce       BLOB NOT NULL,
        ciphertext  BLOB NOT NULL,
        key_term    INTEGER NOT NULL,
        created_us  INTEGER NOT NULL,
        updated_us  INTEGER NOT NULL,
        request_id  TEXT UNIQUE,
        constraints TEXT NOT NULL DEFAULT '{}',
        UNIQUE (kind, name)
    );
    -- Within an index, SQLite orders equal keys by rowid: listing in creation
    -- order then needs no sort, however many tokens there are.
    CREATE INDEX tokens_by_kind ON tokens (kind);
    CREATE INDEX tokens_by_kind_provider ON tokens (kind, provider);
    """,
    # 2: every field of a row bound to its ciphertext (seal 2); rows of seal 1 are
    # re-sealed at the first unlock, then refused.
    """
    ALTER TABLE tokens ADD COLUMN seal INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: per-token expiry (0: never), sealed with the rest of the row.
    """
    ALTER TABLE tokens ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: the first release's `constraints` column was never used.
    """
    ALTER TABLE tokens DROP COLUMN constraints;
    """,
)


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    id: str
    kind: str
    name: str
    provider: str
    created_us: int
    updated_us: int
    expires_us: int = 0  # 0: never


@dataclasses.dataclass(frozen=True)
class Sealed:
    nonce: bytes
    ciphertext: bytes
    key_term: int
    seal: int  # which associated-data recipe sealed it (tokens/seals.SEAL)


@dataclasses.dataclass(frozen=True)
class Change:
    """One sealed value replaced by a write: a token's version (its `updated_us`, which its
    seal binds), or the org login's blob; None where there was none, or is none now. The
    store's integrity (tokens/integrity) folds these into its authenticated digest (store_state)."""
    name: str
    old: bytes | None
    new: bytes | None


# Meta values whose change is a change of the store's sealed state (the state MAC covers them):
# the org login, and which personal token is each provider's default (JSON provider -> id).
SEALED_META = ("org_login", "default_tokens")

_COLUMNS = "id, kind, name, provider, created_us, updated_us, expires_us"


def _version(updated_us: int) -> bytes:
    return str(updated_us).encode()


def _record(row: tuple) -> TokenRecord:
    return TokenRecord(*row)


class Store:
    """One connection to the store file. Open one per thread that uses it."""

    def __init__(self, path: pathlib.Path) -> None:
        self._db = open_db(path, MIGRATIONS, "the store")
        self.changes: list[Change] = []  # sealed values replaced since the caller last took them

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- meta --------------------------------------------------------------
    def meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value = row[0]
        if isinstance(value, str):  # TEXT, if edited by hand
            return value.encode()
        if isinstance(value, int | float):  # a number, if edited by hand
            return str(value).encode()
        return b"" if value is None else bytes(value)

    def set_meta(self, **values: bytes | str | int) -> None:
        with self.transaction():
            for key, value in values.items():
                value = value if isinstance(value, bytes) else str(value).encode()
                if key in SEALED_META:
                    self.changes.append(Change(f"meta:{key}", self.meta(key) or None, value or None))
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def generation(self) -> int:
        """The write counter; -1 when it is not a counter at all (edited by hand: the store is held)."""
        try:
            generation = int(self.meta("generation") or 0)
        except ValueError:
            return -1
        return generation if 0 <= generation < 2**62 else -1

    def bump_generation(self) -> int:
        """One more write (call inside its transaction): the new generation."""
        generation = self.generation() + 1
        self.set_meta(generation=generation)
        return generation

    # -- tokens ------------------------------------------------------------
    def insert(self, record: TokenRecord, sealed: Sealed, request_id: str | None) -> None:
        try:
            with self.transaction():
                self._db.execute(
                    "INSERT INTO tokens (id, kind, name, provider, created_us, updated_us, expires_us, nonce, ciphertext, "
                    "key_term, seal, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*dataclasses.astuple(record), sealed.nonce, sealed.ciphertext, sealed.key_term, sealed.seal,
                     request_id),
                )
                self.changes.append(Change(record.id, None, _version(record.updated_us)))
        except sqlite3.IntegrityError as exc:
            raise self._conflict(exc, record.kind, record.name) from exc

    def _conflict(self, exc: sqlite3.IntegrityError, kind: str, name: str) -> AlreadyExistsError:
        if "request_id" in str(exc):
            return AlreadyExistsError("this request_id was already used for another token; use a new one")
        return AlreadyExistsError(f"a {kind} token named {name!r} already exists: choose another name, or rotate that one")

    def by_id(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else _record(row)

    def by_name(self, kind: str, name: str) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        return None if row is None else _record(row)

    def by_request_id(self, request_id: str) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else _record(row)

    @staticmethod
    def _where(kind: str, provider: str | None) -> tuple[str, list[str]]:
        if provider:
            return "kind = ? AND provider = ?", [kind, provider]
        return "kind = ?", [kind]

    def list(self, kind: str, provider: str | None, limit: int, offset: int) -> list[TokenRecord]:
        """One page in creation order."""
        where, args = self._where(kind, provider)
        index = "tokens_by_kind_provider" if provider else "tokens_by_kind"
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM tokens INDEXED BY {index} WHERE {where} ORDER BY rowid LIMIT ? OFFSET ?",
            args + [limit, offset],
        ).fetchall()
        return [_record(r) for r in rows]

    def count(self, kind: str, provider: str | None = None) -> int:
        where, args = self._where(kind, provider)
        return self._db.execute(f"SELECT count(*) FROM tokens WHERE {where}", args).fetchone()[0]

    def rename(self, record: TokenRecord, name: str, updated_us: int) -> None:
        try:
            with self.transaction():
                old = self._version(record.id)
                changed = self._db.execute(
                    "UPDATE tokens SET name = ?, updated_us = ? WHERE id = ?", (name, updated_us, record.id)).rowcount
                if changed:
                    self.changes.append(Change(record.id, old, _version(updated_us)))
        except sqlite3.IntegrityError as exc:
            raise self._conflict(exc, record.kind, name) from exc
        if not changed:
            raise NotFoundError(f"no token with id {record.id!r}")

    def replace_secret(self, token_id: str, sealed: Sealed, updated_us: int, expires_us: int) -> None:
        with self.transaction():
            old = self._version(token_id)
            changed = self._db.execute(
                "UPDATE tokens SET nonce = ?, ciphertext = ?, key_term = ?, seal = ?, updated_us = ?, expires_us = ? "
                "WHERE id = ?",
                (sealed.nonce, sealed.ciphertext, sealed.key_term, sealed.seal, updated_us, expires_us, token_id),
            ).rowcount
            if changed:
                self.changes.append(Change(token_id, old, _version(updated_us)))
        if not changed:
            raise NotFoundError(f"no token with id {token_id!r}")

    def delete(self, token_id: str) -> None:
        with self.transaction():
            old = self._version(token_id)
            changed = self._db.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount
            if changed:
                self.changes.append(Change(token_id, old, None))
        if not changed:
            raise NotFoundError(f"no token with id {token_id!r}")

    def _version(self, token_id: str) -> bytes | None:
        row = self._db.execute("SELECT updated_us FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else _version(row[0])

    def structure_problem(self) -> str:
        """Empty when the file is the schema the migrations build, consistent with its indexes."""
        return structure_problem(self._db, MIGRATIONS)

    def sealed_state(self) -> dict[str, bytes]:
        """Every sealed value by the name its Change goes by: what the state digest covers.
        Read from the table itself (NOT INDEXED), every row: a row no lookup would find still counts."""
        state: dict[str, bytes] = {}
        for token_id, updated_us in self._db.execute("SELECT id, updated_us FROM tokens NOT INDEXED"):
            if (not isinstance(token_id, str) or not isinstance(updated_us, int) or token_id in state
                    or token_id.startswith("meta:")):
                raise StoreEdited(f"a token row with id {token_id!r} is malformed or repeated")
            state[token_id] = _version(updated_us)
        for key in SEALED_META:
            value = self.meta(key)
            if value:
                state[f"meta:{key}"] = value
        return state

    def sealed(self, token_id: str) -> Sealed:
        row = self._db.execute("SELECT nonce, ciphertext, key_term, seal FROM tokens WHERE id = ?",
                               (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no token with id {token_id!r}")
        return Sealed(bytes(row[0]), bytes(row[1]), row[2], row[3])

    def all_sealed(self) -> Iterator[tuple[TokenRecord, Sealed]]:
        for row in self._db.execute(f"SELECT {_COLUMNS}, nonce, ciphertext, key_term, seal FROM tokens ORDER BY rowid"):
            yield _record(row[:7]), Sealed(bytes(row[7]), bytes(row[8]), row[9], row[10])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._outer:
            return
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
