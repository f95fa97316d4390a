"""Where the org server keeps its state: one SQLite file (the default) or a PostgreSQL
database that any number of org-server replicas share.

`open_database(url)` is the one place a `--database` value is read. Both backends take the
same SQL (SQLite's `?` placeholders, written in the subset both dialects share) and give
the store the same few things: statements, one write transaction at a time (across
processes and replicas too), and a signal that another connection committed.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from qpu_broker_client.errors import FailedPreconditionError, InvalidArgumentError

SQLITE, POSTGRESQL = "sqlite", "postgresql"


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    kind: str
    integrity_errors: tuple[type[BaseException], ...]  # a UNIQUE (or CHECK) constraint refused a write

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...
    def writing(self) -> AbstractContextManager[None]:
        """One write transaction; writers take turns (another process's or replica's too)."""
    def notify(self) -> None:
        """Inside `writing()`: other servers must hear of this transaction when it commits."""
    def changes(self, poll_seconds: float) -> AsyncIterator[None]:
        """Yields whenever another connection may have committed (and at least every `poll_seconds`
        after one did): the server then reads what is new."""
    def close(self) -> None: ...


def parse_database(value: str, data_dir: pathlib.Path) -> tuple[str, str]:
    """(kind, target) of a `--database` value: `sqlite:PATH` or `postgresql://…` (a libpq URL).
    A password in the URL is refused: it would sit in argv and in unit files; libpq reads it
    from ~/.pgpass or PGPASSFILE, and a Unix socket needs none."""
    if value.startswith("sqlite:"):
        path = value.removeprefix("sqlite:")
        if not path:
            raise InvalidArgumentError("--database sqlite:PATH needs a path, e.g. sqlite:/var/lib/qpu-org/store/org.db")
        return SQLITE, str((data_dir / path) if not pathlib.Path(path).is_absolute() else pathlib.Path(path))
    if value.startswith(("postgresql://", "postgres://")):
        try:
            parts = urllib.parse.urlsplit(value)
            query = urllib.parse.parse_qs(parts.query)
        except ValueError as exc:
            raise InvalidArgumentError(f"--database is not a PostgreSQL URL ({exc}): e.g. "
                                       "postgresql://qpu@db.example.com/qpu_org") from None
        if parts.password is not None or "password" in query:
            raise InvalidArgumentError("--database must not carry a password (argv and unit files are readable): "
                                       "put it in ~/.pgpass or a file named by PGPASSFILE, or use a Unix socket")
        return POSTGRESQL, value
    raise InvalidArgumentError(f"--database {value.split(':', 1)[0]!r}… is neither sqlite:PATH nor postgresql://…: "
                               "e.g. sqlite:store/org.db or postgresql://qpu@db.example.com/qpu_org")


def open_database(kind: str, target: str, migrations: dict[str, tuple[str, ...]], what: str) -> Database:
    if kind == SQLITE:
        from qpu_broker.orgserver.db.sqlite_db import SqliteDatabase

        return SqliteDatabase(pathlib.Path(target), migrations[SQLITE], what)
    try:
        from qpu_broker.orgserver.db.postgres_db import PostgresDatabase
    except ImportError:
        raise FailedPreconditionError("a PostgreSQL store needs psycopg: pip install 'qpu-broker[postgresql]'") from None
    return PostgresDatabase(target, migrations[POSTGRESQL], what)
