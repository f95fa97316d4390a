"""What the vault tells the rest of the daemon, as small typed events.

Caches of opened secrets, exchanged bearers, derived signing keys and the org
link's secrets all depend on the vault's state. Each hears it through one
`Events` hub, subscribed in one place (daemon/main.py), so who reacts to what is
read there and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


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


class Events:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, subscriber: Callable[[Event], None]) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            subscriber(event)
