"""The org records (usage.py's UsageRecord, UsagePage and Quota) as qpubroker.org.v1 messages and
back: the one conversion each way, used by the client, the daemon's wire and the org server's.

The records themselves are plain types the domain modules share; only the wire layers (this
module, broker.py, the daemon's wire/ and the org server's orgserver/wire/) see a message.
"""

from __future__ import annotations

from collections.abc import Iterable

from .proto.qpubroker.org.v1 import org_pb2
from .usage import PAGE_MAX, Quota, UsagePage, UsageRecord


def usage_to_proto(r: UsageRecord) -> org_pb2.UsageRecord:
    msg = org_pb2.UsageRecord(
        id=r.id, member=r.member, token_id=r.token_id, token_name=r.token_name, provider=r.provider, kind=r.kind,
        method=r.method, host=r.host, path=r.path, status=r.status, outcome=r.outcome, request_bytes=r.request_bytes,
        answer_bytes=r.answer_bytes, seq=r.seq, qpu_us=r.qpu_us, reservation=r.reservation,
        qpu_charged_us=r.qpu_charged_us)
    msg.at.FromMicroseconds(r.at_us)
    return msg


def usage_from_proto(m: org_pb2.UsageRecord) -> UsageRecord:
    return UsageRecord(m.id, m.member, m.token_id, m.token_name, m.provider, m.kind, m.method, m.host, m.path, m.status,
                       m.outcome, m.request_bytes, m.answer_bytes, m.at.ToMicroseconds(), m.seq, m.qpu_us, m.reservation,
                       m.qpu_charged_us)


def usage_report(records: Iterable[UsageRecord]) -> org_pb2.ReportUsageRequest:
    """A daemon's queued records as one ReportUsage."""
    return org_pb2.ReportUsageRequest(records=[usage_to_proto(r) for r in records])


def usage_page_from_proto(m: org_pb2.ListUsageResponse, limit: int = 0) -> UsagePage:
    """`m` may be an OrgUsageResponse too (the same fields). A server from before resume positions
    answered neither: then a full page means more, as it did."""
    records = [usage_from_proto(r) for r in m.records]
    if m.next_after_seq or m.more:
        return UsagePage(records, m.next_after_seq, m.more)
    full = bool(records) and len(records) >= (limit or PAGE_MAX)
    return UsagePage(records, records[-1].seq if records else 0, full)


def quota_to_proto(q: Quota) -> org_pb2.Quota:
    msg = org_pb2.Quota(id=q.id, member=q.member, token_id=q.token_id, token_name=q.token_name, unit=q.unit,
                        limit=q.limit, period_seconds=q.period_us // 1_000_000, used=max(q.used, 0))
    msg.start.FromMicroseconds(q.start_us)
    msg.resets.FromMicroseconds(q.resets_us)
    if q.valid_from_us:
        msg.valid_from.FromMicroseconds(q.valid_from_us)
    if q.valid_until_us:
        msg.valid_until.FromMicroseconds(q.valid_until_us)
    return msg


def quota_from_proto(m: org_pb2.Quota) -> Quota:
    return Quota(m.id, m.member, m.token_id, m.token_name, m.unit, m.limit, m.period_seconds * 1_000_000,
                 m.start.ToMicroseconds(), m.used, m.resets.ToMicroseconds(), m.valid_from.ToMicroseconds(),
                 m.valid_until.ToMicroseconds())


def set_quota_request(member: str, token: str, unit: str, *, update: bool, limit: int | None, start_us: int | None,
                      end_us: int | None) -> org_pb2.SetQuotaRequest:
    """What is None stays unset (an update keeps it; a new quota takes the server's default)."""
    req = org_pb2.SetQuotaRequest(member=member, token=token, unit=unit, update=update)
    if limit is not None:
        req.limit = limit
    if start_us is not None:
        req.start.FromMicroseconds(start_us)
    if end_us is not None:
        req.end.FromMicroseconds(end_us)
    return req


def list_quotas_request(member: str) -> org_pb2.ListQuotasRequest:
    return org_pb2.ListQuotasRequest(member=member)


def remove_quota_request(member: str, token: str, unit: str) -> org_pb2.RemoveQuotaRequest:
    return org_pb2.RemoveQuotaRequest(member=member, token=token, unit=unit)
