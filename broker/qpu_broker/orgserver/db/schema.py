"""The org store's tables, in each backend's dialect: the migrations each backend runs in turn
(`MIGRATIONS`, by backend kind). The store's statements are written once, in what the backends
share (store.py); only this is written once per backend, and the contract suite
(tests/test_org_store.py) checks the backends' steps end in the same tables and columns.
"""

from __future__ import annotations

from qpu_broker.orgserver.db import POSTGRESQL, SQLITE

# Groups, and who may use a token: everyone (`limited` 0), or admins and the members of its
# groups (`limited` 1; none left: admins only). An event says who could see its token then
# (`audience`), so a deletion or an access change reaches only those who held it. The same step
# on both backends, but for the type of a time.
_GROUPS = """
    ALTER TABLE tokens ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN audience TEXT NOT NULL DEFAULT '';
    CREATE TABLE org_groups (name TEXT PRIMARY KEY, created_us {time} NOT NULL);
    CREATE TABLE group_members (
        group_name TEXT NOT NULL REFERENCES org_groups (name) ON DELETE CASCADE,
        member     TEXT NOT NULL,
        PRIMARY KEY (group_name, member)
    );
    CREATE INDEX group_members_member ON group_members (member);
    CREATE TABLE token_groups (
        token_id   TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
        group_name TEXT NOT NULL REFERENCES org_groups (name) ON DELETE CASCADE,
        PRIMARY KEY (token_id, group_name)
    );
    CREATE INDEX token_groups_group ON token_groups (group_name);
"""

# Reported QPU time is charged only against a reservation the server made at Reserve (single
# use, expiring, at most what that use could spend); a record keeps the one it named and what
# was charged (what was charged before is what was reported). The same step on both backends,
# but for the type of an integer.
_RESERVATIONS = """
    ALTER TABLE usage ADD COLUMN reservation TEXT NOT NULL DEFAULT '';
    ALTER TABLE usage ADD COLUMN qpu_charged_us {int} NOT NULL DEFAULT 0;
    UPDATE usage SET qpu_charged_us = qpu_us;
    CREATE TABLE reservations (
        id         TEXT PRIMARY KEY,
        member     TEXT NOT NULL,
        token_id   TEXT NOT NULL,
        qpu_us_max {int} NOT NULL,
        expires_us {int} NOT NULL
    );
    CREATE INDEX reservations_member ON reservations (member, expires_us)
"""
# When an org token expires (0: never); past it the server neither relays, reserves nor hands out
# its secret, and members' daemons stop using it. The same step on both backends, but for the type.
_EXPIRY = "ALTER TABLE tokens ADD COLUMN expires_us {time} NOT NULL DEFAULT 0"

# The admin record (admin_record.py): every admin change, who made it, from where and when; kept
# for good (events are trimmed). `seq` is the order of commits: writers take turns.
_ADMIN_RECORD = """
    CREATE TABLE admin_record (
        seq     {seq},
        at_us   {int} NOT NULL,
        actor   TEXT NOT NULL,
        device  TEXT NOT NULL,
        origin  TEXT NOT NULL,
        action  TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail  TEXT NOT NULL
    )
"""

# A record's date is the member's word, kept at most this far ahead of when it arrived (clock skew).
CLOCK_SKEW_US_MAX = 5 * 60 * 1_000_000
# Usage reads served by indexes: a token's records by member, and where a `since` starts. A record's
# arrival time never goes back along `seq` and its date is at most CLOCK_SKEW_US_MAX past it, so
# every record dated at or after T arrived after the last one that arrived before T - skew: one
# index probe gives the `seq` a `since` read starts from. Rows from before this step get the same
# shape: arrival times become their running maximum (they are the server's own, never shown), then
# a date past its bound moves to it (as the server does since issue 20; only hostile or broken
# reports' dates move). The same on both backends.
_LAST_SIGNED = "ALTER TABLE devices ADD COLUMN last_signed_us {int} NOT NULL DEFAULT 0;"
# A quota's validity span (luna-quantum's time quotas: outside start..end the uses it binds are
# refused); 0: no bound, so the quotas from before keep repeating their windows for good.
_QUOTA_SPAN = """
    ALTER TABLE quotas ADD COLUMN valid_from_us {int} NOT NULL DEFAULT 0;
    ALTER TABLE quotas ADD COLUMN valid_until_us {int} NOT NULL DEFAULT 0;
"""
# Providers the org defines (`org-server provider define`): a custom provider's definition by name, as
# the JSON of its config keys (common/custom_providers.py checks it, here and in every daemon). A change
# is an org-wide event: every member gets a snapshot with the definitions. The same on both backends.
_CUSTOM_PROVIDERS = "CREATE TABLE custom_providers (name TEXT PRIMARY KEY, definition TEXT NOT NULL)"
# The admin web console (console/sessions.py): one-time sign-in links and sessions, each stored as
# the SHA-256 of its secret (what a browser or a printed link holds is never in the store), with the
# admin it is for as that user was then (name and when added: a name reused later is another admin).
# Any replica serves any session: they live here, not in a server's memory. The same on both backends,
# but for the type of an integer.
_CONSOLE = """
    CREATE TABLE console_links (
        hash        TEXT PRIMARY KEY,
        admin       TEXT NOT NULL,
        admin_since {int} NOT NULL,
        expires_us  {int} NOT NULL,
        used_us     {int} NOT NULL
    );
    CREATE TABLE console_sessions (
        hash         TEXT PRIMARY KEY,
        admin        TEXT NOT NULL,
        admin_since  {int} NOT NULL,
        created_us   {int} NOT NULL,
        last_seen_us {int} NOT NULL
    );
    CREATE INDEX console_sessions_admin ON console_sessions (admin);
"""
_USAGE_POSITIONS = f"""
    UPDATE usage SET received_us = m.received_us FROM (
        SELECT seq, max(received_us) OVER (ORDER BY seq) AS received_us FROM usage) AS m
        WHERE m.seq = usage.seq AND m.received_us <> usage.received_us;
    UPDATE usage SET at_us = received_us + {CLOCK_SKEW_US_MAX} WHERE at_us > received_us + {CLOCK_SKEW_US_MAX};
    CREATE INDEX usage_member_token ON usage (member, token_id, seq);
    CREATE INDEX usage_received ON usage (received_us, seq);
"""

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
    # 7: groups, and who may use a token (above).
    _GROUPS.format(time="INTEGER"),
    # 8: reservations (above).
    _RESERVATIONS.format(int="INTEGER"),
    # 9: devices, not bearer keys. Users lose their key columns (and may be service members);
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
    # 10: org token lifetimes (above).
    _EXPIRY.format(time="INTEGER"),
    # 11: the admin record (above).
    _ADMIN_RECORD.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT", int="INTEGER"),
    # 12: usage reads that examine a bounded number of rows (above).
    _USAGE_POSITIONS,
    # 13: each device's last accepted DeviceToken signing time (a signature is taken once).
    _LAST_SIGNED.format(int="INTEGER"),
    # 14: a quota's validity span (above).
    _QUOTA_SPAN.format(int="INTEGER"),
    # 15: the org's custom providers (above).
    _CUSTOM_PROVIDERS,
    # 16: the admin web console's sign-in links and sessions (above).
    _CONSOLE.format(int="INTEGER"),
)

# The same schema in PostgreSQL's types (64-bit integers, bytea): the first step starts where
# SQLite's six have come to, each later one is SQLite's next. The contract suite checks the two
# have the same columns.
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
    # = SQLite's 7
    _GROUPS.format(time="BIGINT"),
    _RESERVATIONS.format(int="BIGINT"),  # = SQLite's 8
    # SQLite's 9: devices, not bearer keys (the same steps, in place).
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
    _EXPIRY.format(time="BIGINT"),  # = SQLite's 10
    _ADMIN_RECORD.format(seq="BIGSERIAL PRIMARY KEY", int="BIGINT"),  # = SQLite's 11
    _USAGE_POSITIONS,  # = SQLite's 12
    _LAST_SIGNED.format(int="BIGINT"),  # = SQLite's 13
    _QUOTA_SPAN.format(int="BIGINT"),  # = SQLite's 14
    _CUSTOM_PROVIDERS,  # = SQLite's 15
    _CONSOLE.format(int="BIGINT"),  # = SQLite's 16
)
MIGRATIONS = {SQLITE: SQLITE_MIGRATIONS, POSTGRESQL: POSTGRESQL_MIGRATIONS}
