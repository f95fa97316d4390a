"""What the vault tells the rest of the daemon, as small typed events.

Caches of opened secrets, exchanged bearers, derived signing keys and the org
link's secrets all depend on the vault's state. Each hears it through one
`Events` hub, subscribed in one place (daemon/main.py), so who reacts to what is
read there and nowhere else.

Listeners run on the event loop, one event at a time, in the order the events were
published, whichever thread published them: a store held on the writer thread says
`Locked` there, and the hub hands it to the loop (`call_soon_threadsafe`). Listeners may
then touch asyncio and loop-only state freely. What must not wait for the loop's next
turn is the wiping of cached secrets: `subscribe_at_once` wipes run on the publishing
thread before `publish` returns (see `Events.publish` for the guarantee).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
from collections.abc import Callable

from qpu_broker_client.errors import QpuBrokerError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Locked:
    """The data key was dropped: every secret held in memory must go too."""


@dataclasses.dataclass(frozen=True)
class Unlocked:
    """The data key is at hand and the store verified."""


@dataclasses.dataclass(frozen=True)
class TokenChanged:
    """A stored token was rotated, renamed or deleted: what was derived from it is stale."""
    token_id: str


@dataclasses.dataclass(frozen=True)
class Audited:
    """Something the local audit log keeps: a change to a personal token (never its secret)."""
    action: str  # token-created | token-renamed | token-rotated | token-deleted | default-set | ...
    fields: dict = dataclasses.field(default_factory=dict)


Event = Locked | Unlocked | TokenChanged | Audited


Listener = Callable[[Event], None]


class Events:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: where listeners run (the daemon's). Without one (in-process tests of a single
        part) they run on the publishing thread."""
        self._loop = loop
        self._listeners: list[Listener] = []
        self._at_once: list[Listener] = []
        self._queue: collections.deque[Event] = collections.deque()  # append and popleft are atomic
        self._draining = threading.RLock()  # one drain at a time; a listener's own publish joins it
        self._in_drain = False

    def subscribe(self, listener: Listener) -> None:
        """`listener` hears every event, on the loop, in publish order."""
        self._listeners.append(listener)

    def subscribe_at_once(self, wipe: Listener) -> None:
        """`wipe` hears every event on the thread that publishes it, before `publish` returns: for
        wiping secrets held in memory only (thread-safe, quick, never waiting on the loop)."""
        self._at_once.append(wipe)

    def publish(self, event: Event) -> None:
        """Tell every listener. A `Locked` is published after the data key is dropped, so when this
        returns, on any thread, the key is gone and the at-once wipes have emptied the secret
        caches: a use that starts after it finds neither (each path to a secret checks
        the Keyring's `locked` first). Published on the loop, the listeners have run when this returns;
        from another thread, they run at the loop's next turn, after callbacks queued before it."""
        for wipe in self._at_once:
            _tell(wipe, event)
        self._queue.append(event)
        if self._loop is None or _running_loop() is self._loop:
            self._drain()
            return
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the daemon has stopped and nobody is left to tell
            self._queue.clear()

    def _drain(self) -> None:
        with self._draining:
            if self._in_drain:
                return  # published by a listener: the drain under way delivers it next, in order
            self._in_drain = True
            try:
                while self._queue:
                    event = self._queue.popleft()
                    for listener in self._listeners:
                        _tell(listener, event)
            finally:
                self._in_drain = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _tell(listener: Listener, event: Event) -> None:
    """One listener's error is logged (one line) and never keeps the event from the others. Our
    errors' messages carry names and ids only; another's text may hold anything, so only its type
    and where it was raised are logged."""
    try:
        listener(event)
    except QpuBrokerError as exc:
        log.warning("%s failed on %s: %s", _name(listener), type(event).__name__, exc)
    except Exception as exc:  # noqa: BLE001 - logged; the other listeners must still hear the event
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f" at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame is not None else ""
        log.error("%s failed on %s: %s%s", _name(listener), type(event).__name__, type(exc).__name__, where)


def _name(listener: Listener) -> str:
    return getattr(listener, "__qualname__", type(listener).__qualname__)
