"""Setting and removing quotas: the one place where both ways an admin changes them check the
change and record it: the org-server CLI (`quota set|rm`, on the data dir) and the SetQuota /
RemoveQuota calls (luna-quantum's time-quota calls, made through an admin's daemon).

A time quota in luna-quantum's form is a limit over one span, `start` to `end`. Here it is a
quota with that one window and that validity span: before `start` and after `end` the uses it
binds are refused until an admin sets a new policy, as in Luna (quotas.py). `quota set --from
--until` gives any quota a span (its windows then repeat inside it).
"""

from __future__ import annotations

import dataclasses

from qpu_broker_client.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
)
from qpu_broker_client.usage import EVERY_MEMBER, QPU_US, REQUESTS, Quota

from qpu_broker.common.names import canonical_name
from qpu_broker.orgserver.admin_record import AdminRecord
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.providers import traits

QUOTA_MAX = 1 << 53  # requests or QPU µs: past any use, and still an exact integer everywhere
SPAN_MAX_US = 100 * 366 * 86400 * 1_000_000  # a window's length, as parse_span bounds --per
# luna-quantum: a time quota without an end lasts 365 days from its start (its
# create_group_time_quota docstring, client/rest_client/qpu_token_rest_client.py:283-287).
LUNA_DEFAULT_SPAN_US = 365 * 86400 * 1_000_000
TIME_MAX_US = 253402300800 * 1_000_000  # 10000-01-01: what a protobuf Timestamp may hold


def _who(member: str) -> str:
    return {"": "everyone's use", EVERY_MEMBER: "each member's use"}.get(member, f"{member}'s use")


def write(store: OrgStore, record: AdminRecord, q: Quota) -> Quota:
    """Add `q`, or replace the quota for the same member, token and unit (its counts stay while
    its start does); checked, and recorded. Returns it as `quota list` shows it."""
    if q.unit not in (REQUESTS, QPU_US):
        raise InvalidArgumentError(f"a quota counts {REQUESTS} or {QPU_US}, not {q.unit[:32]!r}")
    if not 0 <= q.limit <= QUOTA_MAX:
        raise InvalidArgumentError(f"a quota is 0 or more, and at most {QUOTA_MAX} requests or "
                                   f"{QUOTA_MAX // 1_000_000} QPU seconds")
    if not 0 < q.period_us <= SPAN_MAX_US:
        raise InvalidArgumentError("a quota's window is longer than nothing and at most 100 years: its start must be "
                                   "before its end")
    for name, at in (("from", q.valid_from_us), ("until", q.valid_until_us)):
        if not 0 <= at < TIME_MAX_US:
            raise InvalidArgumentError(f"a quota's valid {name} is a time from 1970 to 9999")
    if q.valid_until_us and q.valid_until_us <= q.valid_from_us:
        raise InvalidArgumentError("a quota's validity span ends before it begins: its start must be before its end")
    if q.valid_from_us and q.start_us > q.valid_from_us:
        raise InvalidArgumentError("a quota's first window starts after its validity span does: start its windows "
                                   "at the span's start (or earlier)")
    if q.member and q.member != EVERY_MEMBER and store.user(q.member) is None:
        raise InvalidArgumentError(f"no user named {q.member[:128]!r}: see 'org-server user list'")
    with record.changing() as note:
        quota_id = store.set_quota(q)
        [shown] = [s for s in Quotas(store).status(None) if s.id == quota_id]
        note("quota.set", f"#{quota_id}", shown.describe())
    return shown


def first_window(store: OrgStore, member: str, token_id: str, unit: str, now_us: int, valid_from_us: int = 0) -> int:
    """Where a new quota's windows start (`quota set` without --start): its validity span's start,
    else the replaced one's (a new limit keeps its windows and this window's count), else today at
    00:00 UTC."""
    if valid_from_us:
        return valid_from_us
    same = _existing(store, member, token_id, unit)
    return same.start_us if same is not None else now_us - now_us % (86400 * 1_000_000)


def remove(store: OrgStore, record: AdminRecord, quota_id: int) -> Quota | None:
    """Remove quota #`quota_id` (NOT_FOUND when there is none); recorded. Returns what it was."""
    if not 0 < quota_id < 1 << 62:
        raise NotFoundError(f"no quota #{quota_id}: see 'org-server quota list'")
    with record.changing() as note:
        gone = next((q for q in store.quotas() if q.id == quota_id), None)
        store.delete_quota(quota_id)  # NOT_FOUND when there is no such quota
        note("quota.rm", f"#{quota_id}", gone.describe() if gone is not None else "")
    return gone


def _existing(store: OrgStore, member: str, token_id: str, unit: str) -> Quota | None:
    return next((q for q in store.quotas() if (q.member, q.token_id, q.unit) == (member, token_id, unit)), None)


def _token_id(store: OrgStore, name: str, unit: str) -> str:
    if not name:
        raise InvalidArgumentError("name the organization token the quota is on")
    token = store.token(name=canonical_name(name))  # NOT_FOUND naming it when there is none
    if unit == QPU_US and not traits(token.provider).meters_qpu_time:
        raise InvalidArgumentError(f"organization token {token.name!r} is a {token.provider} token: time quotas count "
                                   "D-Wave QPU access time; give it a requests quota (org-server quota set --requests)")
    return token.id


def set_span(store: OrgStore, record: AdminRecord, *, member: str, token: str, unit: str, limit: int | None,
             start_us: int | None, end_us: int | None, update: bool, now_us: int) -> Quota:
    """luna-quantum's create (`update` False) and update of a time quota: see SetQuotaRequest."""
    for name, at in (("start", start_us), ("end", end_us)):
        if at is not None and not 0 <= at < TIME_MAX_US:
            raise InvalidArgumentError(f"a quota's {name} is a time from 1970 to 9999")
    token_id = _token_id(store, token, unit)
    same = _existing(store, member, token_id, unit)
    where = f"{_who(member)} of organization token {token!r}"
    if update and same is None:
        raise NotFoundError(f"no {unit} quota on {where}: create one first")
    if not update and same is not None:
        raise AlreadyExistsError(f"{where} already has a {unit} quota (#{same.id}): update it, or delete it first")
    if same is None and limit is None:
        raise InvalidArgumentError(f"a new quota on {where} needs its amount")
    start = start_us if start_us is not None else same.start_us if same is not None else now_us
    end = (end_us if end_us is not None else same.valid_until_us or same.start_us + same.period_us if same is not None
           else start + LUNA_DEFAULT_SPAN_US)
    if end <= start:
        raise InvalidArgumentError(f"the quota on {where} would end before it starts: its start must be before its end")
    base = same or Quota(0, member, token_id, token, unit, 0, 0, 0)
    # One window, start to end, and the span outside which Luna refuses the token.
    return write(store, record, dataclasses.replace(base, limit=base.limit if limit is None else limit,
                                                    start_us=start, period_us=end - start, valid_from_us=start,
                                                    valid_until_us=end))


def remove_for(store: OrgStore, record: AdminRecord, *, member: str, token: str, unit: str) -> Quota:
    """luna-quantum's delete of a time quota: the one for (member, token, unit)."""
    token_id = _token_id(store, token, unit)
    same = _existing(store, member, token_id, unit)
    if same is None:
        raise NotFoundError(f"no {unit} quota on {_who(member)} of organization token {token!r}")
    remove(store, record, same.id)
    return same
