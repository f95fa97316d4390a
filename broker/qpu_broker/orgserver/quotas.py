"""Quotas on org token use: which apply to a member's use of a token, the window at hand, and
the check and count of one use, in one store transaction.

A quota counts requests, or D-Wave QPU access time (µs) as the answers report it, in
repeating windows of `period_us` from `start_us` (before `start_us` it is not in force). A quota
with a validity span (luna-quantum's time quotas: one window, `start` to `end`) refuses the uses
it binds outside that span, as Luna does, until an admin sets a new one; its use is counted and
shown in the span's windows only (a report arriving after the end goes to the last).
Which apply to member M using token T: every quota on T or on every token, whose member is ""
(everyone's use together), M, or "*" (each member's own) unless M has a quota of their own
for the same token and unit. A per-member quota ("*" or M) counts M's use alone.

Requests are checked and counted before the request is sent: no overrun, however many members
race for the last one. QPU time is known only from the answer: a use is refused once the
window's time is spent, and the answer's time is charged when its usage record arrives, so a
window can run over by what the requests in flight at that moment take (documented).

A member's daemon reports that time, so it is their word: it is charged only against the
reservation the server made when it admitted the use (a cached D-Wave token's Reserve), once,
and at most what that use could spend: a minute, and what every QPU-time quota binding the use
had left when it was admitted (so a fake report spends no more than a real use could). Time
charged to quotas counted per member never takes one past its limit, so the org-wide pool
spends, through a member's reports, at most that member's own share. A report naming no
reservation (an older daemon, a member's own client) is recorded and charges nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable

from qpu_broker_client.errors import ResourceExhaustedError
from qpu_broker_client.usage import (
    EVERY_MEMBER,
    QPU_US,
    REQUESTS,
    UNCOUNTED,
    Quota,
    UsageRecord,
    iso,
)

from qpu_broker.orgserver.store import OrgStore
from qpu_broker.providers.dwave import QPU_US_MAX

# How late a usage record may reach the server after its use: a record queued on a member's disk
# (the server away, the laptop shut) beyond this is stored at this bound (its date) and charges
# nothing (its reservation expired). Reservations a member holds, unreported: their newest this many.
RECORD_LATE_US_MAX = 30 * 86400 * 1_000_000
RESERVATIONS_KEPT = 1000


def window(q: Quota, at_us: int) -> tuple[int, int] | None:
    """(start, end) of the window holding `at_us`; None before the quota's start."""
    if at_us < q.start_us:
        return None
    start = q.start_us + (at_us - q.start_us) // q.period_us * q.period_us
    return start, start + q.period_us


def in_force(q: Quota, at_us: int) -> bool:
    """Inside the quota's validity span: a quota without one always is."""
    return q.valid_from_us <= at_us and (not q.valid_until_us or at_us < q.valid_until_us)


def at_hand(q: Quota, at_us: int) -> int:
    """The time whose window is the one at hand: `at_us`, held inside the validity span (after its
    end, the last window; before its start, the first)."""
    if q.valid_until_us and at_us >= q.valid_until_us:
        at_us = q.valid_until_us - 1
    return max(at_us, q.valid_from_us)


def outside_refusal(q: Quota, at_us: int) -> ResourceExhaustedError:
    """A use the quota binds, outside its validity span: one line naming it, the span and what to do."""
    when = (f"ended at {iso(q.valid_until_us)}" if q.valid_until_us and at_us >= q.valid_until_us
            else f"is not valid before {iso(q.valid_from_us)}")
    return ResourceExhaustedError(f"quota #{q.id} {when}: {q.describe()}; the uses it counts are refused outside that "
                                  "span: ask an org admin for a new policy")


def applicable(quotas: list[Quota], member: str) -> list[Quota]:
    """Of the quotas on a token (and on every token) for these members, those that bind `member`."""
    own = {(q.token_id, q.unit) for q in quotas if q.member == member}
    return [q for q in quotas if not (q.member == EVERY_MEMBER and (q.token_id, q.unit) in own)]


def is_metered(metered_ids: frozenset[str] | None, token_id: str) -> bool:
    """Of `Quotas.metered_ids`' answer: whether the token's use is counted."""
    return metered_ids is None or token_id in metered_ids


def counted_for(q: Quota, member: str) -> str:
    """Whose count a use goes to: everyone's together, or the member's own."""
    return "" if q.member == "" else member


class Quotas:
    def __init__(self, store: OrgStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def metered_ids(self, member: str) -> frozenset[str] | None:
        """The tokens a quota binds `member`'s use of (their daemon then reserves each use); None: all."""
        binding = applicable(self._store.quotas(member=member), member)
        if any(not q.token_id for q in binding):
            return None
        return frozenset(q.token_id for q in binding)

    def reserve(self, member: str, token_id: str, qpu: bool = False) -> tuple[list[Quota], str]:
        """Check and count one request by `member` with `token_id`; raises RESOURCE_EXHAUSTED naming
        the quota, its use and when it resets. Returns the quotas that apply, after this use, and
        (`qpu`: the member's daemon reports the use's QPU time) the reservation its record names."""
        now = self._now()
        reservation = ""
        # Every check before any count: a refusal has written nothing (its caller may go on in the
        # same transaction: the record writer's are flat, db.Database.writing).
        with self._store.counting():
            checked = []
            for q in applicable(self._store.quotas(member, token_id), member):
                if not in_force(q, now):
                    raise outside_refusal(q, now)
                span = window(q, now)
                if span is None:
                    continue
                used = self._store.quota_used(q.id, counted_for(q, member), span[0])
                if used + (1 if q.unit == REQUESTS else 0) > q.limit or (q.unit == QPU_US and used >= q.limit):
                    raise ResourceExhaustedError(
                        f"quota #{q.id} is used up: {q.describe()}; {used} used in this window, which resets at "
                        f"{iso(span[1])}: ask an org admin for more")
                checked.append(dataclasses.replace(q, used=used, resets_us=span[1]))
            for q in checked:
                if q.unit == REQUESTS:
                    self._store.add_quota_use(q.id, counted_for(q, member), q.resets_us - q.period_us, 1)
            if qpu:
                allowed = min([QPU_US_MAX, *(q.limit - q.used for q in checked if q.unit == QPU_US)])
                reservation = secrets.token_hex(16)
                self._store.add_reservation(reservation, member, token_id, allowed, now, now + RECORD_LATE_US_MAX,
                                            RESERVATIONS_KEPT)
        return [dataclasses.replace(q, used=q.used + 1) if q.unit == REQUESTS else q for q in checked], reservation

    def _qpu_windows(self, record: UsageRecord, now: int) -> list[tuple[Quota, int]]:
        """The QPU-time quotas binding the record's use, each with the start of the window at hand
        (when the record arrives: a record's own time is the member's word, and must not reach other
        windows)."""
        out = []
        for q in applicable(self._store.quotas(record.member, record.token_id), record.member):
            span = window(q, at_hand(q, now)) if q.unit == QPU_US else None
            if span is not None:
                out.append((q, span[0]))
        return out

    def charge(self, record: UsageRecord) -> int:
        """Inside the record's transaction: QPU time this server read itself (a relayed answer), whole."""
        if record.qpu_us > 0:
            for q, start in self._qpu_windows(record, self._now()):
                self._store.add_quota_use(q.id, counted_for(q, record.member), start, record.qpu_us)
        return max(record.qpu_us, 0)

    def charge_reported(self, record: UsageRecord) -> int:
        """Inside the record's transaction: QPU time a member's daemon reported, against the
        reservation it names (spent here, whatever the record says; see the module's docstring).
        Returns the time charged: 0 when the record names no reservation of this member and token
        that is unspent and unexpired."""
        now = self._now()
        allowed = (self._store.take_reservation(record.reservation, record.member, record.token_id, now)
                   if record.reservation else None)
        if allowed is None or record.qpu_us <= 0:
            return 0
        binding = self._qpu_windows(record, now)
        amount = min(record.qpu_us, allowed)
        for q, start in binding:
            if q.member != "":  # the member's own share: what it has left now
                amount = min(amount, max(q.limit - self._store.quota_used(q.id, record.member, start), 0))
        for q, start in binding:
            if amount:
                self._store.add_quota_use(q.id, counted_for(q, record.member), start, amount)
        return amount

    def status(self, member: str | None) -> list[Quota]:
        """The quotas binding `member` with their use in the window at hand (None: every quota,
        with everyone's use for those counted together)."""
        now = self._now()
        quotas = self._store.quotas() if member is None else applicable(self._store.quotas(member=member), member)
        out = []
        for q in quotas:
            span = window(q, at_hand(q, now)) or (q.start_us, q.start_us + q.period_us)
            counter = counted_for(q, member) if member is not None else ("" if q.member == "" else q.member)
            # Each member's default has no one count in the org's view: UNCOUNTED, shown per member.
            used = self._store.quota_used(q.id, counter, span[0]) if counter != EVERY_MEMBER else UNCOUNTED
            out.append(dataclasses.replace(q, used=used, resets_us=span[1]))
        return out
