"""The org server's store: users, their enrollment codes (hashes only, kept after use so a
refused code can be told "used", "expired" or "withdrawn"), their devices (public keys) and
the devices it has ended (so a refused device can be told why), sealed org tokens, the
org's destination settings, quotas, the usage record, and the numbered events that push
changes to members' daemons.

One class over both databases (`orgserver.db`): the SQL is written once, in what SQLite
and PostgreSQL share; only the schema is written twice, in each one's types. Every write
goes through `_db.writing()`, and every change members must hear of appends an event in
the same transaction: its number is the org's revision, and a daemon that reconnects
resumes after the last one it saw.
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
from qpu_broker_client.usage import PAGE_MAX, Quota, UsageRecord

from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.db import POSTGRESQL, SQLITE, Database, open_database

SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        key_id     TEXT NOT NULL UNIQUE,
        key_hash   TEXT NOT NULL,
        created_us INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        provider      TEXT NOT NULL,
        nonce         BLOB NOT NULL,
        ciphertext    BLOB NOT NULL,
        allowed_hosts TEXT NOT NULL DEFAULT '[]',
        version       INTEGER NOT NULL,
        created_us    INTEGER NOT NULL,
        updated_us    INTEGER NOT NULL
    );
    """,
    # 2: where org tokens may go (per token and org-wide), and ended keys.
    """
    ALTER TABLE tokens ADD COLUMN own TEXT NOT NULL DEFAULT '{}';
    UPDATE tokens SET own = json_object('hosts', json(allowed_hosts));
    CREATE TABLE org_reach (provider TEXT PRIMARY KEY, reach TEXT NOT NULL);
    CREATE TABLE ended_keys (
        key_id   TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        user     TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (reason IN ('removed', 'key-revoked')),
        at_us  INTEGER NOT NULL
    );
    """,
    # 3: the usage record: one row per use of an org token, as members' daemons report them.
    # `seq` is the order of arrival (list and follow resume after one); `id` drops repeats.
    """
    CREATE TABLE usage (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        member        TEXT NOT NULL,
        token_id      TEXT NOT NULL,
        token_name    TEXT NOT NULL,
        provider      TEXT NOT NULL,
        kind          TEXT NOT NULL,
        method        TEXT NOT NULL,
        host          TEXT NOT NULL,
        path          TEXT NOT NULL,
        status        INTEGER NOT NULL,
        outcome       TEXT NOT NULL,
        request_bytes INTEGER NOT NULL,
        answer_bytes  INTEGER NOT NULL,
        at_us         INTEGER NOT NULL,
        received_us   INTEGER NOT NULL
    );
    CREATE INDEX usage_member ON usage (member, seq);
    CREATE INDEX usage_token ON usage (token_id, seq);
    """,
    # 4: quotas, and the QPU time a D-Wave answer reported. A quota's use is counted per window
    # (and per member for per-member quotas), so a window's count is one row, changed in place.
    """
    ALTER TABLE usage ADD COLUMN qpu_us INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE quotas (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        member    TEXT NOT NULL,
        token_id  TEXT NOT NULL,
        unit      TEXT NOT NULL CHECK (unit IN ('requests', 'qpu-us')),
        quota     INTEGER NOT NULL CHECK (quota >= 0),
        period_us INTEGER NOT NULL CHECK (period_us > 0),
        start_us  INTEGER NOT NULL,
        UNIQUE (member, token_id, unit)
    );
    CREATE TABLE quota_use (
        quota_id  INTEGER NOT NULL REFERENCES quotas (id) ON DELETE CASCADE,
        member    TEXT NOT NULL,
        window_us INTEGER NOT NULL,
        used      INTEGER NOT NULL,
        PRIMARY KEY (quota_id, member, window_us)
    );
    """,
    # 5: relay tokens: their secret never leaves the server, which forwards and signs with it.
    "ALTER TABLE tokens ADD COLUMN relay INTEGER NOT NULL DEFAULT 0",
    # 6: numbered events (the revision was a counter in meta), and the id of this store, so a
    # daemon never resumes one store's numbering on another's.
    """
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        name    TEXT NOT NULL,
        at_us   INTEGER NOT NULL
    );
    INSERT INTO events (seq, kind, subject, name, at_us)
        SELECT CAST(value AS INTEGER), 'org', '', '', 0 FROM meta WHERE key = 'revision';
    DELETE FROM meta WHERE key = 'revision';
    INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
    """,
    # 7: devices, not bearer keys. Users lose their key columns (and may be service members);
    # each existing key becomes a one-use code without expiry (a daemon logged in with it redeems
    # it at its first connect, for a device of its own), and each ended key a withdrawn code.
    """
    CREATE TABLE users_v7 (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'member', 'service')),
        created_us INTEGER NOT NULL
    );
    INSERT INTO users_v7 (name, role, created_us) SELECT name, role, created_us FROM users;
    CREATE TABLE enrollment_codes (
        id            TEXT PRIMARY KEY,
        hash          TEXT NOT NULL,
        user_name     TEXT NOT NULL,
        uses_left     INTEGER NOT NULL CHECK (uses_left >= 0),
        device_ttl_us INTEGER NOT NULL,
        expires_us    INTEGER NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('open', 'used', 'withdrawn')),
        created_us    INTEGER NOT NULL,
        used_us       INTEGER NOT NULL
    );
    CREATE INDEX enrollment_codes_user ON enrollment_codes (user_name, state);
    INSERT INTO enrollment_codes (id, hash, user_name, uses_left, device_ttl_us, expires_us, state, created_us, used_us)
        SELECT key_id, key_hash, name, 1, 0, 0, 'open', created_us, 0 FROM users;
    INSERT INTO enrollment_codes (id, hash, user_name, uses_left, device_ttl_us, expires_us, state, created_us, used_us)
        SELECT key_id, key_hash, user, 0, 0, 0, 'withdrawn', at_us, at_us FROM ended_keys
        WHERE key_id NOT IN (SELECT id FROM enrollment_codes);
    DROP TABLE ended_keys;
    DROP TABLE users;
    ALTER TABLE users_v7 RENAME TO users;
    CREATE TABLE devices (
        id           TEXT PRIMARY KEY,
        user_name    TEXT NOT NULL,
        public_key   BLOB NOT NULL,
        name         TEXT NOT NULL,
        created_us   INTEGER NOT NULL,
        expires_us   INTEGER NOT NULL,
        code_id      TEXT NOT NULL,
        last_seen_us INTEGER NOT NULL
    );
    CREATE INDEX devices_user ON devices (user_name);
    CREATE TABLE ended_devices (
        id         TEXT PRIMARY KEY,
        user_name  TEXT NOT NULL,
        public_key BLOB NOT NULL,
        reason     TEXT NOT NULL CHECK (reason IN ('removed', 'key-revoked', 'device-removed')),
        at_us      INTEGER NOT NULL
    );
    """,
)

# The same schema in PostgreSQL's types (64-bit integers, bytea): its first step starts where
# SQLite's six have come to, and each later one is SQLite's next. The contract suite checks the
# two have the same columns.
POSTGRESQL_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));
    CREATE TABLE users (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        key_id     TEXT NOT NULL UNIQUE,
        key_hash   TEXT NOT NULL,
        created_us BIGINT NOT NULL
    );
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        provider      TEXT NOT NULL,
        nonce         BYTEA NOT NULL,
        ciphertext    BYTEA NOT NULL,
        allowed_hosts TEXT NOT NULL DEFAULT '[]',
        version       BIGINT NOT NULL,
        created_us    BIGINT NOT NULL,
        updated_us    BIGINT NOT NULL,
        own           TEXT NOT NULL DEFAULT '{}',
        relay         INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE org_reach (provider TEXT PRIMARY KEY, reach TEXT NOT NULL);
    CREATE TABLE ended_keys (
        key_id   TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        "user"   TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (reason IN ('removed', 'key-revoked')),
        at_us  BIGINT NOT NULL
    );
    CREATE TABLE usage (
        seq           BIGSERIAL PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        member        TEXT NOT NULL,
        token_id      TEXT NOT NULL,
        token_name    TEXT NOT NULL,
        provider      TEXT NOT NULL,
        kind          TEXT NOT NULL,
        method        TEXT NOT NULL,
        host          TEXT NOT NULL,
        path          TEXT NOT NULL,
        status        BIGINT NOT NULL,
        outcome       TEXT NOT NULL,
        request_bytes BIGINT NOT NULL,
        answer_bytes  BIGINT NOT NULL,
        at_us         BIGINT NOT NULL,
        received_us   BIGINT NOT NULL,
        qpu_us        BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX usage_member ON usage (member, seq);
    CREATE INDEX usage_token ON usage (token_id, seq);
    CREATE TABLE quotas (
        id        BIGSERIAL PRIMARY KEY,
        member    TEXT NOT NULL,
        token_id  TEXT NOT NULL,
        unit      TEXT NOT NULL CHECK (unit IN ('requests', 'qpu-us')),
        quota     BIGINT NOT NULL CHECK (quota >= 0),
        period_us BIGINT NOT NULL CHECK (period_us > 0),
        start_us  BIGINT NOT NULL,
        UNIQUE (member, token_id, unit)
    );
    CREATE TABLE quota_use (
        quota_id  BIGINT NOT NULL REFERENCES quotas (id) ON DELETE CASCADE,
        member    TEXT NOT NULL,
        window_us BIGINT NOT NULL,
        used      BIGINT NOT NULL,
        PRIMARY KEY (quota_id, member, window_us)
    );
    CREATE TABLE events (
        seq     BIGINT PRIMARY KEY,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        name    TEXT NOT NULL,
        at_us   BIGINT NOT NULL
    );
    """,
    # SQLite's 7: devices, not bearer keys (the same steps, in place).
    """
    ALTER TABLE users DROP CONSTRAINT users_role_check;
    ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'member', 'service'));
    CREATE TABLE enrollment_codes (
        id            TEXT PRIMARY KEY,
        hash          TEXT NOT NULL,
        user_name     TEXT NOT NULL,
        uses_left     BIGINT NOT NULL CHECK (uses_left >= 0),
        device_ttl_us BIGINT NOT NULL,
        expires_us    BIGINT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('open', 'used', 'withdrawn')),
        created_us    BIGINT NOT NULL,
        used_us       BIGINT NOT NULL
    );
    CREATE INDEX enrollment_codes_user ON enrollment_codes (user_name, state);
    INSERT INTO enrollment_codes (id, hash, user_name, uses_left, device_ttl_us, expires_us, state, created_us, used_us)
        SELECT key_id, key_hash, name, 1, 0, 0, 'open', created_us, 0 FROM users;
    INSERT INTO enrollment_codes (id, hash, user_name, uses_left, device_ttl_us, expires_us, state, created_us, used_us)
        SELECT key_id, key_hash, "user", 0, 0, 0, 'withdrawn', at_us, at_us FROM ended_keys
        WHERE key_id NOT IN (SELECT id FROM enrollment_codes);
    DROP TABLE ended_keys;
    ALTER TABLE users DROP COLUMN key_id, DROP COLUMN key_hash;
    CREATE TABLE devices (
        id           TEXT PRIMARY KEY,
        user_name    TEXT NOT NULL,
        public_key   BYTEA NOT NULL,
        name         TEXT NOT NULL,
        created_us   BIGINT NOT NULL,
        expires_us   BIGINT NOT NULL,
        code_id      TEXT NOT NULL,
        last_seen_us BIGINT NOT NULL
    );
    CREATE INDEX devices_user ON devices (user_name);
    CREATE TABLE ended_devices (
        id         TEXT PRIMARY KEY,
        user_name  TEXT NOT NULL,
        public_key BYTEA NOT NULL,
        reason     TEXT NOT NULL CHECK (reason IN ('removed', 'key-revoked', 'device-removed')),
        at_us      BIGINT NOT NULL
    );
    """,
)
MIGRATIONS = {SQLITE: SQLITE_MIGRATIONS, POSTGRESQL: POSTGRESQL_MIGRATIONS}
# Events kept for resuming: a daemon further behind than this gets the whole snapshot.
EVENTS_KEPT = 10_000


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    role: str
    created_us: int


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


_TOKEN_COLUMNS = "id, name, provider, own, version, created_us, updated_us, relay"


_USAGE_COLUMNS = ("id, member, token_id, token_name, provider, kind, method, host, path, status, outcome, "
                  "request_bytes, answer_bytes, at_us, seq, qpu_us")  # UsageRecord's fields, in order
_USAGE_INSERT = _USAGE_COLUMNS.replace("seq, ", "") + ", received_us"
USAGE_PAGE_MAX = PAGE_MAX


@dataclasses.dataclass(frozen=True)
class UsageQuery:
    member: str = ""  # empty: every member
    token: str = ""   # an org token's id or its name at the time; empty: every token
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


def _token(row: tuple) -> OrgTokenRecord:
    return OrgTokenRecord(row[0], row[1], row[2], reach_from_json(row[3]), row[4], row[5], row[6], bool(row[7]))


@dataclasses.dataclass(frozen=True)
class StoreEvent:
    """One numbered change: a token created, updated or deleted (`subject` its id, `name` its
    name then), a user's key or role changed or the user removed (`subject` the name), or an
    org-wide change (destination settings, quotas) after which every member gets a snapshot."""

    seq: int
    kind: str  # created | updated | deleted | user | org
    subject: str
    name: str


CREATED, UPDATED, DELETED = "created", "updated", "deleted"
TOKEN_EVENTS = (CREATED, UPDATED, DELETED)
USER_EVENT, ORG_EVENT = "user", "org"


class OrgStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def open(cls, kind: str, target: str) -> OrgStore:
        return cls(open_database(kind, target, MIGRATIONS, "the org store"))

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

    def _event(self, kind: str, subject: str, name: str = "") -> None:
        """Inside a write transaction: writers take turns, so numbers are given in commit order."""
        seq = self._db.execute("INSERT INTO events (seq, kind, subject, name, at_us) "
                               "SELECT coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM events RETURNING seq",
                               (kind, subject, name, _now_us())).fetchone()[0]
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
        rows = self._db.execute("SELECT seq, kind, subject, name FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
        return [StoreEvent(*r) for r in rows]

    def oldest_event(self) -> int:
        """The first event still kept (0 when there is none): resuming needs every one after."""
        return self._db.execute("SELECT coalesce(min(seq), 0) FROM events").fetchone()[0]

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
        if not self._write("UPDATE users SET role = ? WHERE name = ?", (role, name), (USER_EVENT, name, "")):
            raise NotFoundError(f"no user named {name!r}")

    def _end_access(self, name: str, reason: str, now_us: int) -> None:
        """Inside a write transaction: withdraw `name`'s open codes and end their devices (`reason`)."""
        self._db.execute("UPDATE enrollment_codes SET state = ?, used_us = ? WHERE user_name = ? AND state = ?",
                         (WITHDRAWN, now_us, name, OPEN))
        self._db.execute("INSERT INTO ended_devices (id, user_name, public_key, reason, at_us) "
                         "SELECT id, user_name, public_key, ?, ? FROM devices WHERE user_name = ?", (reason, now_us, name))
        self._db.execute("DELETE FROM devices WHERE user_name = ?", (name,))

    def remove_users(self, names: list[str], now_us: int) -> None:
        """All of them or none, in one transaction. Their codes are withdrawn and their devices
        ended; their own quotas and counts go with them: a user added later under the same name
        starts afresh (their records stay: the org's history)."""
        with self._db.writing():
            for name in names:
                self._end_access(name, ENDED_REMOVED, now_us)
                if not self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                    raise NotFoundError(f"no user named {name!r}")
                self._event(USER_EVENT, name)
                self._db.execute("DELETE FROM quota_use WHERE member = ?", (name,))
                self._db.execute("DELETE FROM quotas WHERE member = ?", (name,))

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

    def device_seen(self, device_id: str, now_us: int) -> None:
        """When a device last asked for an access token (shown to admins: which devices are in use)."""
        with self._db.writing():
            self._db.execute("UPDATE devices SET last_seen_us = ? WHERE id = ?", (now_us, device_id))

    # -- tokens ----------------------------------------------------------------
    def insert_token(self, record: OrgTokenRecord, nonce: bytes, ciphertext: bytes) -> None:
        try:
            self._write(
                "INSERT INTO tokens (id, name, provider, own, version, created_us, updated_us, relay, nonce, ciphertext) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.name, record.provider, reach_to_json(record.own), record.version,
                 record.created_us, record.updated_us, int(record.relay), nonce, ciphertext),
                (CREATED, record.id, record.name))
        except self._db.integrity_errors:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None

    def token(self, *, token_id: str = "", name: str = "") -> OrgTokenRecord:
        where, arg = ("id = ?", token_id) if token_id else ("name = ?", name)
        row = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE {where}", (arg,)).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token {'with id ' + repr(token_id) if token_id else 'named ' + repr(name)}")
        return _token(row)

    def tokens(self, ids: list[str] | None = None) -> list[OrgTokenRecord]:
        """Every token, oldest first; or those of `ids` that exist."""
        if ids is None:
            return [_token(r) for r in self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_us, id")]
        return [_token(r) for r in self._where_id_in(_TOKEN_COLUMNS, ids)]

    def _where_id_in(self, columns: str, ids: list[str]) -> list[tuple]:
        """The rows of the tokens among `ids`, a bounded IN list a statement."""
        rows: list[tuple] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows += self._db.execute(f"SELECT {columns} FROM tokens WHERE id IN ({', '.join('?' * len(chunk))})",
                                     chunk).fetchall()
        return rows

    def tokens_after(self, created_us: int, token_id: str, limit: int) -> list[OrgTokenRecord]:
        """A page of every token, in `tokens()`' order, after the one created at `created_us` with `token_id`."""
        rows = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE created_us > ? OR (created_us = ? AND id > ?) "
                                "ORDER BY created_us, id LIMIT ?", (created_us, created_us, token_id, limit))
        return [_token(r) for r in rows]

    def sealed(self, token_id: str) -> tuple[bytes, bytes]:
        row = self._db.execute("SELECT nonce, ciphertext FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no organization token with id {token_id!r}")
        return bytes(row[0]), bytes(row[1])

    def sealed_many(self, ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
        """(nonce, ciphertext) of each of `ids` that exists."""
        return {r[0]: (bytes(r[1]), bytes(r[2])) for r in self._where_id_in("id, nonce, ciphertext", ids)}

    def replace_token(self, record: OrgTokenRecord, sealed: tuple[bytes, bytes] | None) -> None:
        """`record` is the token's next version: written only over the version before it, so two
        changes made at once (two admins, two replicas, the CLI and a server) never both win."""
        event = (UPDATED, record.id, record.name)
        try:
            if sealed is None:
                changed = self._write(
                    "UPDATE tokens SET name = ?, own = ?, version = ?, updated_us = ?, relay = ? WHERE id = ? AND version = ?",
                    (record.name, reach_to_json(record.own), record.version, record.updated_us, int(record.relay),
                     record.id, record.version - 1), event)
            else:
                changed = self._write(
                    "UPDATE tokens SET name = ?, own = ?, version = ?, updated_us = ?, relay = ?, nonce = ?, "
                    "ciphertext = ? WHERE id = ? AND version = ?",
                    (record.name, reach_to_json(record.own), record.version, record.updated_us, int(record.relay),
                     *sealed, record.id, record.version - 1), event)
        except self._db.integrity_errors:
            raise AlreadyExistsError(f"an organization token named {record.name!r} already exists") from None
        if not changed:
            self.token(token_id=record.id)  # NotFoundError when it is gone
            raise FailedPreconditionError(f"organization token {record.name!r} was changed by someone else meanwhile: "
                                          "nothing was written; read it again and repeat the change")

    def delete_token(self, record: OrgTokenRecord) -> None:
        if not self._write("DELETE FROM tokens WHERE id = ?", (record.id,), (DELETED, record.id, record.name)):
            raise NotFoundError(f"no organization token with id {record.id!r}")

    # -- the usage record ------------------------------------------------------
    def add_usage(self, rows: list[UsageRecord], received_us: int,
                  charge: Callable[[UsageRecord], None] = lambda r: None) -> int:
        """Store what is new (by id), in one transaction, calling `charge` (in it) for each new one;
        returns how many were new."""
        stored = 0
        with self._db.writing():
            for r in rows:
                if self._db.execute(
                        f"INSERT INTO usage ({_USAGE_INSERT}) VALUES ({', '.join('?' * 16)}) ON CONFLICT (id) DO NOTHING",
                        (r.id, r.member, r.token_id, r.token_name, r.provider, r.kind, r.method, r.host, r.path,
                         r.status, r.outcome, r.request_bytes, r.answer_bytes, r.at_us, r.qpu_us,
                         received_us)).rowcount:
                    stored += 1
                    charge(r)
        return stored

    def finish_usage(self, record_id: str, status: int, outcome: str, answer_bytes: int,
                     qpu_us: int) -> UsageRecord | None:
        """A record this server began (a relayed call), finished with its answer."""
        with self._db.writing():
            self._db.execute("UPDATE usage SET status = ?, outcome = ?, answer_bytes = ?, qpu_us = ? WHERE id = ?",
                             (status, outcome, answer_bytes, qpu_us, record_id))
        row = self._db.execute(f"SELECT {_USAGE_COLUMNS} FROM usage WHERE id = ?", (record_id,)).fetchone()
        return None if row is None else UsageRecord(*row)

    def usage(self, query: UsageQuery) -> list[UsageRecord]:
        where, args = ["seq > ?"], [query.after_seq]
        if query.member:
            where.append("member = ?")
            args.append(query.member)
        if query.token:
            where.append("(token_id = ? OR token_name = ?)")
            args += [query.token, query.token]
        if query.since_us:
            where.append("at_us >= ?")
            args.append(query.since_us)
        rows = self._db.execute(f"SELECT {_USAGE_COLUMNS} FROM usage WHERE {' AND '.join(where)} "
                                f"ORDER BY seq LIMIT ?", (*args, min(query.limit, USAGE_PAGE_MAX))).fetchall()
        return [UsageRecord(*r) for r in rows]

    # -- quotas ------------------------------------------------------------------
    def set_quota(self, q: Quota) -> int:
        """Add a quota, or replace the one for the same member, token and unit (its counts stay)."""
        return self._write(
            "INSERT INTO quotas (member, token_id, unit, quota, period_us, start_us) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (member, token_id, unit) DO UPDATE SET quota = excluded.quota, "
            "period_us = excluded.period_us, start_us = excluded.start_us RETURNING id",
            (q.member, q.token_id, q.unit, q.limit, q.period_us, q.start_us), (ORG_EVENT, "quota", ""), returning=True)

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
            "q.unit, q.quota, q.period_us, q.start_us FROM quotas q LEFT JOIN tokens t ON t.id = q.token_id"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY q.id", args).fetchall()
        return [Quota(*r) for r in rows]

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
