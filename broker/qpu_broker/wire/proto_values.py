"""Values both programs' wire layers put on and take off the wire: times and Reach.

The daemon (its servicers, its org link) and the org server (its servicer) use
these, so a timestamp or a Reach is spelled one way on every side.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from qpu_broker_client.proto import org_pb2

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
