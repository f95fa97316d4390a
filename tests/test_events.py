"""The event hub: listeners run on the event loop, in publish order, whoever publishes.

A store held on the writer thread (a backup put back under the running daemon, caught by a
write) says `Locked` there. Its listeners used to run on that thread: the sessions' listener
asked for the running loop and failed (persistent sessions stayed open, the write answered
INTERNAL), and the org link cancelled asyncio tasks from the wrong thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

import pytest
from conftest import wait_for
from qpu_broker.tokens.events import Events, Locked, TokenChanged, Unlocked
from qpu_broker_client import LockedError
from test_sessions import _get, _gone, env_session


def test_listeners_run_on_the_loop_in_publish_order_whoever_publishes():
    heard: list[tuple[object, bool]] = []
    wiped: list[tuple[object, int]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        events = Events(loop)
        events.subscribe(lambda e: heard.append((e, asyncio.get_running_loop() is loop)))
        events.subscribe_at_once(lambda e: wiped.append((e, threading.get_ident())))

        def writer() -> None:  # publishes while the loop is busy: its events wait for the loop
            events.publish(Locked())
            assert wiped[-1] == (Locked(), threading.get_ident()), "the wipe runs before publish returns"
            assert heard == []
            events.publish(TokenChanged("a"))

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()  # on the loop, blocking it: nothing queued for it has run yet
        events.publish(Unlocked())  # on the loop: delivered after what was published before it
        assert heard == [(Locked(), True), (TokenChanged("a"), True), (Unlocked(), True)]
        await asyncio.sleep(0)  # the writer's scheduled drain finds nothing left to deliver
        assert len(heard) == 3

    asyncio.run(scenario())
    assert [e for e, _ in wiped] == [Locked(), TokenChanged("a"), Unlocked()]


def test_a_listener_that_publishes_is_heard_after_the_event_under_way():
    events = Events()
    heard: list[str] = []

    def first(event) -> None:
        heard.append(f"first {type(event).__name__}")
        if isinstance(event, Unlocked):
            events.publish(Locked())

    events.subscribe(first)
    events.subscribe(lambda e: heard.append(f"second {type(e).__name__}"))
    events.publish(Unlocked())
    assert heard == ["first Unlocked", "second Unlocked", "first Locked", "second Locked"]


def test_a_failing_listener_is_logged_once_and_the_others_still_hear(caplog):
    events = Events()
    heard = []

    def locked_listener(event) -> None:
        raise LockedError("the agent is locked (run qpu-broker unlock)")

    def buggy_listener(event) -> None:
        raise ValueError("s3cret-value")

    events.subscribe(locked_listener)
    events.subscribe(buggy_listener)
    events.subscribe(heard.append)
    with caplog.at_level(logging.WARNING, logger="qpu_broker.tokens.events"):
        events.publish(Unlocked())
    assert heard == [Unlocked()]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "locked_listener failed on Unlocked: the agent is locked" in lines[0]
    assert "buggy_listener failed on Unlocked: ValueError at " in lines[1] and "test_events.py" in lines[1]
    assert "s3cret" not in caplog.text and all(r.exc_info is None for r in caplog.records)


def test_a_store_held_on_the_writer_thread_ends_env_sessions_on_the_loop(rig):
    d, _hw, _ = rig
    base, key = env_session(d)
    assert _get(base + "x", {"X-Auth-Token": key})[0] == 200
    backup = d.home.parent / "backup.db"
    live = sqlite3.connect(d.paths.store)
    live.backup(sqlite3.connect(backup))
    d.broker().qpu_token.update(qpu_token_name="my-ionq", token="rotated-secret")
    sqlite3.connect(backup).backup(live)  # a backup put back under the running daemon
    live.close()
    # Nothing on the loop reads the generation before the delete: the writer thread finds it.
    with pytest.raises(LockedError, match="went back to generation"):
        d.broker().qpu_token.delete(qpu_token_name="my-dwave")
    assert d.broker().status().locked
    wait_for(lambda: _gone(base, key), "the env session to end on the hold's Locked")
    assert "Traceback" not in d.log() and "failed on Locked" not in d.log()
