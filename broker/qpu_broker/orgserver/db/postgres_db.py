"""The org server's store in PostgreSQL (psycopg 3): for organizations that run several
org-server replicas on one database.

Every write transaction takes one advisory lock first, so writers take turns across
replicas as SQLite's writers do in one file: events and usage records get their numbers in
commit order (a replica reading "after 41" never skips a 42 that commits late) and a quota's
check and count are one step whichever replica makes them. The one kind of write that needs
no turn (`writing(ordered=False)`: a relayed call's record finished with nothing to charge
changes its own row only) skips it, so replicas finishing calls do not wait on each other. Each write transaction also sends a NOTIFY,
delivered at commit, when it added an event: it wakes every replica's listener (`changes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
from qpu_broker_client.errors import FailedPreconditionError, UnavailableError

from qpu_broker.orgserver.db import POSTGRESQL

log = logging.getLogger(__name__)
CHANNEL = "qpu_broker_org"
WRITE_LOCK, MIGRATE_LOCK = 0x71627201, 0x71627202  # advisory lock keys: "qbr" and a number
CONNECT_TIMEOUT = 5
# A write waits at most LOCK_TIMEOUT for its turn, a statement runs at most STATEMENT_TIMEOUT:
# the store is called on the server's event loop, so a lock held elsewhere (another replica's
# long transaction, or any role that can take the advisory lock) stalls calls that long at most.
LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS = 5_000, 15_000


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresDatabase:
    kind = POSTGRESQL
    integrity_errors = (psycopg.errors.IntegrityError,)
    # NOTIFY wakes `changes` at once; this is its read besides (one indexed query), for a
    # notification sent while its listener reconnected.
    poll_seconds = 1.0
    one_server = False  # replicas: any number of servers on one database
    quick_commits = False  # a round trip to the server, and its WAL flush
    records_sync_refused = ("--records-sync is for SQLite stores: a PostgreSQL store commits as its "
                            "synchronous_commit setting says (set it for the server's role)")

    def __init__(self, target: str, migrations: tuple[str, ...], what: str, *, synchronous: str = "full") -> None:
        """`synchronous` is SQLite's: this database commits as its server's synchronous_commit says."""
        self._url, self._what = target, what
        self._sql: dict[str, str] = {}
        self._notify = False  # the transaction at hand added an event
        self._writing = False  # inside writing(): nothing is retried
        self._locked = False  # the transaction at hand holds the write lock
        self._flat = False  # and has no savepoints inside (writing(flat=True))
        try:
            self._conn = self._connect()
        except psycopg.Error as exc:  # said to whoever starts the server or runs the admin CLI: the operator
            raise UnavailableError(f"cannot reach {self._what} (PostgreSQL): {_first_line(exc)}: check --database "
                                   "and that the database server runs") from None
        self._migrate(migrations)

    @staticmethod
    def absent(target: str) -> bool:
        return False  # known only by connecting: `init` finds out there, by the org it holds

    @staticmethod
    def prepare(target: str) -> None:
        pass  # the database is made by its administrator

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="qpu-broker org-server",
                               options=f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}")

    def _unavailable(self, exc: BaseException) -> UnavailableError:
        """Members get the plain fact; what libpq said (hosts, sockets, ports) goes to the server's log."""
        log.warning("%s (PostgreSQL): %s", self._what, _first_line(exc))
        if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
            return UnavailableError(f"{self._what} is busy (a write waited past its turn): try again")
        return UnavailableError(f"{self._what} is unavailable (its database cannot be reached): try again shortly; "
                                "the server's log says why")

    def _migrate(self, migrations: tuple[str, ...]) -> None:
        with self._conn.transaction():
            # One replica migrates; the others wait here, then find the work done.
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > len(migrations):
                raise FailedPreconditionError(f"{self._what} has schema {version}, newer than this qpu-broker knows "
                                              f"({len(migrations)}): upgrade qpu-broker")
            for number in range(version, len(migrations)):
                self._conn.execute(migrations[number])
                self._conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number + 1,))

    def _ready(self) -> psycopg.Connection:
        if self._conn.closed or self._conn.broken:
            log.warning("the connection to %s was lost: reconnecting", self._what)
            try:
                self._conn = self._connect()
            except psycopg.Error as exc:
                raise self._unavailable(exc) from None
        return self._conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor:
        text = self._sql.get(sql)
        if text is None:  # SQLite's placeholders, psycopg's escapes: one translation per statement
            text = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        try:
            return self._ready().execute(text, args)
        except psycopg.OperationalError as exc:
            if self._writing or not self._conn.broken:
                raise self._unavailable(exc) from None
        # A read on a connection the database dropped (a restart, a failover of the database):
        # once more on a new one. A write is never retried here: its transaction failed whole.
        try:
            return self._ready().execute(text, args)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None

    def notify(self) -> None:
        """Inside a write transaction: wake the other replicas when it commits (events only:
        usage records and quota counts are read when asked, not pushed)."""
        self._notify = True

    @contextlib.contextmanager
    def writing(self, ordered: bool = True, at_once: bool = False, flat: bool = False) -> Iterator[None]:  # at_once: quick_commits only
        if self._writing:  # an inner one: a savepoint (a failure inside leaves the outer one readable)
            if ordered and not self._locked:  # its turn at the lock first: a savepoint rolled back would drop it
                self._lock()
            if self._flat:  # part of the outer one, which fails whole
                yield
                return
            with self._conn.transaction():
                yield
            return
        self._notify = False
        try:
            with contextlib.ExitStack() as transaction:
                self._begin(transaction)
                self._writing, self._flat = True, flat
                if ordered:
                    self._lock()
                yield
                if self._notify:
                    self._conn.execute(f"NOTIFY {CHANNEL}")
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            self._writing = self._locked = self._flat = False

    def _begin(self, transaction: contextlib.ExitStack) -> None:
        """The outermost transaction, begun. A connection the database dropped since its last use (a
        restart) is found out only by its BEGIN, when nothing is written yet: it begins once more on
        a new one. (The record writer's connection writes only: without this its first write after a
        restart failed, and a relayed call with it.) A write that fails later is never retried."""
        for last in (False, True):
            conn = self._ready()
            try:
                transaction.enter_context(conn.transaction())
                return
            except psycopg.OperationalError as exc:
                if last or not conn.broken:
                    raise self._unavailable(exc) from None

    def _lock(self) -> None:
        """This transaction's turn at the write lock, held to its end. Taken late (a group of the
        record writer's whose first writes needed none), it comes before any write that needs it;
        the writes before it changed only rows no other transaction writes, so no two wait on each other."""
        self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        self._locked = True

    def committed_elsewhere(self) -> bool:
        return False  # another replica's commit is heard by `changes` (NOTIFY), within milliseconds

    async def changes(self, poll_seconds: float) -> AsyncIterator[None]:
        """On every NOTIFY, and every `poll_seconds` besides (a notification sent while the
        listener reconnects is not lost: the poll reads what is new all the same)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                        application_name="qpu-broker org-server listener") as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    while True:
                        yield
                        async for _ in conn.notifies(timeout=poll_seconds, stop_after=1):
                            pass
            except psycopg.Error as exc:
                log.warning("listening to %s failed (%s): polling until it is back", self._what, _first_line(exc))
                yield
                await asyncio.sleep(poll_seconds)

    def checkpoint(self) -> None:
        pass  # the database server checkpoints (and quick_commits is False)

    def close(self) -> None:
        self._conn.close()

