"""The org server's store in one SQLite file: the default, for a team on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from qpu_broker_client.trust import ensure_private_dir

from qpu_broker.orgserver.db import SQLITE, Busy
from qpu_broker.store.sqlite import open_db


class SqliteDatabase:
    kind = SQLITE
    integrity_errors = (sqlite3.IntegrityError,)
    # A removed member's stream ends well within the 2 s the contract allows: a cheap PRAGMA this often.
    poll_seconds = 0.25
    one_server = True  # replicas share a PostgreSQL database, never an SQLite file
    records_sync_refused = ""

    def __init__(self, target: str, migrations: tuple[str, ...], what: str, *, synchronous: str = "full") -> None:
        self._db = open_db(pathlib.Path(target), migrations, what, synchronous=synchronous.upper())
        self.quick_commits = synchronous.upper() == "NORMAL"  # in WAL mode: no fsync but at a checkpoint
        if self.quick_commits:  # so none at a commit: checkpoint() makes them
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._busy_ms = self._db.execute("PRAGMA busy_timeout").fetchone()[0]  # how long a write waits its turn
        self._waits = True  # the connection's busy timeout is _busy_ms (False: 0, for at_once begins)
        self._depth = 0  # writing()s open: an inner one is a savepoint of the outer transaction
        self._flat = False  # unless the outer one is flat
        self._version = self._db.execute("PRAGMA data_version").fetchone()[0]  # as committed_elsewhere last saw

    @staticmethod
    def absent(target: str) -> bool:
        return not pathlib.Path(target).exists()

    @staticmethod
    def prepare(target: str) -> None:
        ensure_private_dir(pathlib.Path(target).parent)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def notify(self) -> None:
        pass  # other connections see data_version move at every commit

    @contextlib.contextmanager
    def writing(self, ordered: bool = True, at_once: bool = False, flat: bool = False) -> Iterator[None]:
        """`ordered` changes nothing here: one writer at a time per file, every transaction in turn."""
        if self._depth and self._flat:  # part of the outer one, which fails whole
            yield
            return
        if self._depth:  # an inner one: a savepoint (what failed inside is undone before the outer one reads on)
            savepoint = f"inner_{self._depth}"
            self._db.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._db.execute(f"ROLLBACK TO {savepoint}")
                raise
            finally:
                self._depth -= 1
                self._db.execute(f"RELEASE {savepoint}")
            return
        if at_once:
            self._begin_at_once()
        else:
            self._wait(True)
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write: no upgrade deadlock
        self._depth, self._flat = 1, flat
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth, self._flat = 0, False
        self._db.execute("COMMIT")

    def _begin_at_once(self) -> None:
        self._wait(False)
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise Busy("another connection holds the write lock") from None
            raise

    def _wait(self, waits: bool) -> None:
        """The busy timeout a begin needs, set only when it changes: a connection begins one way
        run after run (the record writer's: at once while idle, waiting under load), and each PRAGMA
        is a statement of its own (two on every quick commit, when they were set around each)."""
        if waits != self._waits:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms if waits else 0}")
            self._waits = waits

    def committed_elsewhere(self) -> bool:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed, self._version = version != self._version, version
        return changed

    async def changes(self, poll_seconds: float) -> AsyncIterator[None]:
        # data_version moves whenever another connection (an admin's CLI, another server) commits.
        seen = self._db.execute("PRAGMA data_version").fetchone()[0]
        while True:
            await asyncio.sleep(poll_seconds)
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                yield

    def checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what no reader holds back; the rest next time

    def close(self) -> None:
        self._db.close()
