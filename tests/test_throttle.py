"""The org server's failed-key back-off, on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest
from qpu_broker.orgserver.throttle import FIRST, FREE, MAX, Throttle, peer_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_back_off_starts_after_the_free_failures_doubles_caps_and_clears_on_success():
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
    peers.clear("10.0.0.1")
    assert peers.wait("10.0.0.1") == 0.0


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:5123", "127.0.0.1"),
    ("ipv6:[::1]:5123", "::1"),
    ("ipv6:%5B::1%5D:5123", "::1"),
    ("ipv6:%5B::ffff:127.0.0.1%5D:5123", "127.0.0.1"),
    ("unix:/run/org.sock", "/run/org.sock"),
])
def test_peer_address_drops_the_port_and_maps_ipv4_clients_of_dual_stack_listeners(peer, address):
    assert peer_address(peer) == address
