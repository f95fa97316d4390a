"""The org server's failed-key back-off, on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest
from qpu_broker.orgserver.throttle import (
    FIRST,
    FORGET,
    FREE,
    LOG_BURST,
    LOG_RATE,
    MAX,
    Throttle,
    peer_address,
    throttled_peer,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_back_off_starts_after_the_free_failures_doubles_caps_and_is_forgotten_after_a_quiet_while():
    clock = Clock()
    peers = Throttle(clock).peers
    for _ in range(FREE):
        assert peers.wait("10.0.0.1") == 0.0
        peers.failed("10.0.0.1")
    waits = []
    for _ in range(12):
        _, backoff, _ = peers.failed("10.0.0.1")
        waits.append(backoff)
    assert waits[:3] == [FIRST, 2 * FIRST, 4 * FIRST] and waits[-1] == MAX
    assert peers.wait("10.0.0.1") == MAX and peers.wait("10.0.0.2") == 0.0
    clock.now += MAX
    assert peers.wait("10.0.0.1") == 0.0
    peers.refused("10.0.0.1")
    assert peers.failed("10.0.0.1")[2] == 1  # refusals since the last failure are reported with the next one
    clock.now += FORGET + 1
    assert peers.failed("10.0.0.1")[:2] == (1, 0.0)  # a quiet while: it starts again


def test_failure_lines_have_a_budget_and_the_rest_are_summed_up():
    clock = Clock()
    budget = Throttle(clock).log
    assert all(budget.take(f"10.0.{n // 256}.{n % 256}") for n in range(LOG_BURST))
    assert budget.summary() is None
    assert not any(budget.take(f"10.1.0.{n}") for n in range(200))
    line = budget.summary()
    assert line.startswith("200 more failed credentials") and "from 200 peers: 10.1.0.0, 10.1.0.1," in line
    assert budget.summary() is None  # each failure summed up once
    clock.now += 1.0
    assert sum(budget.take("10.2.0.1") for _ in range(50)) == int(LOG_RATE)  # then LOG_RATE a second


@pytest.mark.parametrize(("peer", "address", "unit"), [
    ("ipv4:10.0.0.1:5123", "10.0.0.1", "10.0.0.1"),
    ("ipv4:127.0.0.1:5123", "127.0.0.1", "loopback"),
    ("ipv4:127.3.9.200:5123", "127.3.9.200", "loopback"),
    ("ipv6:[::1]:5123", "::1", "loopback"),
    ("ipv6:%5B::1%5D:5123", "::1", "loopback"),
    ("ipv6:%5B::ffff:127.0.0.1%5D:5123", "127.0.0.1", "loopback"),
    ("ipv6:[2001:db8:1:2:aaaa::1]:5123", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:5123", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("unix:/run/org.sock", "/run/org.sock", "/run/org.sock"),
])
def test_a_peer_is_its_address_without_the_port_throttled_as_that_or_its_ipv6_64(peer, address, unit):
    """grpc's peer string, the address logged (an IPv4 client of a dual-stack listener as IPv4),
    and the unit the back-off counts."""
    assert peer_address(peer) == address
    assert throttled_peer(address) == unit
