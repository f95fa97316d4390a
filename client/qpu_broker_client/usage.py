"""One use of an org token, as the member's daemon saw it and the org server keeps it.

The same record is queued by the daemon, stored by the server and shown to admins and
members (text or JSON): never a secret, a query string or a body.
"""

from __future__ import annotations

import dataclasses
import datetime

from .proto.qpubroker.org.v1 import org_pb2

KINDS = frozenset({"forward", "sign"})
# answered: the provider answered (status set); signed: headers handed to the client (who sends
# the request itself); refused-*: the daemon refused before sending; failed: sent, no answer
# (unreachable, timed out); interrupted: the daemon stopped before it knew.
ANSWERED, SIGNED, REFUSED_DESTINATION, REFUSED_QUOTA, FAILED, INTERRUPTED = (
    "answered", "signed", "refused-destination", "refused-quota", "failed", "interrupted")
OUTCOMES = frozenset({ANSWERED, SIGNED, REFUSED_DESTINATION, REFUSED_QUOTA, FAILED, INTERRUPTED})
UNKNOWN_SIZE = -1
PAGE_MAX = 1000  # records in one answer of the server's usage list


@dataclasses.dataclass(frozen=True)
class UsageRecord:
    id: str  # chosen by the daemon; the server keeps one record per id
    member: str  # set by the server from the caller's key
    token_id: str
    token_name: str
    provider: str
    kind: str
    method: str
    host: str
    path: str  # without the query string
    status: int  # the provider's HTTP status; 0 when there was none
    outcome: str
    request_bytes: int
    answer_bytes: int  # UNKNOWN_SIZE when not known
    at_us: int
    seq: int = 0  # the server's order of arrival; 0 until stored


def iso(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def usage_dict(r: UsageRecord) -> dict:
    """The JSON form (`--json`): every field, the time in ISO 8601 UTC."""
    d = dataclasses.asdict(r)
    d["at"] = iso(d.pop("at_us"))
    return d


def usage_line(r: UsageRecord) -> str:
    size = "?" if r.answer_bytes == UNKNOWN_SIZE else str(r.answer_bytes)
    return (f"{iso(r.at_us)}  {r.member or '-'}  {r.token_name} ({r.provider})  {r.kind} {r.method} {r.host}{r.path}  "
            f"{r.status or '-'} {r.outcome}  sent {r.request_bytes} B, answer {size} B")


def usage_to_proto(r: UsageRecord) -> org_pb2.UsageRecord:
    msg = org_pb2.UsageRecord(
        id=r.id, member=r.member, token_id=r.token_id, token_name=r.token_name, provider=r.provider, kind=r.kind,
        method=r.method, host=r.host, path=r.path, status=r.status, outcome=r.outcome, request_bytes=r.request_bytes,
        answer_bytes=r.answer_bytes, seq=r.seq)
    msg.at.FromMicroseconds(r.at_us)
    return msg


def usage_from_proto(m: org_pb2.UsageRecord) -> UsageRecord:
    return UsageRecord(m.id, m.member, m.token_id, m.token_name, m.provider, m.kind, m.method, m.host, m.path, m.status,
                       m.outcome, m.request_bytes, m.answer_bytes, m.at.ToMicroseconds(), m.seq)
