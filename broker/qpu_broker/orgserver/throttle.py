"""Back-off for failed credentials (enrollment codes, device proofs, access tokens), per peer and
per code or device id; and a budget for logging them.

The daemon's passphrase back-off is the model: each failure sets a "not before"
on a monotonic clock, 0.1 s doubling to 10 s. The first few failures are free (a
mistyped paste, a few scripts behind one NAT address with an old key), so the
back-off starts with the fifth in a row. A success does not clear it: a member
who mixes their own credential in with guesses gains nothing. A peer's count is
forgotten after FORGET seconds without a failure.

- Per peer: an IPv4 address (all of loopback as one), or an IPv6 /64 (what one
  host is routed). Attempts from a peer inside its back-off are refused
  unchecked (RESOURCE_EXHAUSTED), so one machine cannot grind through codes, and
  parallel connections or addresses from its own /64 gain nothing.
- Per id (a code's id, a device's id: the public half): wrong secrets for an id
  inside its back-off are refused the same way, which slows guessing one code
  from many addresses. The right one is still checked and admitted, so an
  attacker who knows an id cannot lock its owner out.
- The log: each checked failure is a line, up to LOG_BURST lines and then
  LOG_RATE a second; past that, failures are counted and summed up in one line
  a second (how many, from how many peers, a few named), so a flood from many
  addresses cannot fill the disk.

Tables are bounded: the oldest entries go first.
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
FORGET = 600.0  # seconds without a failure after which a peer or key id starts again
MAX_ENTRIES = 10_000
LOG_BURST, LOG_RATE = 50, 10.0  # failure lines: a burst, then this many a second


@dataclasses.dataclass
class _Entry:
    failures: int = 0
    not_before: float = 0.0
    last: float = 0.0  # when the last failure was
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
        now = self._clock()
        entry = self._entries.pop(key, None)
        if entry is None or now - entry.last > FORGET:
            entry = _Entry()
        entry.failures += 1
        entry.last = now
        backoff = 0.0 if entry.failures <= FREE else min(MAX, FIRST * 2 ** (entry.failures - FREE - 1))
        entry.not_before = now + backoff
        refused, entry.refused = entry.refused, 0
        self._entries[key] = entry
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return entry.failures, backoff, refused



class LogBudget:
    """How many failure lines may be written now (a token bucket); the rest are counted."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens = float(LOG_BURST)
        self._at = clock()
        self.unlogged = 0
        self.unlogged_peers: dict[str, None] = {}  # in order of first sight, bounded

    def take(self, peer: str) -> bool:
        now = self._clock()
        self._tokens = min(float(LOG_BURST), self._tokens + (now - self._at) * LOG_RATE)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.unlogged += 1
        if len(self.unlogged_peers) < MAX_ENTRIES:
            self.unlogged_peers[peer] = None
        return False

    def summary(self) -> str | None:
        """One line for the failures not logged since the last summary, or None."""
        if not self.unlogged:
            return None
        peers = list(self.unlogged_peers)
        line = (f"{self.unlogged} more failed credentials, not logged one by one (over {LOG_RATE:.0f} a second), "
                f"from {len(peers)} peer{'s' if len(peers) != 1 else ''}: {', '.join(peers[:5])}"
                f"{', ...' if len(peers) > 5 else ''}")
        self.unlogged, self.unlogged_peers = 0, {}
        return line


class Throttle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.peers = _Table(clock)
        self.key_ids = _Table(clock)
        self.log = LogBudget(clock)


def throttled_peer(address: str) -> str:
    """The unit a peer is throttled as: an IPv4 address (loopback as one), an IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_loopback:
        return "loopback"
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


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
