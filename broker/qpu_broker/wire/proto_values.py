"""Values put on and taken off the wire: times, Reach and token kinds.

The daemon (its servicers, its org link) and the org server (its servicer) use
these, so a timestamp or a Reach is spelled one way on every side.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from qpu_broker_client.proto.qpubroker.v1 import tokens_pb2
from qpu_broker_client.wire_messages import KIND_TO_PROTO as CLIENT_KIND_TO_PROTO

from qpu_broker.common.reach import Owner, Reach, make_reach


def timestamp(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def micros(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def reach_to_proto(r: Reach) -> org_pb2.Reach:
    return org_pb2.Reach(hosts=list(r.hosts), plain_http_hosts=list(r.plain_http_hosts), ca_pem=r.ca_pem,
                         token_url=r.token_url)


def reach_from_proto(msg: org_pb2.Reach, where: str, extra_hosts: Iterable[str] = ()) -> Reach:
    """An org's Reach, checked as strictly as the daemon's own config (InvalidArgumentError naming `where`)."""
    return make_reach(hosts=[*msg.hosts, *extra_hosts], plain_http_hosts=msg.plain_http_hosts, ca_pem=msg.ca_pem,
                      token_url=msg.token_url, owner=Owner.ORG, where=where)


# The client's table, read both ways (a token kind here is its QpuTokenType's value).
KIND_TO_PROTO = {kind.value: proto for kind, proto in CLIENT_KIND_TO_PROTO.items()}
KIND_FROM_PROTO = {proto: kind for kind, proto in KIND_TO_PROTO.items()} | {tokens_pb2.TOKEN_KIND_UNSPECIFIED: "personal"}


def header_pairs(msgs: Iterable) -> list[tuple[str, str]]:
    """Header messages (the daemon's Header, the org server's RelayHeader) as (name, value) pairs."""
    return [(h.name, h.value) for h in msgs]


def relay_mode(relay: bool, cached: bool) -> bool:
    """Whether a CreateTokenRequest (the daemon's or the org server's) makes a relay token: yes
    unless `cached` opts it into caching. `relay` is older clients' word for the default (proto3
    cannot tell its false from unset, so only true counts); asking for both is a contradiction."""
    if relay and cached:
        raise InvalidArgumentError("an organization token is relay or cached, not both: set cached to cache its "
                                   "secret in members' daemons, or neither for a relay token (the default)")
    return not cached
