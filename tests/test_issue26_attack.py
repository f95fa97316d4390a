"""Hostile review of issue 26's changes (the personal call path's speed, the relay's): each test
here failed on main at 6219349 and names what broke."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from qpu_broker.orgserver.db import SQLITE
from qpu_broker.orgserver.record_writer import RecordWriter
from qpu_broker.orgserver.store import OrgStore


def test_a_quick_record_write_never_waits_on_another_connections_write_lock_on_the_event_loop(short_tmp):
    """record_writer.py commits a write on the event loop when the writer is idle and the store
    is SQLite at synchronous=NORMAL (the default), on the grounds that such a commit waits on no
    disk. It still waits on the file's write lock: an admin's CLI (or anything else) holding it
    stops the org server's whole event loop for up to SQLite's busy timeout (10 s), health checks,
    every member's calls and streams with it. On the writer's thread, the wait was that one call's."""
    path = str(short_tmp / "org.db")
    OrgStore.open(SQLITE, path).close()
    writer = RecordWriter(lambda: OrgStore.open(SQLITE, path, synchronous="normal"))
    writer.start()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # what `org-server user add` and kin hold while they write
    loop_ran, released = threading.Event(), threading.Event()

    def release_if_stuck() -> None:  # the failing case only: the loop never got to release it
        if not loop_ran.wait(3):
            holder.execute("ROLLBACK")
            released.set()

    watchdog = threading.Thread(target=release_if_stuck)
    watchdog.start()
    try:
        async def run() -> tuple[bool, float]:
            write = asyncio.create_task(writer.write(lambda s: s.set_meta("attack", "x")))
            started = time.monotonic()
            await asyncio.sleep(0)  # the write's task runs first
            stalled = time.monotonic() - started
            loop_ran.set()
            done_while_locked = write.done()
            if not released.is_set():
                holder.execute("ROLLBACK")
            await write
            return done_while_locked, stalled

        done_while_locked, stalled = asyncio.run(run())
        assert not done_while_locked, f"the event loop stood still {stalled:.1f} s on another connection's write lock"
    finally:
        loop_ran.set()
        watchdog.join()
        holder.close()
        writer.close()
