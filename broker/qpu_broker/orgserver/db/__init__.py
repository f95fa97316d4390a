"""Where the org server keeps its state: one SQLite file (the default) or a PostgreSQL
database that any number of org-server replicas share.

`parse_database` is the one place a `--database` value is read, and `backend` the one place a
kind is mapped to its class. Both backends take the same SQL (SQLite's `?` placeholders,
written in the subset both dialects share) and give the store the same few things:
statements, one write transaction at a time (across processes and replicas too), and a
signal that another connection committed. Whatever else differs between backends (how often
to poll, whether one server holds the store, where a new store is made) is an attribute of
its class, so the rest of the server never asks which backend it has: a new backend is a
module here, a line in `backend`, `parse_database`'s prefix and its schema (schema.py).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from qpu_broker_client.errors import FailedPreconditionError, InvalidArgumentError

from qpu_broker.common.reach import is_loopback

SQLITE, POSTGRESQL = "sqlite", "postgresql"
# How an SQLite store commits relayed calls' usage records (`serve --records-sync`), in SQLite's
# own words for `synchronous`: in WAL mode NORMAL survives any process's death (the data is in
# the kernel's hands), FULL also a power loss, at an fsync a commit (milliseconds on many disks:
# more than a relayed call's own work). PostgreSQL commits as its synchronous_commit says.
RECORDS_SYNC = ("normal", "full")
RECORDS_SYNC_DEFAULT = "normal"
# Where a data dir's store is when `init` named none (relative: inside the data dir).
DEFAULT_DATABASE = "sqlite:store/org.db"


class Busy(Exception):
    """`writing(at_once=True)` found another connection holding the write lock: nothing was begun."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    kind: str
    integrity_errors: tuple[type[BaseException], ...]  # a UNIQUE (or CHECK) constraint refused a write
    # What the server knows of a backend before it opens one (class attributes):
    poll_seconds: float  # how often `changes` looks for other connections' commits
    one_server: bool  # one server per store: `serve` holds the data dir's lock (replicas need another backend)
    records_sync_refused: str  # why `serve --records-sync` does not apply to it; empty: it does
    # This connection's commits wait on no disk or network (SQLite at synchronous=NORMAL: the WAL
    # written to the kernel), so one is cheaper on the event loop than handed to a thread; what
    # does wait on the disk, its checkpoints, it makes only when `checkpoint()` is called.
    quick_commits: bool

    def __init__(self, target: str, migrations: tuple[str, ...], what: str, *, synchronous: str = "full") -> None: ...
    @staticmethod
    def absent(target: str) -> bool:
        """Whether `target` surely holds no store yet (known without connecting)."""
    @staticmethod
    def prepare(target: str) -> None:
        """What `init` makes before a new store is opened at `target`."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...
    def writing(self, ordered: bool = True, at_once: bool = False, flat: bool = False) -> AbstractContextManager[None]:
        """One write transaction; writers take turns (another process's or replica's too). Inside
        another, it is a savepoint of it: one commit for both (a change and its admin record entry),
        and what failed inside is undone before the outer one goes on.
        `ordered=False`: a write that needs no turn (it changes only rows no other transaction
        writes, and numbers nothing); a write inside it that does need one takes its turn then.
        `at_once=True` (quick_commits only): raises Busy rather than wait for another's lock.
        `flat=True`: whatever fails inside fails the whole transaction (its caller then redoes each
        part alone: the record writer), so those inside are part of it, with no savepoints: on
        PostgreSQL each savepoint and its release are round trips, under the write lock."""
    def notify(self) -> None:
        """Inside `writing()`: other servers must hear of this transaction when it commits."""
    def committed_elsewhere(self) -> bool:
        """Whether another connection may have committed since this was last asked, known without
        a round trip (SQLite's data_version); False where only `changes` can tell (PostgreSQL)."""
    def changes(self, poll_seconds: float) -> AsyncIterator[None]:
        """Yields whenever another connection may have committed (and at least every `poll_seconds`
        after one did): the server then reads what is new."""
    def checkpoint(self) -> None:
        """What a `quick_commits` connection's commits leave to do (SQLite: the WAL into the file)."""
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
        return POSTGRESQL, _checked_postgresql(value)
    raise InvalidArgumentError(f"--database {value.split(':', 1)[0]!r}… is neither sqlite:PATH nor postgresql://…: "
                               "e.g. sqlite:store/org.db or postgresql://qpu@db.example.com/qpu_org")


def _checked_postgresql(url: str) -> str:
    """The URL as libpq reads it (psycopg's own parser: what we check is what connects): no
    password, and a database across a network only over TLS with the server's certificate
    verified (whoever can rewrite its answers holds the org's admin powers: docs/design.md)."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise FailedPreconditionError("a PostgreSQL store needs psycopg: pip install 'qpu-broker[postgresql]'") from None
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise InvalidArgumentError(f"--database is not a PostgreSQL URL libpq reads ({str(exc).splitlines()[0][:120]}): "
                                   "e.g. postgresql://qpu_org@db.internal/qpu_org?sslmode=verify-full") from None
    if params.get("password") or params.get("sslpassword"):
        raise InvalidArgumentError("--database must not carry a password (argv and unit files are readable): "
                                   "put it in ~/.pgpass or a file named by PGPASSFILE, or use a Unix socket")
    hosts = [*str(params.get("host") or os.environ.get("PGHOST", "")).split(","),
             *str(params.get("hostaddr") or os.environ.get("PGHOSTADDR", "")).split(",")]
    remote = [h for h in hosts if h and not h.startswith("/") and h != "localhost" and not is_loopback(h)]
    sslmode = str(params.get("sslmode") or os.environ.get("PGSSLMODE", "prefer"))
    if remote and sslmode not in ("verify-full", "verify-ca"):
        raise InvalidArgumentError(
            f"--database reaches {remote[0][:255]} across a network without verifying its TLS certificate "
            f"(sslmode={sslmode[:20]}): add ?sslmode=verify-full&sslrootcert=FILE (the database's CA), or use a "
            "Unix socket")
    return url


def backend(kind: str) -> type[Database]:
    """The class of a kind `parse_database` returned (a PostgreSQL one needs the extra)."""
    if kind == SQLITE:
        from qpu_broker.orgserver.db.sqlite_db import SqliteDatabase

        return SqliteDatabase
    try:
        from qpu_broker.orgserver.db.postgres_db import PostgresDatabase
    except ImportError:
        raise FailedPreconditionError("a PostgreSQL store needs psycopg: pip install 'qpu-broker[postgresql]'") from None
    return PostgresDatabase


def open_database(kind: str, target: str, migrations: Mapping[str, tuple[str, ...]], what: str, *,
                  synchronous: str = "full") -> Database:
    """`migrations`: each backend's steps, by kind (schema.MIGRATIONS); `synchronous`: SQLite's, for
    this connection (RECORDS_SYNC); PostgreSQL takes its server's."""
    return backend(kind)(target, migrations[kind], what, synchronous=synchronous)
