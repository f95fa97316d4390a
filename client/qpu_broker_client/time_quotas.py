"""luna-quantum 1.3's time-quota calls on `qpu_token`, answered from the org's quotas.

luna-quantum (client/rest_client/qpu_token_rest_client.py:260-507) sets a time quota on an
organization ("group") D-Wave token, for everyone's use together or for one user: `quota` is QPU
access time in nanoseconds (its docstrings), in force from `start` (default: now) to `end`
(default: 365 days after the start); reads answer `QpuTokenTimeQuotaOut` (quota, start, end,
quota_used) or None. Here each is the org server's QPU-time quota on that token (kept in µs), for
everyone's use ("") or for the member `user_email` names (the user's name on the org server),
with one window from start to end that is also its validity span: outside it the server refuses
the uses it binds, as Luna does. Setting and deleting are for org admins; the server refuses
anyone else with PERMISSION_DENIED.
"""

from __future__ import annotations

import dataclasses
import datetime
import unicodedata
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .broker import Broker
    from .usage import Quota

NS_PER_US = 1000
EVERYONE = ""  # a group quota's member: everyone's use together


@dataclasses.dataclass(frozen=True)
class TimeQuota:
    """luna-quantum's `QpuTokenTimeQuotaOut`: the window at hand, its amount and its use (ns)."""

    quota: int
    start: datetime.datetime
    end: datetime.datetime
    quota_used: int

    def model_dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _local(us: int) -> datetime.datetime:
    # As luna-quantum's PydanticDatetimeWrapper answers: aware, in the local time zone.
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).astimezone()


def time_quota(q: Quota) -> TimeQuota:
    return TimeQuota(q.limit * NS_PER_US, _local(q.resets_us - q.period_us), _local(q.resets_us), q.used * NS_PER_US)


def _micros(when: datetime.datetime | str | None, what: str) -> int | None:
    """A time as luna-quantum takes it (a datetime, or an ISO 8601 string; without an offset it is
    local time, as its wrapper reads it), in µs since the epoch; None: unset."""
    if when is None:
        return None
    if isinstance(when, str):
        try:
            when = datetime.datetime.fromisoformat(when)
        except ValueError:
            raise InvalidArgumentError(f"{what} {when[:40]!r} is not an ISO 8601 date and time") from None
    if not isinstance(when, datetime.datetime):
        raise InvalidArgumentError(f"{what} is a datetime or an ISO 8601 string, not {type(when).__name__}")
    try:
        return int(when.timestamp() * 1_000_000)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgumentError(f"{what} {when!s} is not a time a quota can hold") from None


def _limit_us(quota: int | None) -> int | None:
    """Nanoseconds (luna-quantum's unit) to the µs the org counts: rounded down, never more than asked."""
    if quota is None:
        return None
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
        raise InvalidArgumentError(f"quota is a whole number of nanoseconds from 0, not {quota!r}")
    return quota // NS_PER_US


def _same(name: str) -> str:
    return unicodedata.normalize("NFC", name)  # token names are compared in one form (common/names.py)


class TimeQuotaCalls:
    """The eight calls, with luna-quantum's argument names; `Broker().qpu_token` has them."""

    _broker: Broker

    def _set(self, name: str, member: str, quota: int | None, start, end, *, update: bool) -> TimeQuota:
        # Loaded by the calls that use it, not by `import Broker`.
        from .usage import QPU_US

        return time_quota(self._broker._set_quota(member, name, QPU_US, update=update, start_us=_micros(start, "start"),
                                                  end_us=_micros(end, "end"), limit=_limit_us(quota)))

    def _get(self, name: str, member: str) -> TimeQuota | None:
        from .usage import QPU_US

        wanted = (member, _same(name), QPU_US)
        for q in self._broker._quotas(member):
            if (q.member, _same(q.token_name), q.unit) == wanted:
                return time_quota(q)
        return None

    def _delete(self, name: str, member: str) -> None:
        from .usage import QPU_US

        self._broker._remove_quota(member, name, QPU_US)

    def create_group_time_quota(self, qpu_token_name: str, quota: int, start: datetime.datetime | str | None = None,
                                end: datetime.datetime | str | None = None) -> TimeQuota:
        """Admins: `quota` ns of QPU time for everyone's use of the org token together."""
        if quota is None:
            raise InvalidArgumentError("quota is a whole number of nanoseconds from 0, not None")
        return self._set(qpu_token_name, EVERYONE, quota, start, end, update=False)

    def get_group_time_quota(self, qpu_token_name: str) -> TimeQuota | None:
        return self._get(qpu_token_name, EVERYONE)

    def update_group_time_quota(self, qpu_token_name: str, quota: int | None = None,
                                start: datetime.datetime | str | None = None,
                                end: datetime.datetime | str | None = None) -> TimeQuota:
        """Admins: what is None stays as it was."""
        return self._set(qpu_token_name, EVERYONE, quota, start, end, update=True)

    def delete_group_time_quota(self, qpu_token_name: str) -> None:
        self._delete(qpu_token_name, EVERYONE)

    def create_user_time_quota(self, qpu_token_name: str, user_email: str, quota: int,
                               start: datetime.datetime | str | None = None,
                               end: datetime.datetime | str | None = None) -> TimeQuota:
        """Admins: `quota` ns of QPU time for one member's use (`user_email`: their name on the org server)."""
        if quota is None:
            raise InvalidArgumentError("quota is a whole number of nanoseconds from 0, not None")
        return self._set(qpu_token_name, _member(user_email), quota, start, end, update=False)

    def get_user_time_quota(self, qpu_token_name: str, user_email: str) -> TimeQuota | None:
        """A member may read their own; admins anyone's."""
        return self._get(qpu_token_name, _member(user_email))

    def update_user_time_quota(self, qpu_token_name: str, user_email: str, quota: int | None = None,
                               start: datetime.datetime | str | None = None,
                               end: datetime.datetime | str | None = None) -> TimeQuota:
        return self._set(qpu_token_name, _member(user_email), quota, start, end, update=True)

    def delete_user_time_quota(self, qpu_token_name: str, user_email: str) -> None:
        self._delete(qpu_token_name, _member(user_email))


def _member(user_email: str) -> str:
    if not user_email or user_email in ("*",):
        raise InvalidArgumentError("user_email names one member (their name on the org server)")
    return user_email
