"""The usage record of relayed calls, written off the event loop and committed in groups.

A relayed call's record is begun before its request leaves and finished with its answer
(relay.py); a Sign's is written before the signature goes back. Each is a write transaction
whose commit waits on the disk (SQLite's fsync, PostgreSQL's WAL flush) and, across replicas,
on the one write lock. Made on the event loop, every call waited on every other call's commits
and the server served nothing meanwhile.

Here one thread with a connection of its own makes them: what arrives while a commit is under
way goes into the next transaction together (a group commit: one fsync, one turn of the lock
for all of them), and each caller's await ends only once its write is committed, so a server
killed at any moment has acknowledged no record it had not written. A write that fails (a
constraint) is retried in a transaction of its own, so it takes no other write with it.

Where a commit waits on nothing (`quick_commits`: SQLite at synchronous=NORMAL), a write that
finds the writer idle is made at once on the event loop instead: at one call in flight the
hand-off (the thread woken, the loop woken back) cost more than the commit itself. Writes that
find it busy queue for the thread, so under load they are still committed in groups; so does one
that finds another connection holding the file's write lock (an admin's CLI): on the loop, its
wait (up to SQLite's busy timeout) would stop the whole server. What such a
connection does wait on now and then, a WAL checkpoint's fsyncs, is left to the thread: every
CHECKPOINT_EVERY commits it checkpoints, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from qpu_broker.orgserver.db import Busy
from qpu_broker.orgserver.store import OrgStore

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[OrgStore], Any]
GROUP_MAX = 256  # writes in one transaction at most (a commit's wait is shared; its length is not)
# A record's commit adds about 8 pages to the WAL: about SQLite's own 1000-page autocheckpoint.
CHECKPOINT_EVERY = 128
_STOP, _CHECKPOINT = object(), object()


class RecordWriter:
    def __init__(self, open_store: Callable[[], OrgStore]) -> None:
        """`open_store`: a new connection to the org's store, opened on the writer's thread."""
        self._open_store = open_store
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._opened = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._store: OrgStore | None = None  # the writer's connection, while open
        self._quick = False  # its commits are made inline when it is idle (quick_commits)
        self._turn = threading.Lock()  # held by whoever uses it: the thread, or a write made inline
        self._commits = 0  # since the last checkpoint (quick commits), counted under _turn
        # Writes handed to the thread (counted by write(), on the event loop) and, of those, committed
        # (by the thread, under _turn): a write made inline only when they are equal, so it never goes
        # before one the thread has taken from the queue but not yet committed (an empty queue says
        # nothing of that one). Each count is written by one thread alone.
        self._queued = 0
        self._committed = 0

    def start(self) -> None:
        """Opens the writer's connection; raises what opening it raised."""
        self._thread.start()
        self._opened.wait()
        if self._failed is not None:
            raise self._failed

    async def write(self, job: Callable[[OrgStore], T]) -> T:
        """`job(store)` inside a write transaction of the writer's, once it is committed. The write
        is made even if the caller stops waiting (a cancelled call's record is still written)."""
        if self._quick and self._turn.acquire(blocking=False):
            done = None
            try:  # the writer is idle (no write queued, nor taken and uncommitted): committed here, as the thread would
                if self._store is not None and self._committed == self._queued:
                    done = _commit(self._store, [job], at_once=True)[0]
                    self._commits += 1
                    if self._commits == CHECKPOINT_EVERY:
                        self._jobs.put(_CHECKPOINT)  # the thread's, off the event loop
            except Busy:  # another connection writes (an admin's CLI): the wait for it is the thread's
                pass
            finally:
                self._turn.release()
            if done is not None:
                ok, value = done
                if ok:
                    return value
                raise value
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued += 1
        self._jobs.put((job, loop, future))
        return await future

    def close(self) -> None:
        """Writes what was asked for, then stops."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        try:
            store = self._open_store()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._failed = exc
            self._opened.set()
            return
        self._store, self._quick = store, store.db.quick_commits
        self._opened.set()
        try:
            while True:
                group = [self._jobs.get()]
                while len(group) < GROUP_MAX and group[-1] is not _STOP:
                    try:
                        group.append(self._jobs.get_nowait())
                    except queue.Empty:
                        break
                stop = group[-1] is _STOP
                jobs = [g for g in group if g is not _STOP and g is not _CHECKPOINT]
                if jobs:
                    with self._turn:
                        try:
                            results = _commit(store, [job for job, _, _ in jobs])
                        finally:
                            self._committed += len(jobs)
                        self._commits += 1
                    _settle(jobs, results)
                if self._quick and self._commits >= CHECKPOINT_EVERY:
                    with self._turn:
                        self._commits = 0
                        store.db.checkpoint()
                if stop:
                    return
        finally:
            with self._turn:
                self._store = None
                store.close()


def _commit(store: OrgStore, jobs: list[Job], *, at_once: bool = False) -> list[tuple[bool, Any]]:
    """Every job in one transaction; if any fails, each in a transaction of its own. `at_once`:
    raises Busy, having done nothing, if the write lock is another connection's."""
    try:
        # Unordered: the writes that need a turn at the write lock take it (db/), those that do not
        # (a record finished with nothing to charge) let another replica's turn go on meanwhile.
        # Flat: a job that fails fails the group, and each is then redone alone (below).
        with store.db.writing(ordered=False, at_once=at_once, flat=True):
            return [(True, job(store)) for job in jobs]
    except Busy:
        raise
    except Exception as exc:  # noqa: BLE001 - each caller gets its own job's error, below
        if len(jobs) == 1:
            return [(False, exc)]
    return [_commit(store, [job])[0] for job in jobs]


def _settle(jobs: list[tuple[Job, asyncio.AbstractEventLoop, asyncio.Future]], results: list[tuple[bool, Any]]) -> None:
    for (_, loop, future), (ok, value) in zip(jobs, results, strict=True):
        try:
            loop.call_soon_threadsafe(_resolve, future, ok, value)
        except RuntimeError:  # the loop closed meanwhile: nobody waits
            log.debug("a usage record's writer finished after its caller's loop closed")


def _resolve(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():  # the caller stopped waiting (cancelled): the write stands all the same
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
