"""Times people type: `--since` (a duration back from now, or a date and time), `--until` (a
duration ahead, or a date and time) and a quota's `--per` (a duration)."""

from __future__ import annotations

import datetime

from qpu_broker_client.errors import InvalidArgumentError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


SPAN_MAX = 100 * 365 * 86400  # seconds: a lifetime, a window or a look back past this is a typo
EARLIEST, LATEST = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC), datetime.datetime(3000, 1, 1, tzinfo=datetime.UTC)


def seconds_in(text: str) -> int | None:
    """Seconds in `90s`, `15m`, `2h`, `7d`, `2w` (a bare number: seconds), up to 100 years; None
    when it is none of these."""
    text = text.strip()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in UNITS else (text, "s")
    if not number.isascii() or not number.isdigit() or len(number) > 12:
        return None
    seconds = int(number) * UNITS[unit]
    return seconds if 0 < seconds <= SPAN_MAX else None


def parse_span(text: str, option: str) -> int:
    """Microseconds in a duration (`seconds_in`), or a one-line error naming the option."""
    seconds = seconds_in(text)
    if seconds is None:
        raise InvalidArgumentError(f"{option} {text!r} is not a duration: give a number and s, m, h, d or w "
                                   "(90s, 15m, 2h, 7d), at most 100 years")
    return seconds * 1_000_000


def parse_since(text: str, now_us: int, option: str = "--since") -> int:
    """Microseconds since the epoch: `90s`, `15m`, `2h`, `7d` back from `now_us`, or an ISO 8601
    date or date and time (`2026-11-26`, `2026-11-26T09:30`, with an offset or `Z`; without
    one it is local time)."""
    return _parse_when(text, now_us, option, -1)


def parse_until(text: str, now_us: int, option: str) -> int:
    """As `parse_since`, but a duration is ahead of `now_us` (`--until 30d`)."""
    return _parse_when(text, now_us, option, 1)


def _parse_when(text: str, now_us: int, option: str, direction: int) -> int:
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in UNITS:
        return max(now_us + direction * parse_span(text, option), 0)
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.astimezone()  # local time, as a person typing a date means it
        if not EARLIEST <= when < LATEST:
            raise ValueError
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"{option} {text!r} is neither a duration (90s, 15m, 2h, 7d) nor a date from 1970 "
                                   "to 2999 (2026-11-26 or 2026-11-26T09:30, local time unless it ends in Z or an "
                                   "offset)") from None
    return int(when.timestamp() * 1_000_000)
