"""The org servers a member's daemon logs in to: one HOST:PORT, or several replicas of one
org (one database behind them), and the id a login's usage records are queued under.

The CLI checks `--server` values here before it asks for the enrollment code; the daemon checks
them again for every other client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.reach import split_host_port

EXAMPLE = "org.example.com:7443"


def parse_servers(entries: Iterable[str]) -> tuple[str, ...]:
    """Each HOST:PORT checked, repeats dropped, order kept (it is the order they are tried in).
    Kept as given, not re-spelled: a login stored before there could be several servers is
    keyed by its text (`login_id`)."""
    servers: list[str] = []
    for entry in entries:
        server = entry.strip()
        try:
            _, port = split_host_port(server, None)
        except ValueError as exc:
            raise InvalidArgumentError(f"the org server {entry!r} is not HOST:PORT ({exc}), e.g. {EXAMPLE}") from None
        if port is None:
            hint = ": give each server its own --server" if "," in server else f", e.g. {EXAMPLE}"
            raise InvalidArgumentError(f"the org server {entry!r} has no port: give HOST:PORT{hint}")
        if server not in servers:
            servers.append(server)
    if not servers:
        raise InvalidArgumentError(f"no org server given: --server HOST:PORT (e.g. {EXAMPLE}), once per replica")
    return tuple(servers)


def login_id(servers: Sequence[str], previous: str = "") -> str:
    """What a login's usage records are queued under (with the member's name), the same whichever
    replica is connected. A new login keeps the id of the one before it while that is still one
    of its servers, so records queued before a re-login (a replica added, the order changed, a
    key replaced) are still sent; otherwise it is the first server in sorted order. A login to
    one server is keyed by that server: the id every login had before there could be several."""
    return previous if previous in servers else min(servers)
