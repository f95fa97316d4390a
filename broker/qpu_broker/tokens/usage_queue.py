"""Uses of org tokens, queued on disk until the org server has them (at least once: the
server drops repeats by id).

A use is written before its request leaves (`begin`), and finished when the answer's head
comes (`finish`): a daemon killed in between leaves the record, which its next start marks
`interrupted`, so no request sent with an org token goes unrecorded. SQLite in WAL mode with
synchronous=NORMAL: a written record survives the daemon being killed (the kernel has it);
the last ones before a power loss may not (FULL would add an fsync to every org call).

Each record is kept with the login it was made under (its id and the member), and is reported
under that login only: a daemon that logs in as someone else never reports the last one's
use as theirs. A member whose key was replaced reports the old key's records with the new one.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time
from collections.abc import Callable

from qpu_broker_client.usage import INTERRUPTED, UNKNOWN_SIZE, UsageRecord

from qpu_broker.store.sqlite import open_db

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE queued (
        n             INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        server        TEXT NOT NULL,
        member        TEXT NOT NULL,
        finished      INTEGER NOT NULL,
        token_id      TEXT NOT NULL,
        token_name    TEXT NOT NULL,
        provider      TEXT NOT NULL,
        kind          TEXT NOT NULL,
        method        TEXT NOT NULL,
        host          TEXT NOT NULL,
        path          TEXT NOT NULL,
        status        INTEGER NOT NULL,
        outcome       TEXT NOT NULL,
        request_bytes INTEGER NOT NULL,
        answer_bytes  INTEGER NOT NULL,
        at_us         INTEGER NOT NULL
    );
    CREATE INDEX queued_to_send ON queued (server, member, finished, n);
    """,
    "ALTER TABLE queued ADD COLUMN qpu_us INTEGER NOT NULL DEFAULT 0",  # 2: D-Wave QPU time of the answer
    # 3: the org server's reservation that admitted the use (its reported QPU time is charged against it)
    "ALTER TABLE queued ADD COLUMN reservation TEXT NOT NULL DEFAULT ''",
)
_COLUMNS = ("id, token_id, token_name, provider, kind, method, host, path, status, outcome, request_bytes, "
            "answer_bytes, at_us")  # UsageRecord's fields from token_id on, after `member`


# (the login's id: the address of one of its org servers, the same whichever replica is
# connected (common/org_servers.login_id); the member's name there). The column is `server`:
# before a login could name several servers, the id was its one server.
Login = tuple[str, str]


AUTO_CHECKPOINT_PAGES = 10_000  # about 40 MB of WAL before a call pays for a checkpoint itself


def new_id() -> str:
    return os.urandom(16).hex()


class UsageQueue:
    def __init__(self, path: pathlib.Path, clock: Callable[[], float] = time.time,
                 on_queued: Callable[[], None] = lambda: None) -> None:
        self._path = path
        self._db = open_db(path, MIGRATIONS, "the usage queue", synchronous="NORMAL")
        # Checkpoints (the only fsyncs at NORMAL) happen after the server has a batch (`checkpoint`,
        # off the calls' path); the automatic one stays as a bound on the WAL while the server is away.
        self._db.execute(f"PRAGMA wal_autocheckpoint = {AUTO_CHECKPOINT_PAGES}")
        self._clock = clock
        self._on_queued = on_queued  # told when a record is ready to send (the org's usage reporter)
        # Nothing is in flight at start: what a killed daemon left unfinished is finished now.
        self._db.execute("UPDATE queued SET finished = 1, outcome = ? WHERE finished = 0", (INTERRUPTED,))

    def close(self) -> None:
        self._db.close()

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def _insert(self, login: Login, use: UsageRecord, finished: bool, status: int, outcome: str, answer_bytes: int) -> str:
        record_id = new_id()
        self._db.execute(
            f"INSERT INTO queued (server, member, finished, {_COLUMNS}, reservation) "
            f"VALUES (?, ?, ?, {', '.join('?' * 13)}, ?)",
            (*login, int(finished), record_id, use.token_id, use.token_name, use.provider, use.kind, use.method,
             use.host, use.path, status, outcome, use.request_bytes, answer_bytes, self._now(), use.reservation))
        return record_id

    def begin(self, login: Login, use: UsageRecord, outcome: str) -> str:
        """Before the request leaves: the record, unfinished (`outcome` if it is never finished)."""
        return self._insert(login, use, False, 0, outcome, UNKNOWN_SIZE)

    def finish(self, record_id: str, status: int, outcome: str, answer_bytes: int = UNKNOWN_SIZE,
               qpu_us: int = 0) -> None:
        self._db.execute("UPDATE queued SET finished = 1, status = ?, outcome = ?, answer_bytes = ?, qpu_us = ? "
                         "WHERE id = ?", (status, outcome, answer_bytes, qpu_us, record_id))
        self._on_queued()

    def add(self, login: Login, use: UsageRecord, outcome: str, status: int = 0) -> None:
        """A use that is over as it happens (a sign, a refusal)."""
        self._insert(login, use, True, status, outcome, UNKNOWN_SIZE)
        self._on_queued()

    def to_send(self, login: Login, limit: int) -> list[UsageRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS}, qpu_us, reservation FROM queued WHERE server = ? AND member = ? "
                                "AND finished = 1 ORDER BY n LIMIT ?", (*login, limit)).fetchall()
        return [UsageRecord(r[0], "", *r[1:-2], qpu_us=r[-2], reservation=r[-1]) for r in rows]

    def sent(self, ids: list[str]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM queued WHERE id = ?", [(i,) for i in ids])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def checkpoint(self) -> None:
        """Fold the WAL into the file (its fsyncs), on a connection of its own: run it off the
        event loop (a passive checkpoint never blocks the calls' writes)."""
        db = sqlite3.connect(self._path, timeout=10.0)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def waiting(self, login_id: str) -> int:
        """Records made under this login (any member) not yet acknowledged by its servers."""
        return self._db.execute("SELECT count(*) FROM queued WHERE server = ?", (login_id,)).fetchone()[0]


class UsageRecorder:
    """The queue as calls use it: each record made under the login of the moment. Awaitable, as
    the org server's own record is (orgserver/relay.py); the queue's writes are made at once."""

    def __init__(self, queue: UsageQueue, login: Callable[[], Login]) -> None:
        self._queue = queue
        self._login = login

    async def begin(self, use: UsageRecord, outcome: str) -> str:
        return self._queue.begin(self._login(), use, outcome)

    async def finish(self, record_id: str, status: int, outcome: str, answer_bytes: int = UNKNOWN_SIZE,
               qpu_us: int = 0) -> None:
        self._queue.finish(record_id, status, outcome, answer_bytes, qpu_us)

    async def add(self, use: UsageRecord, outcome: str, status: int = 0) -> None:
        self._queue.add(self._login(), use, outcome, status)
