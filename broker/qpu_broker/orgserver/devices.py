"""Members' devices: enrolled once with a code, then proving their key for short-lived access tokens.

- `enroll`: an enrollment code (or an API key of the release before, kept as a one-use code)
  and a device's public key make a device; the code is used up (a service code after N).
- `access_token`: a device's signature over (device id, time, org store id, server name),
  the name one of this server's own, the time within CLOCK_SKEW_SECONDS behind / AHEAD_SECONDS
  ahead of this server's clock and later than the device's last one taken (a signature is taken
  once), gets an access token for that name (`access_tokens`); DEVICE_TOKENS_PER_MINUTE at most.
- `authenticate`: every other call's access token: its MAC and expiry, then the device and
  its user as they stand: read from the store and kept for the device's next calls (`kept`:
  a second at most, dropped by `forget` when an event says the user's devices, role or
  membership changed), so a removed device or user is refused within 2 s on every replica.

Why something is refused is told only to whoever proves they hold it (the code's secret, the
device's signature, a token this org made); anyone else hears "not valid". No grpc here.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import time
from collections.abc import Callable

from qpu_broker_client.errors import (
    ACCESS_EXPIRED_MARK,
    DEVICE_REMOVED_MARK,
    KEY_REVOKED_MARK,
    REMOVED_MARK,
    ROLE_CHANGED_MARK,
    InvalidArgumentError,
    NotFoundError,
    QpuBrokerError,
    UnauthenticatedError,
    UnavailableError,
)

from qpu_broker.common.log_pace import LogPace
from qpu_broker.keys import device_key
from qpu_broker.orgserver import codes
from qpu_broker.orgserver.access_tokens import (
    ACCESS_SECONDS,
    AHEAD_SECONDS,
    CLOCK_SKEW_SECONDS,
    AccessTokens,
)
from qpu_broker.orgserver.admin_record import AdminRecord, code_terms
from qpu_broker.orgserver.budgets import Budget
from qpu_broker.orgserver.kept import Kept
from qpu_broker.orgserver.server_names import LOOPBACK_NAMES, serving_name
from qpu_broker.orgserver.store import (
    ENDED_DEVICE,
    ENDED_REMOVED,
    USED,
    WITHDRAWN,
    Device,
    EnrollmentCode,
    OrgStore,
    User,
)
from qpu_broker.orgserver.users import CodeTerms, new_code

log = logging.getLogger(__name__)
DEVICE_NAME_MAX = 64
# Access tokens one device gets a minute (its daemon asks about every 8 minutes; more after
# failovers): each is a database write, so a device signing fresh requests in a loop is refused.
DEVICE_TOKENS_PER_MINUTE = 10
_GIVEN_LOG_SECONDS = 60  # one INFO line per device this often at most (the rest at DEBUG)
_DEVICE_ID = re.compile(r"[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class Caller(User):
    """Who calls: the user as they are now, and the device they call from."""

    device_id: str = ""
    device_expires_us: int = 0  # 0: never


@dataclasses.dataclass(frozen=True)
class Enrolled:
    device: Device
    user: User
    access_token: str
    access_expires_us: int


def _when(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


class Devices:
    def __init__(self, store: OrgStore, server_key: bytes, org: str, store_id: str,
                 now_us: Callable[[], int], record: AdminRecord, names: tuple[str, ...] = LOOPBACK_NAMES,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._record = record
        self._names = names
        self._tokens = AccessTokens(server_key, names)
        self._given = Budget(DEVICE_TOKENS_PER_MINUTE / 60, DEVICE_TOKENS_PER_MINUTE, lambda: now_us() / 1e6,
                             f"device {{member}} asked for more than {DEVICE_TOKENS_PER_MINUTE} access tokens a "
                             "minute (each lasts minutes): wait a minute; if its daemon keeps doing this, tell the "
                             "org admin")
        self._logged = LogPace(_GIVEN_LOG_SECONDS, lambda: now_us() / 1e6)  # INFO lines, per device id
        self._org, self._store_id = org, store_id
        self._now_us = now_us
        self._standing: Kept[str, tuple[Device, User]] = Kept(monotonic)  # by device id

    # -- refusals ------------------------------------------------------------------------
    def ended_error(self, reason: str) -> UnauthenticatedError:
        if reason == ENDED_REMOVED:
            return UnauthenticatedError(f"removed from {self._org}: an org admin removed this user", mark=REMOVED_MARK)
        if reason == ENDED_DEVICE:
            return UnauthenticatedError(f"an org admin of {self._org} removed this device: ask them for an enrollment "
                                        "code and run qpu-broker org login", mark=DEVICE_REMOVED_MARK)
        return UnauthenticatedError(f"this device's access to {self._org} was withdrawn (its user got a new enrollment "
                                    "code): run qpu-broker org login with the new code", mark=KEY_REVOKED_MARK)

    def _expired_device(self, device: Device) -> UnauthenticatedError:
        return UnauthenticatedError(f"this device of {device.user!r} expired on {_when(device.expires_us)} (service "
                                    f"devices expire): enroll it again with a new code", mark=DEVICE_REMOVED_MARK)

    def _not_valid(self, what: str) -> UnauthenticatedError:
        return UnauthenticatedError(f"the {what} is not valid for the organization {self._org!r}: check it, or ask an "
                                    "org admin for a new enrollment code")

    # -- enrolling ------------------------------------------------------------------------
    def enroll(self, code: str, public_key: bytes, device_name: str) -> Enrolled:
        parsed = codes.parse(code)
        if parsed is None:
            raise UnauthenticatedError("that is not an enrollment code (qbe_…): check what you pasted")
        if len(public_key) != device_key.PUBLIC_KEY_SIZE:
            raise InvalidArgumentError(f"a device's public key is {device_key.PUBLIC_KEY_SIZE} raw Ed25519 bytes")
        row = self._store.code(parsed[0])
        if row is None or not codes.matches(parsed[1], row.hash):
            raise self._not_valid("enrollment code")
        now = self._now_us()
        refused = self._refusal(row, now)
        if refused is None:
            device = Device(os.urandom(8).hex(), row.user, public_key, _printable(device_name), now,
                            now + row.device_ttl_us if row.device_ttl_us else 0, row.id, now)
            if self._store.redeem(row, device, now):
                user = self._store.user(row.user) or User(row.user, "member", 0)
                token, expires = self._mint(device, now)
                log.info("enrolled device %s (%s) for %r with code id %s", device.id, device.name, user.name, row.id)
                return Enrolled(device, user, token, expires)
            refused = self._refusal(self._store.code(row.id) or row, now) or self._not_valid("enrollment code")
        raise refused

    def _refusal(self, row: EnrollmentCode, now: int) -> UnauthenticatedError | None:
        """Why this code (whose secret the caller proved) enrolls nothing, or None."""
        if self._store.user(row.user) is None:
            return self.ended_error(ENDED_REMOVED)
        if row.state == WITHDRAWN:
            return UnauthenticatedError(f"this enrollment code for {self._org} was withdrawn (the user got a new one, "
                                        "and their devices were ended): ask an org admin for the new code",
                                        mark=KEY_REVOKED_MARK)
        if row.state == USED or row.uses_left <= 0:
            return UnauthenticatedError(f"this enrollment code for {self._org} was used already (on "
                                        f"{_when(row.used_us)}): ask an org admin for a new one", mark=KEY_REVOKED_MARK)
        if row.expires_us and row.expires_us <= now:
            return UnauthenticatedError(f"this enrollment code for {self._org} expired on {_when(row.expires_us)}: ask "
                                        "an org admin for a new one", mark=KEY_REVOKED_MARK)
        return None

    def _mint(self, device: Device, now: int, audience: str = "") -> tuple[str, int]:
        """An access token for `audience` (one of this server's names; Enroll's: the first)."""
        expires = now + ACCESS_SECONDS * 1_000_000
        if device.expires_us:
            expires = min(expires, device.expires_us)
        return self._tokens.mint(device.id, expires, audience or self._names[0]), expires

    # -- access tokens ------------------------------------------------------------------------
    def access_token(self, device_id: str, at_us: int, signature: bytes, audience: str) -> tuple[str, int]:
        if not _DEVICE_ID.fullmatch(device_id):
            raise UnauthenticatedError("that is not a device id (16 hex digits): run qpu-broker org login")
        now = self._now_us()
        if now - at_us > CLOCK_SKEW_SECONDS * 1_000_000 or at_us - now > AHEAD_SECONDS * 1_000_000:
            raise UnauthenticatedError(f"this device's clock is {abs(now - at_us) / 1e6:.0f} s from the org server's "
                                       f"(at most {CLOCK_SKEW_SECONDS} s behind, {AHEAD_SECONDS} s ahead allowed): set "
                                       "the clock right (NTP)")
        message = device_key.token_request(device_id, at_us, self._store_id, audience)
        found = self._store.device_caller(device_id)
        if found is None:
            ended = self._store.ended_device(device_id)
            if ended is not None and device_key.verifies(ended[1], signature, message):
                raise self.ended_error(ended[0])
            raise self._not_valid("device")
        device, _ = found
        if not device_key.verifies(device.public_key, signature, message):
            if not audience and device_key.verifies(device.public_key, signature,
                                                    device_key.token_request_v1(device_id, at_us, self._store_id)):
                raise UnauthenticatedError("this daemon signs access token requests the way the release before did "
                                           f"(without the server's name), which {self._org}'s server no longer takes: "
                                           "upgrade qpu-broker on this machine")
            raise self._not_valid("device signature")
        name = serving_name(self._names, audience)
        if name is None:  # the device proved it asked a server of another name: that server may replay it
            raise UnauthenticatedError(f"this request was signed for the server {audience[:256]!r}, which is not a name "
                                       f"of this org server ({', '.join(self._names)}): check the server list of "
                                       "qpu-broker org login")
        if device.expires_us and device.expires_us <= now:
            raise self._expired_device(device)
        self._given.take(device.id)
        if not self._store.device_signed(device.id, now, at_us):
            raise UnauthenticatedError("this access token request was used already (each signature gets one token): "
                                       "if your daemon sent it, its clock went back; otherwise it was replayed")
        if self._logged.due(device.id):
            log.info("access token for device %s of %r (at %s)", device.id, device.user, name)
        else:
            log.debug("access token for device %s of %r (at %s)", device.id, device.user, name)
        return self._mint(device, now, name)

    def authenticate(self, token: str) -> Caller:
        if not token:
            raise UnauthenticatedError("no access token: send it as 'authorization: Bearer <access token>' metadata "
                                       "(a member's daemon gets one after 'qpu-broker org login')")
        if token.startswith((codes.CODE_PREFIX, codes.LEGACY_KEY_PREFIX)):
            raise UnauthenticatedError("an enrollment code only enrolls a device: run qpu-broker org login with it")
        checked = self._tokens.check(token)
        if checked is None:
            raise self._not_valid("access token")
        device_id, expires_us = checked
        now = self._now_us()
        if expires_us <= now:
            raise UnauthenticatedError("the access token expired: the device gets a new one (DeviceToken) and tries "
                                       "again", mark=ACCESS_EXPIRED_MARK)
        found = self._standing_of(device_id)
        if found is None:
            ended = self._store.ended_device(device_id)
            raise self.ended_error(ended[0]) if ended is not None else self._not_valid("access token")
        device, user = found
        if device.expires_us and device.expires_us <= now:
            raise self._expired_device(device)
        return Caller(user.name, user.role, user.created_us, device.id, device.expires_us)

    def _standing_of(self, device_id: str) -> tuple[Device, User] | None:
        """The device and its user, as kept (see the module's docstring) or read now."""
        return self._standing.get(device_id, lambda: self._store.device_caller(device_id))

    def forget(self, user: str) -> None:
        """An event says `user`'s devices, role or membership changed: their calls read it anew."""
        self._standing.drop(lambda _, standing: standing[1].name == user)

    def no_longer_admitted(self, caller: Caller) -> QpuBrokerError | None:
        """Why a caller admitted earlier (an open stream's) is not any more: their device removed or
        expired, the user removed or re-coded, the role changed; None while they are as they were."""
        found = self._store.device_caller(caller.device_id)
        if found is None:
            ended = self._store.ended_device(caller.device_id)
            return self.ended_error(ended[0] if ended is not None else ENDED_REMOVED)
        device, user = found
        if device.expires_us and device.expires_us <= self._now_us():
            return self._expired_device(device)
        if user.role != caller.role:
            return UnavailableError(f"your role in {self._org} changed to {user.role}: reconnect", mark=ROLE_CHANGED_MARK)
        return None

    # -- admins ------------------------------------------------------------------------------
    def new_code(self, name: str, terms: CodeTerms, *, withdraw_others: bool) -> tuple[EnrollmentCode, str]:
        """A code for an existing user (shown once); `withdraw_others`: rotate-key."""
        user = self._store.user(name)
        if user is None:
            raise self._no_user(name)
        row, made = new_code(name, user.role, terms, self._now_us())
        with self._record.changing() as note:
            self._store.add_code(row, withdraw_others=withdraw_others)
            note("user.rotate-key" if withdraw_others else "user.code", name,
                 f"{'every code and device withdrawn; new ' if withdraw_others else ''}{code_terms(row)}")
        log.info("%s for %r: code id %s", "withdrew every code and device, and made a new code" if withdraw_others
                 else "made a further enrollment code", name, row.id)
        return row, made.code

    @staticmethod
    def _no_user(name: str) -> NotFoundError:
        return NotFoundError(f"no user named {name[:128]!r}")

    def list(self, user: str = "") -> list[Device]:
        if user and self._store.user(user) is None:
            raise self._no_user(user)
        return self._store.devices(user)

    def remove(self, device_id: str) -> Device:
        with self._record.changing() as note:
            device = self._store.remove_device(device_id, self._now_us())
            note("device.rm", device.id, f"{device.name!r} of {device.user!r}, enrolled with code id {device.code_id}")
        log.info("removed device %s of %r", device.id, device.user)
        return device


def _printable(name: str) -> str:
    """A device's name as its daemon gave it, cut to bounds and made printable (it is shown in listings)."""
    name = "".join(c if c.isprintable() else "?" for c in name[:DEVICE_NAME_MAX]).strip()
    return name or "(unnamed)"
