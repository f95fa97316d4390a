"""The org server's store: users, their enrollment codes (hashes only, kept after use so a
refused code can be told "used", "expired" or "withdrawn"), their devices (public keys) and
the devices it has ended (so a refused device can be told why), sealed org tokens, the
org's destination settings, quotas, the usage record, groups and who may use each token,
and the numbered events that push changes to members' daemons.

One class over every backend (`orgserver.db`): the SQL is written once, in what SQLite
and PostgreSQL share; only the schema is written per backend, in its types (db/schema.py). Every write
goes through `_db.writing()`, and every change members must hear of appends an event in
the same transaction: its number is the org's revision, and a daemon that reconnects
resumes after the last one it saw. Admin changes also write their admin record entries in
that transaction (`admin_record`: its `changing()` wraps the store's, which joins it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from qpu_broker_client.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
)
from qpu_broker_client.usage import PAGE_MAX, Quota, UsagePage, UsageRecord

from qpu_broker.common.names import canonical_name
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.db import Database, open_database
from qpu_broker.orgserver.db.schema import CLOCK_SKEW_US_MAX, MIGRATIONS

# Events kept for resuming: a daemon further behind than this gets the whole snapshot.
EVENTS_KEPT = 10_000


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    role: str
    created_us: int


# Who may see and use a token besides admins: everyone (None), or the members of these groups
# (empty: admins only). A fact of its own, apart from the token's version: changing it rotates nothing.
Access = tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class EnrollmentCode:
    id: str
    hash: str  # SHA-256 of the code's secret part
    user: str
    uses_left: int  # devices it may still enroll (1 for a person; N for a service member)
    device_ttl_us: int  # each device it enrolls expires this long after (0: never)
    expires_us: int  # 0: never (the legacy codes made from API keys)
    state: str  # open | used | withdrawn
    created_us: int
    used_us: int


@dataclasses.dataclass(frozen=True)
class Device:
    id: str
    user: str
    public_key: bytes  # raw Ed25519
    name: str  # what its daemon calls its host: shown to admins, trusted for nothing
    created_us: int
    expires_us: int  # 0: never
    code_id: str  # the code that enrolled it
    last_seen_us: int


OPEN, USED, WITHDRAWN = "open", "used", "withdrawn"
# Why a device ended: its user removed, its codes and devices withdrawn (rotate-key), it alone removed.
ENDED_REMOVED, ENDED_REVOKED, ENDED_DEVICE = "removed", "key-revoked", "device-removed"
_CODE_COLUMNS = "id, hash, user_name, uses_left, device_ttl_us, expires_us, state, created_us, used_us"
_DEVICE_COLUMNS = "id, user_name, public_key, name, created_us, expires_us, code_id, last_seen_us"


def _device(row: tuple) -> Device:
    return Device(row[0], row[1], bytes(row[2]), *row[3:])


@dataclasses.dataclass(frozen=True)
class OrgTokenRecord:
    id: str
    name: str
    provider: str
    own: Reach  # what an admin set on this token (the org-wide settings are apart)
    version: int
    created_us: int
    updated_us: int
    relay: bool = False  # the secret never leaves the server: members forward and sign through it
    groups: Access = None  # who may see and use it besides admins (None: everyone)
    expires_us: int = 0  # when it stops being usable (0: never); set by admins, renewed by a rotation


_TOKEN_COLUMNS = "id, name, provider, own, version, created_us, updated_us, relay, limited, expires_us"
# The one statement of who may see a token (its `?` is the member's name): everyone's tokens,
# and those of a group the member is in. Admins are not filtered at all.
_VISIBLE_TO = ("(limited = 0 OR id IN (SELECT tg.token_id FROM token_groups tg JOIN group_members gm "
               "ON gm.group_name = tg.group_name WHERE gm.member = ?))")


_USAGE_COLUMNS = ("id, member, token_id, token_name, provider, kind, method, host, path, status, outcome, "
                  "request_bytes, answer_bytes, at_us, seq, qpu_us, reservation, qpu_charged_us")  # UsageRecord's, in order
_USAGE_INSERT = _USAGE_COLUMNS.replace("seq, ", "").replace(", qpu_charged_us", "") + ", received_us"
USAGE_PAGE_MAX = PAGE_MAX
# Rows one usage read examines at most, matched or not: a filter that matches nothing costs this
# much a read, not the member's whole record, and the reader pages on from where it stopped.
USAGE_SCAN_MAX = 10_000


@dataclasses.dataclass(frozen=True)
class UsageQuery:
    member: str = ""  # empty: every member
    token: str = ""   # an org token's id, or the name it has now; empty: every token
    since_us: int = 0
    after_seq: int = 0
    limit: int = USAGE_PAGE_MAX


def reach_to_json(reach: Reach) -> str:
    return json.dumps({"hosts": list(reach.hosts), "plain_http_hosts": list(reach.plain_http_hosts),
                       "ca_pem": reach.ca_pem.decode("ascii"), "token_url": reach.token_url}, sort_keys=True)


def reach_from_json(text: str) -> Reach:
    doc = json.loads(text)
    return Reach(tuple(doc.get("hosts", ())), tuple(doc.get("plain_http_hosts", ())),
                 doc.get("ca_pem", "").encode("ascii"), doc.get("token_url", ""), Owner.ORG)


def access_to_text(access: Access) -> str:
    return "" if access is None else json.dumps(sorted(access))


def access_from_text(text: str) -> Access:
    return None if not text else tuple(json.loads(text))


@dataclasses.dataclass(frozen=True)
class StoreEvent:
    """One numbered change: a token created, updated or deleted (`subject` its id, `name` its
    name then), a token's access changed, a user's key, role or groups changed or the user
    removed (`subject` the name), or an org-wide change (destination settings, quotas) after
    which every member gets a snapshot. `audience`: who could see the token before (access) or
    when it went (deleted); only they hear of it."""

    seq: int
    kind: str  # created | updated | deleted | access | user | org
    subject: str
    name: str
    audience: Access = None


CREATED, UPDATED, DELETED, ACCESS = "created", "updated", "deleted", "access"
TOKEN_EVENTS = (CREATED, UPDATED, DELETED, ACCESS)
USER_EVENT, ORG_EVENT = "user", "org"


class OrgStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def open(cls, kind: str, target: str, *, synchronous: str = "full") -> OrgStore:
        return cls(open_database(kind, target, MIGRATIONS, "the org store", synchronous=synchronous))

    @property
    def db(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple, event: tuple[str, str, str] | None, *, returning: bool = False) -> int:
        """One statement (and its event), in one transaction: its row count, or (`returning`)
        the value its RETURNING clause gives. The event is only added when a row changed."""
        with self._db.writing():
            cursor = self._db.execute(sql, args)
            value = cursor.fetchone()[0] if returning else cursor.rowcount
            if event is not None and (returning or value):
                self._event(*event)
        return value

    def _event(self, kind: str, subject: str, name: str = "", audience: Access = None) -> None:
        """Inside a write transaction: writers take turns, so numbers are given in commit order."""
        seq = self._db.execute("INSERT INTO events (seq, kind, subject, name, at_us, audience) "
                               "SELECT coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ? FROM events RETURNING seq",
                               (kind, subject, name, _now_us(), access_to_text(audience))).fetchone()[0]
        self._db.notify()
        if seq % 256 == 0:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq - EVENTS_KEPT,))

    # -- meta ------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._db.writing():
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value", (key, value))

    # -- events ------------------------------------------------------------------
    def revision(self) -> int:
        """The number of the last event: the org as members see it."""
        return self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    def events_after(self, seq: int, limit: int = 1000) -> list[StoreEvent]:
        rows = self._db.execute("SELECT seq, kind, subject, name, audience FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
        return [StoreEvent(*r[:4], access_from_text(r[4])) for r in rows]

    def oldest_event(self) -> int:
        """The first event still kept (0 when there is none): resuming needs every one after."""
        return self._db.execute("SELECT coalesce(min(seq), 0) FROM events").fetchone()[0]

    # -- the org's custom providers ------------------------------------------------
    def custom_providers(self) -> dict[str, str]:
        """Each defined custom provider's definition (JSON of its config keys), by name."""
        return dict(self._db.execute("SELECT name, definition FROM custom_providers"))

    def set_custom_provider(self, name: str, definition: str | None) -> bool:
        """Define (or redefine) a custom provider, or (None) remove its definition; False when
        nothing changed (no event)."""
        if definition is None:
            return bool(self._write("DELETE FROM custom_providers WHERE name = ?", (name,), (ORG_EVENT, name, "")))
        return bool(self._write(
            "INSERT INTO custom_providers (name, definition) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
            "definition = excluded.definition WHERE custom_providers.definition <> excluded.definition",
            (name, definition), (ORG_EVENT, name, "")))

    # -- the org's destination settings, per provider --------------------------
    def org_reach(self) -> dict[str, Reach]:
        return {p: reach_from_json(r) for p, r in self._db.execute("SELECT provider, reach FROM org_reach")}

    def set_org_reach(self, provider: str, reach: Reach | None) -> None:
        if reach is None:
            self._write("DELETE FROM org_reach WHERE provider = ?", (provider,), (ORG_EVENT, provider, ""))
        else:
            self._write("INSERT INTO org_reach (provider, reach) VALUES (?, ?) ON CONFLICT (provider) "
                        "DO UPDATE SET reach = excluded.reach", (provider, reach_to_json(reach)), (ORG_EVENT, provider, ""))

    # -- users, their codes and devices ---------------------------------------------
    def add_users(self, users: list[User], codes: list[EnrollmentCode]) -> None:
        """All of them (and their first codes) or none, in one transaction (a name taken refuses
        the lot). Nobody's stream changes: new users have none yet, so there is no event."""
        try:
            with self._db.writing():
                for user in users:
                    self._db.execute("INSERT INTO users (name, role, created_us) VALUES (?, ?, ?)",
                                     dataclasses.astuple(user))
                for code in codes:
                    self._insert_code(code)
        except self._db.integrity_errors:
            taken = {u.name for u in self.users()}
            clash = next((u.name for u in users if u.name in taken), None) or _repeated([u.name for u in users])
            raise AlreadyExistsError(f"a user named {clash!r} already exists: nobody was added") from None

    def _insert_code(self, code: EnrollmentCode) -> None:
        self._db.execute(f"INSERT INTO enrollment_codes ({_CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         dataclasses.astuple(code))

    def users(self) -> list[User]:
        return [User(*r) for r in self._db.execute("SELECT name, role, created_us FROM users ORDER BY name").fetchall()]

    def user(self, name: str) -> User | None:
        row = self._db.execute("SELECT name, role, created_us FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else User(*row)

    def set_role(self, name: str, role: str) -> None:
        """A role other than admin ends `name`'s console sessions and unused sign-in links in the same
        transaction: made admin again later, they do not come back."""
        with self._db.writing():
            if not self._write("UPDATE users SET role = ? WHERE name = ?", (role, name), (USER_EVENT, name, "")):
                raise NotFoundError(f"no user named {name!r}")
            if role != "admin":
                self._end_console(name)

    def _end_console(self, admin: str) -> None:
        """Inside a write transaction: `admin`'s console sessions and unused sign-in links (console/sessions.py)."""
        self._db.execute("DELETE FROM console_sessions WHERE admin = ?", (admin,))
        self._db.execute("DELETE FROM console_links WHERE admin = ? AND used_us = 0", (admin,))

    def _end_access(self, name: str, reason: str, now_us: int) -> None:
        """Inside a write transaction: withdraw `name`'s open codes and end their devices (`reason`)."""
        self._db.execute("UPDATE enrollment_codes SET state = ?, used_us = ? WHERE user_name = ? AND state = ?",
                         (WITHDRAWN, now_us, name, OPEN))
        self._db.execute("INSERT INTO ended_devices (id, user_name, public_key, reason, at_us) "
                         "SELECT id, user_name, public_key, ?, ? FROM devices WHERE user_name = ?", (reason, now_us, name))
        self._db.execute("DELETE FROM devices WHERE user_name = ?", (name,))

    def remove_users(self, names: list[str], now_us: int) -> None:
        """All of them or none, in one transaction. Their codes are withdrawn and their devices
        ended; their own quotas and counts go with them, and their console sessions and unused sign-in
        links: a user added later under the same name starts afresh (their records stay: the org's history)."""
        with self._db.writing():
            for name in names:
                self._end_access(name, ENDED_REMOVED, now_us)
                if not self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                    raise NotFoundError(f"no user named {name!r}")
                self._event(USER_EVENT, name)
                self._db.execute("DELETE FROM quota_use WHERE member = ?", (name,))
                self._db.execute("DELETE FROM quotas WHERE member = ?", (name,))
                self._db.execute("DELETE FROM group_members WHERE member = ?", (name,))
                self._db.execute("DELETE FROM reservations WHERE member = ?", (name,))
                self._end_console(name)

    def add_code(self, code: EnrollmentCode, *, withdraw_others: bool) -> None:
        """A further code for `code.user`; `withdraw_others` (rotate-key): their other codes are
        withdrawn and every device of theirs ended first, in the same transaction."""
        with self._db.writing():
            if self._db.execute("SELECT 1 FROM users WHERE name = ?", (code.user,)).fetchone() is None:
                raise NotFoundError(f"no user named {code.user!r}")
            if withdraw_others:
                self._end_access(code.user, ENDED_REVOKED, code.created_us)
                self._event(USER_EVENT, code.user)
            self._insert_code(code)

    def code(self, code_id: str) -> EnrollmentCode | None:
        row = self._db.execute(f"SELECT {_CODE_COLUMNS} FROM enrollment_codes WHERE id = ?", (code_id,)).fetchone()
        return None if row is None else EnrollmentCode(*row)

    def open_codes(self, name: str) -> list[EnrollmentCode]:
        rows = self._db.execute(f"SELECT {_CODE_COLUMNS} FROM enrollment_codes WHERE user_name = ? AND state = ? "
                                "ORDER BY created_us", (name, OPEN)).fetchall()
        return [EnrollmentCode(*r) for r in rows]

    def open_code_count(self, now_us: int) -> int:
        """Enrollment codes made and not yet used up, withdrawn or expired (the console's overview)."""
        return self._db.execute("SELECT count(*) FROM enrollment_codes WHERE state = ? AND (expires_us = 0 OR "
                                "expires_us > ?)", (OPEN, now_us)).fetchone()[0]

    def redeem(self, code: EnrollmentCode, device: Device, now_us: int) -> bool:
        """One use of `code` enrolls `device`, in one transaction: False (nothing written) when the
        code was used up, withdrawn or expired meanwhile, or its user removed."""
        with self._db.writing():
            if not self._db.execute(
                    "UPDATE enrollment_codes SET uses_left = uses_left - 1, used_us = ?, "
                    "state = CASE WHEN uses_left = 1 THEN 'used' ELSE state END "
                    "WHERE id = ? AND state = 'open' AND uses_left > 0 AND (expires_us = 0 OR expires_us > ?) "
                    "AND EXISTS (SELECT 1 FROM users WHERE name = enrollment_codes.user_name)",
                    (now_us, code.id, now_us)).rowcount:
                return False
            self._db.execute(f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             dataclasses.astuple(device))
        return True

    def device_caller(self, device_id: str) -> tuple[Device, User] | None:
        """A device and its user, in one indexed read (every authenticated call makes it)."""
        row = self._db.execute(f"SELECT {', '.join('d.' + c for c in _DEVICE_COLUMNS.split(', '))}, "
                               "u.name, u.role, u.created_us FROM devices d JOIN users u ON u.name = d.user_name "
                               "WHERE d.id = ?", (device_id,)).fetchone()
        return None if row is None else (_device(row[:8]), User(*row[8:]))

    def devices(self, user: str = "") -> list[Device]:
        where, args = ("WHERE user_name = ? ", (user,)) if user else ("", ())
        return [_device(r) for r in self._db.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices {where}ORDER BY user_name, created_us", args).fetchall()]

    def remove_device(self, device_id: str, now_us: int) -> Device:
        """End one device (its user's other devices stay); their streams hear of it by the event."""
        with self._db.writing():
            row = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no device with id {device_id[:32]!r}: see 'org-server user devices NAME'")
            device = _device(row)
            self._db.execute("INSERT INTO ended_devices (id, user_name, public_key, reason, at_us) VALUES (?, ?, ?, ?, ?)",
                             (device.id, device.user, device.public_key, ENDED_DEVICE, now_us))
            self._db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            self._event(USER_EVENT, device.user)
        return device

    def ended_device(self, device_id: str) -> tuple[str, bytes] | None:
        """(why, its public key) for a device this org ended (removed | key-revoked | device-removed), else None."""
        row = self._db.execute("SELECT reason, public_key FROM ended_devices WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def device_signed(self, device_id: str, now_us: int, signed_us: int) -> bool:
        """A device's DeviceToken signature of time `signed_us` is taken: when it was last seen (shown
        to admins) and the signing time, in one write; False (nothing written) if one of that time or
        later was taken already (a replay, on any replica)."""
        with self._db.writing():
            return bool(self._db.execute(
                "UPDATE devices SET last_seen_us = ?, last_signed_us = ? WHERE id = ? AND last_signed_us < ?",
                (now_us, signed_us, device_id, signed_us)).rowcount)

    # -- tokens ----------------------------------------------------------------
    def insert_token(self, record: OrgTokenRecord, nonce: bytes, ciphertext: bytes) -> None:
        """With its access from the start: a token for one group is never pushed to anyone else."""
        try:
            with self._db.writing():
                self._db.execute(
                    "INSERT INTO tokens (id, name, provider, own, version, created_us, updated_us, relay, nonce, "
                    "ciphertext, limited, expires_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.name, record.provider, reach_to_json(record.own), record.version,
                     record.created_us, record.updated_us, int(record.relay), nonce, ciphertext,
                     int(record.groups is not None), record.expires_us))
                self._write_access(record.id, record.groups)
                self._event(CREATED, record.id, record.name)
        except self._db.integrity_errors:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None

    def token(self, *, token_id: str = "", name: str = "", visible_to: str | None = None) -> OrgTokenRecord:
        """One token; with `visible_to` (a member's name), only one that member may see: a hidden
        token is refused exactly as one that does not exist."""
        return self._with_groups([self._token_row(token_id, name, visible_to, "")])[0]

    def token_sealed(self, token_id: str, visible_to: str | None) -> tuple[OrgTokenRecord, tuple[bytes, bytes]]:
        """`token(token_id=…, visible_to=…)` and its (nonce, ciphertext), in one read (a relayed call's)."""
        row = self._token_row(token_id, "", visible_to, ", nonce, ciphertext")
        return self._with_groups([row[:-2]])[0], (bytes(row[-2]), bytes(row[-1]))

    def _token_row(self, token_id: str, name: str, visible_to: str | None, more: str) -> tuple:
        where, args = ("id = ?", [token_id]) if token_id else ("name = ?", [name])
        if visible_to is not None:
            where, args = f"{where} AND {_VISIBLE_TO}", [*args, visible_to]
        row = self._db.execute(f"SELECT {_TOKEN_COLUMNS}{more} FROM tokens WHERE {where}", args).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token {'with id ' + repr(token_id) if token_id else 'named ' + repr(name)}")
        return tuple(row)

    def tokens(self, ids: list[str] | None = None, visible_to: str | None = None) -> list[OrgTokenRecord]:
        """Every token, oldest first; or those of `ids` that exist; with `visible_to`, only those
        that member may see."""
        where, args = (f" WHERE {_VISIBLE_TO}", [visible_to]) if visible_to is not None else ("", [])
        if ids is None:
            return self._with_groups(self._db.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens{where} ORDER BY created_us, id", args).fetchall())
        return self._with_groups(self._where_in("tokens", "id", _TOKEN_COLUMNS, ids, where.replace(" WHERE", " AND"), args))

    def _where_in(self, table: str, column: str, columns: str, values: list[str], more: str = "",
                  args: list | None = None) -> list[tuple]:
        """The rows of `table` whose `column` is among `values`, a bounded IN list a statement."""
        rows: list[tuple] = []
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            rows += self._db.execute(f"SELECT {columns} FROM {table} WHERE {column} IN ({', '.join('?' * len(chunk))})"
                                     f"{more}", [*chunk, *(args or ())]).fetchall()
        return rows

    def _with_groups(self, rows: list[tuple]) -> list[OrgTokenRecord]:
        """Records of token rows, each limited one with its groups (one read for all)."""
        limited = [r[0] for r in rows if r[8]]
        groups: dict[str, list[str]] = {}
        for token_id, group in self._where_in("token_groups", "token_id", "token_id, group_name", limited):
            groups.setdefault(token_id, []).append(group)
        return [OrgTokenRecord(r[0], r[1], r[2], reach_from_json(r[3]), r[4], r[5], r[6], bool(r[7]),
                               tuple(sorted(groups.get(r[0], ()))) if r[8] else None, r[9]) for r in rows]

    def tokens_after(self, created_us: int, token_id: str, limit: int, visible_to: str | None = None) -> list[OrgTokenRecord]:
        """A page of `tokens()`, in its order, after the one created at `created_us` with `token_id`."""
        where, args = (f" AND {_VISIBLE_TO}", [visible_to]) if visible_to is not None else ("", [])
        rows = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE (created_us > ? OR (created_us = ? AND id > ?))"
                                f"{where} ORDER BY created_us, id LIMIT ?", (created_us, created_us, token_id, *args, limit))
        return self._with_groups(rows.fetchall())

    def sealed(self, token_id: str) -> tuple[bytes, bytes]:
        row = self._db.execute("SELECT nonce, ciphertext FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token with id {token_id!r}")
        return bytes(row[0]), bytes(row[1])

    def sealed_many(self, ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
        """(nonce, ciphertext) of each of `ids` that exists."""
        return {r[0]: (bytes(r[1]), bytes(r[2])) for r in self._where_in("tokens", "id", "id, nonce, ciphertext", ids)}

    def replace_token(self, record: OrgTokenRecord, sealed: tuple[bytes, bytes] | None) -> None:
        """`record` is the token's next version: written only over the version before it, so two
        changes made at once (two admins, two replicas, the CLI and a server) never both win."""
        event = (UPDATED, record.id, record.name)
        try:
            if sealed is None:
                changed = self._write(
                    "UPDATE tokens SET name = ?, own = ?, version = ?, updated_us = ?, relay = ?, expires_us = ? "
                    "WHERE id = ? AND version = ?",
                    (record.name, reach_to_json(record.own), record.version, record.updated_us, int(record.relay),
                     record.expires_us, record.id, record.version - 1), event)
            else:
                changed = self._write(
                    "UPDATE tokens SET name = ?, own = ?, version = ?, updated_us = ?, relay = ?, expires_us = ?, "
                    "nonce = ?, ciphertext = ? WHERE id = ? AND version = ?",
                    (record.name, reach_to_json(record.own), record.version, record.updated_us, int(record.relay),
                     record.expires_us, *sealed, record.id, record.version - 1), event)
        except self._db.integrity_errors:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None
        if not changed:
            self.token(token_id=record.id)  # NotFoundError when it is gone
            raise FailedPreconditionError(f"organization token {record.name!r} was changed by someone else meanwhile: "
                                          "nothing was written; read it again and repeat the change")

    def delete_token(self, record: OrgTokenRecord) -> None:
        """Its event names who could see it as it went: only they hear of it."""
        with self._db.writing():
            gone = self.token(token_id=record.id)  # NotFoundError when it is gone already
            self._db.execute("DELETE FROM tokens WHERE id = ?", (record.id,))  # its groups go with it
            self._event(DELETED, gone.id, gone.name, gone.groups)

    def set_token_access(self, token_id: str, groups: Access) -> OrgTokenRecord:
        """Who may use the token besides admins, replaced whole; its event names who could see
        it before, so those who lose it are told. Returns the token as it is now."""
        with self._db.writing():
            before = self.token(token_id=token_id)
            if before.groups != groups:
                self._db.execute("UPDATE tokens SET limited = ? WHERE id = ?", (int(groups is not None), token_id))
                self._db.execute("DELETE FROM token_groups WHERE token_id = ?", (token_id,))
                self._write_access(token_id, groups)
                self._event(ACCESS, token_id, before.name, before.groups)
        return dataclasses.replace(before, groups=groups)

    def _write_access(self, token_id: str, groups: Access) -> None:
        """Inside a write transaction: the token's groups (each one must exist)."""
        for group in groups or ():
            self._require_group(group)
            self._db.execute("INSERT INTO token_groups (token_id, group_name) VALUES (?, ?)", (token_id, group))

    # -- groups ------------------------------------------------------------------
    def _require_group(self, name: str) -> None:
        if self._db.execute("SELECT 1 FROM org_groups WHERE name = ?", (name,)).fetchone() is None:
            raise NotFoundError(f"no group named {name!r}: see 'org-server group list'")

    def add_group(self, name: str, members: list[str], now_us: int) -> None:
        """A new group and its first members, in one transaction."""
        try:
            with self._db.writing():
                self._db.execute("INSERT INTO org_groups (name, created_us) VALUES (?, ?)", (name, now_us))
                self._add_members(name, members)
        except self._db.integrity_errors:
            raise AlreadyExistsError(f"a group named {name!r} already exists") from None

    def add_group_members(self, group: str, members: list[str]) -> list[str]:
        """All of them or none; returns those who were not in it already."""
        with self._db.writing():
            self._require_group(group)
            return self._add_members(group, members)

    def _add_members(self, group: str, members: list[str]) -> list[str]:
        for member in members:
            if self.user(member) is None:
                raise NotFoundError(f"no user named {member!r}: nobody was added to {group!r}")
        added = [m for m in members if self._db.execute(
            "INSERT INTO group_members (group_name, member) VALUES (?, ?) ON CONFLICT DO NOTHING", (group, m)).rowcount]
        for member in added:
            self._event(USER_EVENT, member)  # what they may see changed: their streams get a new snapshot
        return added

    def remove_group_members(self, group: str, members: list[str]) -> None:
        """All of them or none (one who is not in the group refuses the lot)."""
        with self._db.writing():
            self._require_group(group)
            for member in members:
                if not self._db.execute("DELETE FROM group_members WHERE group_name = ? AND member = ?",
                                        (group, member)).rowcount:
                    raise NotFoundError(f"{member!r} is not in the group {group!r}: nobody was removed from it")
                self._event(USER_EVENT, member)

    def remove_group(self, name: str) -> list[str]:
        """The group goes, and with it from every token's access. A token whose last group it
        was is left to admins alone, never opened to everyone. Returns those tokens' names."""
        with self._db.writing():
            self._require_group(name)
            members = [r[0] for r in self._db.execute("SELECT member FROM group_members WHERE group_name = ?", (name,))]
            orphaned = [r[0] for r in self._db.execute(
                "SELECT t.name FROM tokens t JOIN token_groups tg ON tg.token_id = t.id WHERE tg.group_name = ? "
                "AND NOT EXISTS (SELECT 1 FROM token_groups o WHERE o.token_id = t.id AND o.group_name <> ?) "
                "ORDER BY t.name", (name, name))]
            self._db.execute("DELETE FROM org_groups WHERE name = ?", (name,))  # its memberships and token rows go too
            # Only its members' view changes (nobody else saw a token through it): they get new snapshots.
            for member in members:
                self._event(USER_EVENT, member)
        return orphaned

    def groups(self) -> list[tuple[str, int, list[str]]]:
        """(name, created_us, members) of every group, by name."""
        members: dict[str, list[str]] = {}
        for group, member in self._db.execute("SELECT group_name, member FROM group_members ORDER BY member"):
            members.setdefault(group, []).append(member)
        return [(n, at, members.get(n, [])) for n, at in self._db.execute(
            "SELECT name, created_us FROM org_groups ORDER BY name")]

    def groups_of(self, member: str) -> frozenset[str]:
        return frozenset(r[0] for r in self._db.execute("SELECT group_name FROM group_members WHERE member = ?", (member,)))

    # -- the usage record ------------------------------------------------------
    def add_usage(self, rows: list[UsageRecord], received_us: int,
                  charge: Callable[[UsageRecord], int] = lambda r: 0) -> int:
        """Store what is new (by id), in one transaction, calling `charge` (in it) for each new one
        (it returns the QPU time it charged, kept with the record); returns how many were new."""
        stored = 0
        with self._db.writing():
            # Arrival times never go back along `seq` (a replica's clock behind another's, a clock
            # stepped back), and no date is past its arrival's bound: `since` reads rely on both.
            received_us = max(received_us, self._db.execute(
                "SELECT coalesce(max(received_us), 0) FROM usage").fetchone()[0])
            for r in rows:
                if self._db.execute(
                        f"INSERT INTO usage ({_USAGE_INSERT}) VALUES ({', '.join('?' * 17)}) ON CONFLICT (id) DO NOTHING",
                        (r.id, r.member, r.token_id, r.token_name, r.provider, r.kind, r.method, r.host, r.path,
                         r.status, r.outcome, r.request_bytes, r.answer_bytes,
                         min(r.at_us, received_us + CLOCK_SKEW_US_MAX), r.qpu_us, r.reservation,
                         received_us)).rowcount:
                    stored += 1
                    charged = charge(r)
                    if charged:
                        self._db.execute("UPDATE usage SET qpu_charged_us = ? WHERE id = ?", (charged, r.id))
        return stored

    def finish_usage(self, record_id: str, status: int, outcome: str, answer_bytes: int, qpu_us: int,
                     charge: Callable[[UsageRecord], int]) -> None:
        """A record this server began (a relayed call), finished with its answer, and `charge`d in
        the same transaction. With nothing to charge it changes only its own row, numbered
        already: it takes no turn at the write lock (`writing(ordered=False)`)."""
        with self._db.writing(ordered=qpu_us > 0):
            self._db.execute("UPDATE usage SET status = ?, outcome = ?, answer_bytes = ?, qpu_us = ? WHERE id = ?",
                             (status, outcome, answer_bytes, qpu_us, record_id))
            if qpu_us <= 0:
                return  # nothing to charge: no read of the row
            row = self._db.execute(f"SELECT {_USAGE_COLUMNS} FROM usage WHERE id = ?", (record_id,)).fetchone()
            charged = charge(UsageRecord(*row)) if row is not None else 0
            if charged:
                self._db.execute("UPDATE usage SET qpu_charged_us = ? WHERE id = ?", (charged, record_id))

    def usage(self, query: UsageQuery, scan_max: int = USAGE_SCAN_MAX) -> UsagePage:
        """The records `query` matches after `after_seq`, in arrival order, and where the next read
        of the same query resumes: past every row this read examined, matched or not, so a follower
        never reads a row twice. Member and token are searched in an index; a date is checked on at
        most `scan_max` rows of it (a filter that matches nothing costs that, not the whole record).
        Only rows up to the last one stored when the read began are read: writers take turns, so
        none commits later with a smaller number."""
        last = self._db.execute("SELECT coalesce(max(seq), 0) FROM usage").fetchone()[0]
        start = query.after_seq
        if query.since_us:  # nothing dated since then arrived before it, less the skew (see _USAGE_POSITIONS)
            start = max(start, self._arrived_before(query.since_us - CLOCK_SKEW_US_MAX, last))
        where, args = self._usage_where(query, start, last)
        end = last
        if query.since_us:  # the one condition no index answers: checked on a bounded window of rows
            row = self._db.execute(f"SELECT seq FROM usage WHERE {' AND '.join(where)} ORDER BY seq LIMIT 1 OFFSET ?",
                                   (*args, scan_max - 1)).fetchone()
            end = last if row is None else row[0]
            args[1] = end
            where.append("at_us >= ?")
            args.append(query.since_us)
        limit = min(query.limit, USAGE_PAGE_MAX)
        rows = self._db.execute(f"SELECT {_USAGE_COLUMNS} FROM usage WHERE {' AND '.join(where)} "
                                f"ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        records = [UsageRecord(*r) for r in rows]
        after = records[-1].seq if len(records) == limit else max(end, query.after_seq)
        return UsagePage(records, after, after < last)

    def usage_newest(self, query: UsageQuery, before_seq: int = 0,
                     scan_max: int = USAGE_SCAN_MAX) -> tuple[list[UsageRecord], int]:
        """The newest records `query` matches below `before_seq` (0: from the newest), newest first,
        `query.limit` at most (a page's worth), and the `before_seq` the next older read starts at (0:
        nothing older). As `usage`, member and token are searched in an index, a `since` starts where
        its records can begin, and a date is checked on at most `scan_max` rows: a page of the console
        reads a bounded number of rows, however long the record."""
        top = before_seq - 1 if before_seq > 0 else self._db.execute("SELECT coalesce(max(seq), 0) FROM usage").fetchone()[0]
        bottom = self._arrived_before(query.since_us - CLOCK_SKEW_US_MAX, top) if query.since_us else 0
        where, args = self._usage_where(query, bottom, top)
        cut = 0  # where a date's check stopped: the next read goes on below it
        if query.since_us:  # as in `usage`: the date is checked on a bounded window of rows, here the newest
            row = self._db.execute(f"SELECT seq FROM usage WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT 1 "
                                   "OFFSET ?", (*args, scan_max - 1)).fetchone()
            if row is not None:
                cut = row[0]
                args[0] = cut - 1
            where.append("at_us >= ?")
            args.append(query.since_us)
        limit = min(query.limit, USAGE_PAGE_MAX)
        rows = self._db.execute(f"SELECT {_USAGE_COLUMNS} FROM usage WHERE {' AND '.join(where)} "
                                f"ORDER BY seq DESC LIMIT ?", (*args, limit + 1)).fetchall()
        records = [UsageRecord(*r) for r in rows[:limit]]
        return records, records[-1].seq if len(rows) > limit else cut

    def _usage_where(self, query: UsageQuery, above: int, upto: int) -> tuple[list[str], list]:
        """A usage read's conditions an index answers: `seq` in (above, upto], member and token."""
        where, args = ["seq > ?", "seq <= ?"], [above, upto]
        if query.member:
            where.append("member = ?")
            args.append(query.member)
        if query.token:
            where.append("token_id = ?")
            args.append(self._usage_token_id(query.token))
        return where, args

    def _arrived_before(self, at_us: int, last: int) -> int:
        """The last `seq` that arrived before `at_us` (arrival times never go back along `seq`): one
        index probe; `last` when every row did."""
        row = self._db.execute("SELECT seq FROM usage WHERE received_us >= ? ORDER BY received_us, seq LIMIT 1",
                               (at_us,)).fetchone()
        return last if row is None else row[0] - 1

    def _usage_token_id(self, token: str) -> str:
        """The id a usage read looks for: a token's records are found by its id (a record's name is
        the name of the day, or whatever a member's daemon said), so a name is read as the id of the
        token that has it now; anything else is taken as an id (a deleted token's, as records show)."""
        row = self._db.execute("SELECT id FROM tokens WHERE id = ? UNION ALL SELECT id FROM tokens WHERE name = ?",
                               (token, canonical_name(token))).fetchone()
        return token if row is None else row[0]

    def prune_usage(self, before_us: int, batch: int = USAGE_SCAN_MAX) -> int:
        """Delete the records that reached the server before `before_us` (an admin's retention), a
        batch a transaction so the server's writes wait for one batch at most; returns how many.
        What goes is a prefix of `seq`: reads and follows resume exactly as before."""
        bound = self._arrived_before(before_us, self._db.execute("SELECT coalesce(max(seq), 0) FROM usage").fetchone()[0])
        gone = 0
        while True:
            with self._db.writing():
                deleted = self._db.execute("DELETE FROM usage WHERE seq IN (SELECT seq FROM usage WHERE seq <= ? "
                                           "ORDER BY seq LIMIT ?)", (bound, batch)).rowcount
            gone += deleted
            if deleted < batch:
                return gone

    # -- reservations: what a report of QPU time may charge ---------------------------------
    def add_reservation(self, reservation_id: str, member: str, token_id: str, qpu_us_max: int, now_us: int,
                        expires_us: int, kept: int) -> None:
        """Inside a transaction (`counting`): a new reservation; the member's expired ones go, and
        all but their `kept` newest (a member who reserves and never reports drops their own)."""
        self._db.execute("DELETE FROM reservations WHERE member = ? AND expires_us <= ?", (member, now_us))
        self._db.execute("INSERT INTO reservations (id, member, token_id, qpu_us_max, expires_us) VALUES (?, ?, ?, ?, ?)",
                         (reservation_id, member, token_id, qpu_us_max, expires_us))
        oldest_kept = self._db.execute("SELECT expires_us FROM reservations WHERE member = ? "
                                       "ORDER BY expires_us DESC LIMIT 1 OFFSET ?", (member, kept - 1)).fetchone()
        if oldest_kept is not None:
            self._db.execute("DELETE FROM reservations WHERE member = ? AND expires_us < ?", (member, oldest_kept[0]))

    def take_reservation(self, reservation_id: str, member: str, token_id: str, now_us: int) -> int | None:
        """Inside a transaction: spend `member`'s unexpired reservation for `token_id` (once): the QPU
        time it allows; None when there is no such reservation (never made, spent, expired, another's)."""
        rows = self._db.execute("DELETE FROM reservations WHERE id = ? AND member = ? AND token_id = ? "
                               "RETURNING qpu_us_max, expires_us", (reservation_id, member, token_id)).fetchall()
        return rows[0][0] if rows and rows[0][1] > now_us else None

    # -- quotas ------------------------------------------------------------------
    def set_quota(self, q: Quota) -> int:
        """Add a quota, or replace the one for the same member, token and unit (its counts stay)."""
        return self._write(
            "INSERT INTO quotas (member, token_id, unit, quota, period_us, start_us, valid_from_us, valid_until_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (member, token_id, unit) DO UPDATE SET quota = excluded.quota, "
            "period_us = excluded.period_us, start_us = excluded.start_us, valid_from_us = excluded.valid_from_us, "
            "valid_until_us = excluded.valid_until_us RETURNING id",
            (q.member, q.token_id, q.unit, q.limit, q.period_us, q.start_us, q.valid_from_us, q.valid_until_us),
            (ORG_EVENT, "quota", ""), returning=True)

    def delete_quota(self, quota_id: int) -> None:
        if not self._write("DELETE FROM quotas WHERE id = ?", (quota_id,), (ORG_EVENT, "quota", "")):
            raise NotFoundError(f"no quota #{quota_id}: see 'org-server quota list'")

    def quotas(self, member: str | None = None, token_id: str | None = None) -> list[Quota]:
        """Every quota; or those that could apply to `member` (theirs, each member's, everyone's)
        and to `token_id` (its own, and those on every token)."""
        where, args = [], []
        if member is not None:
            where.append("q.member IN ('', '*', ?)")
            args.append(member)
        if token_id is not None:
            where.append("q.token_id IN ('', ?)")
            args.append(token_id)
        rows = self._db.execute(
            "SELECT q.id, q.member, q.token_id, coalesce(t.name, CASE q.token_id WHEN '' THEN '' ELSE '(deleted)' END), "
            "q.unit, q.quota, q.period_us, q.start_us, q.valid_from_us, q.valid_until_us FROM quotas q "
            f"LEFT JOIN tokens t ON t.id = q.token_id{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY q.id",
            args).fetchall()
        return [Quota(*r[:8], valid_from_us=r[8], valid_until_us=r[9]) for r in rows]

    def quota_used(self, quota_id: int, member: str, window_us: int) -> int:
        row = self._db.execute("SELECT used FROM quota_use WHERE quota_id = ? AND member = ? AND window_us = ?",
                               (quota_id, member, window_us)).fetchone()
        return 0 if row is None else row[0]

    def add_quota_use(self, quota_id: int, member: str, window_us: int, amount: int) -> None:
        """Inside a transaction (`counting`): this window's count moves by `amount`."""
        self._db.execute("INSERT INTO quota_use (quota_id, member, window_us, used) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (quota_id, member, window_us) DO UPDATE SET used = quota_use.used + excluded.used",
                         (quota_id, member, window_us, amount))

    def counting(self) -> AbstractContextManager[None]:
        """One write transaction, taken at once: the check and the count of a use are one step
        (two servers on one store, or two calls, never both take the last unit)."""
        return self._db.writing()


def _repeated(names: list[str]) -> str:
    seen: set[str] = set()
    return next((n for n in names if n in seen or seen.add(n)), names[0] if names else "")


def _now_us() -> int:
    return int(time.time() * 1_000_000)
