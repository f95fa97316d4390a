"""Token lifetimes (`--expires-in`), for personal and organization tokens alike: how one is
typed, its bounds, when it ends, and what a refused use says. The vault, the org server and
both command lines take them from here, so the two kinds cannot drift apart."""

from __future__ import annotations

import argparse
import datetime

from qpu_broker_client.errors import FailedPreconditionError, InvalidArgumentError

from qpu_broker.common.since import SPAN_MAX, seconds_in

LIFETIME_MAX = SPAN_MAX  # seconds: far enough, and inside every timestamp format
RENEW_HINT = "--expires-in 90d"


def lifetime_arg(text: str) -> int:
    """argparse's `type=` for `--expires-in`: '90d', '12h', '30m', '45s', '2w' (or plain seconds)."""
    seconds = seconds_in(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"not a lifetime like 90d, 12h, 30m or 3600s "
                                         f"(at most {LIFETIME_MAX // (365 * 86400)} years)")
    return seconds


def check_lifetime(seconds: float) -> None:
    """A lifetime from now as given on the wire (0: never expires); anything else is refused
    before anything is written."""
    if not 0 <= seconds <= LIFETIME_MAX:
        raise InvalidArgumentError(f"a token's lifetime must be from 1 s to {LIFETIME_MAX // 86400} days "
                                   "(or 0: never expires)")


def expiry_us(now_us: int, seconds: float) -> int:
    """When a token given `seconds` of life at `now_us` expires (0: never)."""
    check_lifetime(seconds)
    return now_us + int(seconds * 1_000_000) if seconds else 0


def is_expired(expires_us: int, now_us: int) -> bool:
    return bool(expires_us) and now_us >= expires_us


def expiry_text(expires_us: int) -> str:
    return datetime.datetime.fromtimestamp(expires_us / 1e6, datetime.UTC).isoformat(timespec="seconds")


def expired_error(name: str, expires_us: int, *, organization: bool = False) -> FailedPreconditionError:
    """The refusal of a use after the end, saying who renews it and how (the way ssh-add -t bounds a key)."""
    if organization:
        return FailedPreconditionError(
            f"organization token {name!r} expired at {expiry_text(expires_us)}: ask an org admin to rotate it "
            f"(qpu-broker token rotate {name!r} --type organization {RENEW_HINT})")
    return FailedPreconditionError(f"token {name!r} expired at {expiry_text(expires_us)}: rotate it "
                                   f"(qpu-broker token rotate {name!r} {RENEW_HINT}) or delete it")
