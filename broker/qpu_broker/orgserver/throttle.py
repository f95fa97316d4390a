"""Back-off for failed API keys, per peer address and per key id.

The daemon's passphrase back-off is the model: each failure sets a "not before"
on a monotonic clock, 0.1 s doubling to 10 s, and a success clears it. The
first few failures are free (a mistyped paste, a few scripts behind one NAT
address with an old key), so the back-off starts with the fifth in a row.

- Per peer (the client's address, without its port): attempts from a peer
  inside its back-off are refused unchecked (RESOURCE_EXHAUSTED), so one
  machine cannot grind through keys, and parallel connections gain nothing.
- Per key id (the public half of a key): wrong secrets for a key id inside its
  back-off are refused the same way, which slows guessing one user's key from
  many addresses. The right key is still checked and admitted, so an attacker
  who knows a key id cannot lock its owner out.

Tables are bounded: the oldest entries go first, and entries past their
back-off expire.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import time
import urllib.parse
from collections.abc import Callable

FIRST, MAX = 0.1, 10.0
FREE = 4  # failures in a row before any back-off
MAX_ENTRIES = 10_000


@dataclasses.dataclass
class _Entry:
    failures: int = 0
    not_before: float = 0.0
    refused: int = 0  # attempts refused inside the current back-off (logged once, when it ends)


class _Table:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def wait(self, key: str) -> float:
        entry = self._entries.get(key)
        return 0.0 if entry is None else max(0.0, entry.not_before - self._clock())

    def refused(self, key: str) -> int:
        entry = self._entries.get(key)
        if entry is None:
            return 0
        entry.refused += 1
        return entry.refused

    def failed(self, key: str) -> tuple[int, float, int]:
        """Record a failure: (failures so far, the back-off now set, refusals since the last failure)."""
        entry = self._entries.pop(key, None) or _Entry()
        entry.failures += 1
        backoff = 0.0 if entry.failures <= FREE else min(MAX, FIRST * 2 ** (entry.failures - FREE - 1))
        entry.not_before = self._clock() + backoff
        refused, entry.refused = entry.refused, 0
        self._entries[key] = entry
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return entry.failures, backoff, refused

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)


class Throttle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.peers = _Table(clock)
        self.key_ids = _Table(clock)


def peer_address(peer: str) -> str:
    """grpc's "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678" (brackets maybe %-encoded) -> the address alone.

    An IPv4 client of a dual-stack listener ("::ffff:1.2.3.4") is the IPv4 address."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv6" and rest.startswith("["):
        address = rest[1:].partition("]")[0]
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
        except ValueError:
            return address
        return str(mapped) if mapped else address
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return rest or peer
