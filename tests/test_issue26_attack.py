"""Hostile review of issue 26's changes (the personal call path's speed, the relay's): each test
here failed on main at 6219349 and names what broke."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
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


@pytest.fixture
def domain_rig(short_tmp):
    from test_org_domain import new_rig

    made = new_rig(short_tmp)
    yield made
    made.usage.close()


def test_a_flapping_stream_does_not_make_the_daemon_hammer_a_refusing_server_with_reports(domain_rig, monkeypatch):
    """org/usage_reporter.py: a reconnect ends the reports' back-off (failover to a live replica
    sends at once). A stream that comes up and breaks again and again (a proxy cutting it, an
    overloaded server) while the server refuses reports must not turn every reconnect into a
    report sent at once with the back-off started over: the reports stay within about twice the
    back-off's own count, whatever the stream does."""
    from qpu_broker.org import usage_reporter
    from qpu_broker.org.session import CONNECTED
    from qpu_broker_client.errors import UnavailableError
    from qpu_broker_client.usage import ANSWERED
    from test_org_domain import _use

    monkeypatch.setattr(usage_reporter, "USAGE_RETRY_FIRST", 0.05)
    rig = domain_rig
    rig.usage.add(("org-a.test:443", "ada"), _use("mine"), ANSWERED, 200)
    rig.org.session.member(rig.server.member)
    rig.org.session.state = CONNECTED
    rig.server.fail["ReportUsage"] = UnavailableError("the organization server is overloaded")
    window = 1.5

    async def run() -> int:
        task = asyncio.create_task(rig.org.reporter.run())
        end = time.monotonic() + window
        while time.monotonic() < end:
            rig.org.reporter.wake()  # the stream up again (what the sync calls once it is)
            await asyncio.sleep(0.01)
        task.cancel()
        return sum(1 for m, _ in rig.server.calls if m == "ReportUsage")

    backoff_tries = 1 + sum(1 for n in range(20) if 0.05 * (2 ** (n + 1) - 1) <= window)  # at 0, .05, .15, .35 ...
    reports = asyncio.run(run())
    assert reports <= 2 * backoff_tries + 1, f"{reports} reports in {window} s (the back-off alone makes {backoff_tries})"
