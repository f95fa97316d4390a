"""One use of an org token, as the member's daemon saw it and the org server keeps it.

The same record is queued by the daemon, stored by the server and shown to admins and
members (text or JSON): never a secret, a query string or a body. Plain types: the wire
layers convert them to and from messages (org_messages.py), so what imports them sees no proto.
"""

from __future__ import annotations

import dataclasses
import datetime

KINDS = frozenset({"forward", "sign"})
# answered: the provider answered (status set); signed: headers handed to the client (who sends
# the request itself); refused-*: the daemon refused before sending; failed: sent, no answer
# (unreachable, timed out); interrupted: the daemon stopped before it knew.
ANSWERED, SIGNED, REFUSED_DESTINATION, REFUSED_QUOTA, FAILED, INTERRUPTED = (
    "answered", "signed", "refused-destination", "refused-quota", "failed", "interrupted")
OUTCOMES = frozenset({ANSWERED, SIGNED, REFUSED_DESTINATION, REFUSED_QUOTA, FAILED, INTERRUPTED})
UNKNOWN_SIZE = -1
PAGE_MAX = 1000  # records in one answer of the server's usage list


@dataclasses.dataclass(frozen=True, slots=True)
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
    qpu_us: int = 0  # D-Wave: the QPU access time the answer reported (µs)
    reservation: str = ""  # the server's Reserve that admitted this use (reported QPU time is charged against it)
    qpu_charged_us: int = 0  # set by the server: what of qpu_us its quotas were charged


@dataclasses.dataclass(frozen=True, slots=True)
class UsagePage:
    """One read of the server's usage record. A read examines a bounded number of records, so a
    page with fewer records than asked for (even none) is not the end: `more` is."""

    records: list[UsageRecord]
    after_seq: int  # where the next read of the same query resumes (its after_seq)
    more: bool  # records stored before this read lie past `after_seq`


def iso(us: int) -> str:
    """A time in ISO 8601 UTC to the millisecond; a value no date holds is shown as it is."""
    try:
        return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError, OSError, TypeError):
        return f"(time {us!r})"


def usage_dict(r: UsageRecord) -> dict:
    """The JSON form (`--json`): every field, the time in ISO 8601 UTC."""
    d = dataclasses.asdict(r)
    d["at"] = iso(d.pop("at_us"))
    return d


def usage_line(r: UsageRecord) -> str:
    size = "?" if r.answer_bytes == UNKNOWN_SIZE else str(r.answer_bytes)
    qpu = f", QPU {r.qpu_us} µs" if r.qpu_us else ""
    if r.qpu_charged_us < r.qpu_us:  # a report no reservation admitted, or past what its reservation allowed
        qpu += f" reported, {r.qpu_charged_us} charged{'' if r.reservation else ' (no reservation)'}"
    return (f"{iso(r.at_us)}  {r.member or '-'}  {r.token_name} ({r.provider})  {r.kind} {r.method} {r.host}{r.path}  "
            f"{r.status or '-'} {r.outcome}  sent {r.request_bytes} B, answer {size} B{qpu}")


# -- quotas -------------------------------------------------------------------------------
REQUESTS, QPU_US = "requests", "qpu-us"
EVERY_MEMBER = "*"  # a quota's member: each member without a quota of their own
UNCOUNTED = -1  # a quota's `used` in a view with no one count (each member's default, org-wide)


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """A limit on org token use in repeating windows of `period_us` from `start_us`; with a
    validity span (luna-quantum's time quotas: `start`..`end`), outside it the use it binds is refused."""

    id: int
    member: str  # "": everyone's use together; EVERY_MEMBER: each member's own; else one member
    token_id: str  # "": every org token
    token_name: str
    unit: str  # REQUESTS | QPU_US
    limit: int
    period_us: int
    start_us: int
    used: int = 0  # in the window at hand (the caller's own, for per-member quotas)
    resets_us: int = 0
    valid_from_us: int = 0  # the validity span; 0: no bound (windows repeat for good)
    valid_until_us: int = 0

    def describe(self) -> str:
        who = {"": "everyone's", EVERY_MEMBER: "each member's"}.get(self.member, f"{self.member}'s")
        what = "requests" if self.unit == REQUESTS else "D-Wave QPU time (µs)"
        on = f"organization token {self.token_name!r}" if self.token_id else "all organization tokens"
        return f"{who} {what} on {on}, {self.limit} per {_span(self.period_us)}{self.valid_span()}"

    def valid_span(self) -> str:
        """`, valid from … until …` (either end may be open); "" without a span."""
        return ((f", valid from {iso(self.valid_from_us)}" if self.valid_from_us else "")
                + (f" until {iso(self.valid_until_us)}" if self.valid_until_us else ""))

    def ends(self) -> bool:
        """The window at hand is the last: the span ends with it, and nothing resets."""
        return bool(self.valid_until_us) and self.resets_us >= self.valid_until_us


def _span(us: int) -> str:
    seconds = us // 1_000_000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def quota_line(q: Quota) -> str:
    resets = f"ends {iso(q.valid_until_us)}" if q.ends() else f"resets {iso(q.resets_us)}"
    if q.used == UNCOUNTED:
        return f"quota #{q.id}: {q.describe()}: counted per member (quota list --member NAME), {resets}"
    left = max(q.limit - q.used, 0)
    return f"quota #{q.id}: {q.describe()}: {q.used} used, {left} left, {resets}"
