"""Times people type: `--since` (a duration back from now, or a date and time) and a quota's
`--per` (a duration)."""

from __future__ import annotations

import datetime

from qpu_broker_client.errors import InvalidArgumentError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_span(text: str, option: str) -> int:
    """Microseconds in `90s`, `15m`, `2h`, `7d`."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _UNITS and int(text[:-1]) > 0:
        return int(text[:-1]) * _UNITS[text[-1]] * 1_000_000
    raise InvalidArgumentError(f"{option} {text!r} is not a duration: give a number and s, m, h or d (90s, 15m, 2h, 7d)")


def parse_since(text: str, now_us: int) -> int:
    """Microseconds since the epoch: `90s`, `15m`, `2h`, `7d` back from `now_us`, or an ISO 8601
    date or date and time (`2026-11-26`, `2026-11-26T09:30`, with an offset or `Z`; without
    one it is local time)."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _UNITS:
        return now_us - parse_span(text, "--since")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(f"--since {text!r} is neither a duration (90s, 15m, 2h, 7d) nor a date "
                                   "(2026-11-26 or 2026-11-26T09:30, local time unless it ends in Z or an offset)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person typing a date means it
    return int(when.timestamp() * 1_000_000)
