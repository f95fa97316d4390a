"""The org server's domain: org tokens sealed at rest, users, and change pushes.

No grpc here. Who may call what (admin or member) is decided once, in
`qpu_broker.orgserver.wire.auth`; this module trusts the caller it is given.

Pushes come from the store's numbered events, whoever wrote them (this server, an admin's
CLI on the data dir, another replica on the same database): `pump()` reads the events after
the last one applied and hands each subscriber the token changes (each stream sends only
what its member may see: `seen_as`), ends the streams of users removed, re-keyed or given
another role, asks a member whose groups changed for a new snapshot, and every member after
an org-wide change (destination settings, quotas). This server pumps right after its own writes, and
whenever the database says another connection committed (`follow_store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator

from qpu_broker_client import usage
from qpu_broker_client.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QpuBrokerError,
    ResourceExhaustedError,
    UnavailableError,
)
from qpu_broker_client.providers import PROVIDERS, check_provider
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota, UsagePage, UsageRecord

from qpu_broker.common.custom_providers import CustomDefinition
from qpu_broker.common.lifetimes import (
    check_lifetime,
    expired_error,
    expiry_text,
    expiry_us,
    is_expired,
)
from qpu_broker.common.names import canonical_name, check_name
from qpu_broker.common.org_limits import FETCH_IDS_MAX
from qpu_broker.common.reach import Owner, Reach, bounded_org_reach, merge
from qpu_broker.keys import crypto
from qpu_broker.orgserver import quota_admin
from qpu_broker.orgserver import users as org_users
from qpu_broker.orgserver.admin_record import AdminRecord, reach_text, token_change
from qpu_broker.orgserver.budgets import (
    READ_BURST,
    READ_RATE,
    REPORT_BURST,
    REPORT_RATE,
    Budget,
)
from qpu_broker.orgserver.custom_definitions import define, read_definitions, undefine
from qpu_broker.orgserver.devices import Caller, Devices
from qpu_broker.orgserver.groups import (
    Groups,
    View,
    check_access,
    describe_access,
    visible,
)
from qpu_broker.orgserver.kept import Kept
from qpu_broker.orgserver.org_reach import clear_provider_reach, set_provider_reach
from qpu_broker.orgserver.quotas import RECORD_LATE_US_MAX, Quotas
from qpu_broker.orgserver.server_names import LOOPBACK_NAMES
from qpu_broker.orgserver.store import (
    ACCESS,
    CLOCK_SKEW_US_MAX,
    CREATED,
    DELETED,
    ORG_EVENT,
    TOKEN_EVENTS,
    UPDATED,
    USER_EVENT,
    Access,
    EnrollmentCode,
    OrgStore,
    OrgTokenRecord,
    StoreEvent,
    UsageQuery,
    User,
)
from qpu_broker.orgserver.streams import StreamSlots
from qpu_broker.orgserver.users import DEFAULT_TERMS, CodeTerms, new_users
from qpu_broker.providers import normalize_secret, traits
from qpu_broker.providers.dwave import (
    QPU_US_MAX,  # one answer's QPU time at most: a report past it is cut
)

log = logging.getLogger(__name__)
NAME_MAX, SECRET_MAX = 128, 16 * 1024
ORG_TOKEN_NAME = "an organization token name"

# What a member's daemon may report, and the bounds of each field (a hostile member's
# report is cut to these, never stored as sent).
USAGE_BATCH_MAX = 1000
LIST_PAGE_MAX = 1000  # tokens in one ListTokens answer: far under any message limit
SIZE_MAX = 1 << 53  # request and answer sizes beyond any body (a hostile report stays an integer)
# A record's time is the member's clock: at most CLOCK_SKEW_US_MAX ahead of the server's, and at
# most RECORD_LATE_US_MAX behind (a record queued on disk that long); outside, it is stored at the bound.
_FIELD_MAX = {"id": 64, "token_id": 64, "token_name": NAME_MAX, "method": 16, "host": 255, "path": 2048,
              "reservation": 64}


ORG_ONLY = Reach(owner=Owner.ORG)


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str  # created | updated | deleted | access
    token_id: str
    name: str
    revision: int
    token: OrgTokenRecord | None  # as it is now (None: deleted)
    before: Access = None  # access, deleted: who could see it before (they alone held it)


def seen_as(change: Change, view: View) -> Change | None:
    """What a stream whose member has `view` is sent of `change`: the change, a token it now
    may see (created), one it no longer may (deleted), or nothing (a token it never saw: not
    even its name goes out)."""
    now = change.token is not None and visible(change.token.groups, view)
    if change.kind == ACCESS:
        if now:
            return dataclasses.replace(change, kind=CREATED)
        return dataclasses.replace(change, kind=DELETED, token=None) if visible(change.before, view) else None
    if change.kind == DELETED:
        return change if visible(change.before, view) else None
    return change if now else None


@dataclasses.dataclass(frozen=True)
class Resnapshot:
    """The org's destination settings or quotas changed, or what this member may see: send the
    whole snapshot again."""


@dataclasses.dataclass(frozen=True)
class End:
    """This subscriber's stream must end, with this error (and its mark)."""

    error: QpuBrokerError


Event = Change | Resnapshot | End


@dataclasses.dataclass(eq=False)
class Subscription:
    user: Caller  # the user as admitted, and the device the stream is for
    view: View  # the groups the member is in (None: an admin), as of the snapshot sent last
    queue: asyncio.Queue[Event] = dataclasses.field(default_factory=asyncio.Queue)
    holds_slot: bool = True  # until `unsubscribe` gives it back (once)


def _ad(token_id: str, provider: str) -> bytes:
    return b"\0".join([b"qpu-broker/org/v1/token", token_id.encode(), provider.encode()])


class OrgService:
    def __init__(self, store: OrgStore, server_key: bytes, clock: Callable[[], float] = time.time,
                 names: tuple[str, ...] = LOOPBACK_NAMES) -> None:
        self._store = store
        self._key = server_key
        self._clock = clock
        self._subscribers: set[Subscription] = set()
        self._ending = asyncio.Event()  # set by end_all: the server is shutting down
        self._end_reason = ""
        self._org_reach = store.org_reach()
        self._custom = read_definitions(store)  # the providers this org defines, by name
        self._seq = store.revision()  # the last event pushed to subscribers
        self.store_id = store.meta("store_id") or ""
        self._usage_arrived = asyncio.Event()  # set, then replaced, whenever records are stored
        self._quotas = Quotas(store, clock)
        self._report_budget = Budget(REPORT_RATE, REPORT_BURST, clock, "usage reports from {member} are over {rate} "
                                     "records a second: the daemon keeps the rest and sends them later")
        self._read_budget = Budget(READ_RATE, READ_BURST, clock, "usage reads by {member} are over {rate} a second: "
                                   "page on more slowly (each answer says where the next read resumes)")
        self.record = AdminRecord(store, self._now)  # every admin change, with who made it (admin_record.py)
        self.groups = Groups(store, self.record, self.pump, clock)
        self._watching = StreamSlots("push streams", "one per daemon: stop a daemon, or wait for dead ones to time out")
        self._following = StreamSlots("usage follow streams", "close one (FollowUsage, usage --follow) first")
        self._relaying = StreamSlots("relay streams", "one per daemon: stop a daemon, or close one (Relay) first")
        self.org = store.meta("org") or "org"
        # Enrollment, access tokens and who calls (the interceptor asks it on every call).
        self.devices = Devices(store, server_key, self.org, self.store_id, self._now, self.record, names)
        # Relay tokens' rows as relayed calls read them, by (token id, the member's audience).
        self._relay_rows: Kept[tuple[str, str | None], tuple[OrgTokenRecord, tuple[bytes, bytes]]] = Kept()

    @property
    def store(self) -> OrgStore:
        """The store, for reads (the console's pages); changes go through the methods here."""
        return self._store

    # -- users (admins; the interceptor checks) -----------------------------------------
    def add_users(self, wanted: list[tuple[str, str]], terms: CodeTerms = DEFAULT_TERMS
                  ) -> list[tuple[User, EnrollmentCode, str]]:
        """New users and their first enrollment codes (shown once): all of them, or none."""
        made = new_users(wanted, terms)
        org_users.add_users(self._store, self.record, made)
        log.info("added %d users: %s", len(made), ", ".join(repr(u.name) for u, _, _ in made[:10])
                 + (f" and {len(made) - 10} more" if len(made) > 10 else ""))
        return [(user, code, new.code) for user, code, new in made]

    def new_code(self, name: str, terms: CodeTerms, *, withdraw_others: bool) -> tuple[EnrollmentCode, str]:
        """Another code for `name` (rotate-key: `withdraw_others`, their devices end at once)."""
        made = self.devices.new_code(name, terms, withdraw_others=withdraw_others)
        self.pump()
        return made

    def remove_device(self, device_id: str) -> None:
        """Its streams end (here and on every replica) as the event arrives."""
        self.devices.remove(device_id)
        self.pump()

    def users(self) -> list[User]:
        return self._store.users()

    def remove_users(self, names: list[str]) -> None:
        """All of them, or none; their streams end (here and on every replica) as the events arrive."""
        org_users.remove_users(self._store, self.record, names, self._now())
        log.info("removed %d users: %s", len(names), ", ".join(repr(n[:NAME_MAX]) for n in names[:10]))
        self.pump()

    def set_role(self, name: str, role: str) -> None:
        """`user set-role`: recorded and pushed (an admin no longer one loses their sessions and streams)."""
        org_users.set_role(self._store, self.record, name, role)
        self.pump()

    # -- destination settings --------------------------------------------------------
    def org_reach(self) -> dict[str, Reach]:
        return dict(self._org_reach)

    def set_provider_reach(self, provider: str, reach: Reach) -> Reach | None:
        """`provider set`: a built-in or defined provider's org-wide settings; the ones replaced."""
        before = set_provider_reach(self._store, self.record, self.known_provider(provider), reach)
        self.pump()
        return before

    def clear_provider_reach(self, provider: str) -> Reach | None:
        """`provider clear`: the settings cleared (None: there were none, nothing changed)."""
        before = clear_provider_reach(self._store, self.record, check_provider(provider))
        self.pump()
        return before

    def define_provider(self, definition: CustomDefinition) -> CustomDefinition | None:
        """`provider define`: the definition replaced, if any."""
        before = define(self._store, self.record, definition)
        self.pump()
        return before

    def undefine_provider(self, name: str) -> None:
        """`provider undefine`: its tokens stay, refused from then on."""
        undefine(self._store, self.record, name)
        self.pump()

    def custom_providers(self) -> dict[str, CustomDefinition]:
        """The custom providers this org defines (a new dict whenever they change)."""
        return self._custom

    def known_provider(self, provider: str) -> str:
        """`provider` if org tokens may be made for it: a built-in, or one this org defines."""
        provider = check_provider(provider)
        if provider not in PROVIDERS and provider not in self._custom:
            raise InvalidArgumentError(
                f"{provider!r} is no provider this organization defines: an org admin defines it first with "
                f"'qpu-broker org-server provider define {provider} --file {provider}.toml' (official_hosts, auth)")
        return provider

    def reach(self, record: OrgTokenRecord) -> Reach:
        """Where daemons let this token go: the org-wide settings for its provider, plus its own."""
        return merge(self._org_reach.get(record.provider, ORG_ONLY), record.own)

    # -- tokens (admins; the interceptor checks) -------------------------------
    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def _seal(self, token_id: str, provider: str, secret: bytes) -> tuple[bytes, bytes]:
        return crypto.seal(self._key, normalize_secret(provider, secret, SECRET_MAX), _ad(token_id, provider))

    def create(self, name: str, provider: str, secret: bytes, own: Reach, relay: bool = True,
               groups: list[str] | None = None, expires_in: float = 0) -> OrgTokenRecord:
        """`relay` (the default): its secret never leaves this server; False caches it in members'
        daemons. `groups`: who may use it besides admins from the start (None: everyone);
        `expires_in`: its lifetime in seconds from now (0: never expires)."""
        provider = self.known_provider(provider)
        now = self._now()
        name = check_name(name, NAME_MAX, ORG_TOKEN_NAME)
        own = bounded_org_reach(own, f"organization token {name!r}")
        record = OrgTokenRecord(secrets.token_hex(12), name, provider, own, 1, now, now, relay, check_access(groups),
                                expiry_us(now, expires_in))
        with self.record.changing() as note:
            self._store.insert_token(record, *self._seal(record.id, provider, secret))
            note("token.create", name, f"id {record.id}; provider {provider}; {'relay' if relay else 'cached'}; "
                                       f"for {describe_access(record.groups)}; reach: {reach_text(own)}"
                                       + (f"; expires {expiry_text(record.expires_us)}" if record.expires_us else ""))
        self.pump()
        return record

    def find(self, *, token_id: str = "", name: str = "") -> OrgTokenRecord:
        if not token_id and not name:
            raise InvalidArgumentError("name an organization token by id or by name")
        return self._store.token(token_id=token_id, name=canonical_name(name))

    def usable(self, user: User, token_id: str) -> OrgTokenRecord:
        """A token `user` may use; one they may not see is NOT_FOUND, word for word as a missing one;
        one that expired is refused, saying so (relay, Reserve: no use of it goes out)."""
        return self._unexpired(self._store.token(token_id=token_id, visible_to=_audience(user)))

    def usable_opened(self, user: User, token_id: str) -> tuple[OrgTokenRecord, Secret | None]:
        """`usable`, and its secret opened (None: it does not open): a relayed call's. The row (and
        its sealed secret) as read for this member's calls a moment ago (`kept`): an event about
        the token or the member's groups drops it, so a revocation binds within 2 s."""
        audience = _audience(user)
        record, sealed = self._relay_rows.get((token_id, audience),
                                              lambda: self._store.token_sealed(token_id, audience))
        return self._unexpired(record), self.open_secret(record, sealed)

    def _unexpired(self, record: OrgTokenRecord) -> OrgTokenRecord:
        if self.expired(record):
            raise expired_error(record.name, record.expires_us, organization=True)
        return record

    def expired(self, record: OrgTokenRecord) -> bool:
        return is_expired(record.expires_us, self._now())

    def view(self, user: User) -> View:
        return self.groups.view(user)

    def update(self, record: OrgTokenRecord, *, name: str | None, secret: bytes | None,
               own: Reach | None, expires_in: float | None = None, relay: bool | None = None) -> OrgTokenRecord:
        """`expires_in`: a new lifetime from now (0: never expires; None: the expiry is kept);
        `relay`: its mode (None: unchanged). The new version makes daemons drop what they held of it
        (its secret, bearers made from it) at once."""
        if name is None and secret is None and own is None and expires_in is None and relay is None:
            raise InvalidArgumentError("nothing to update: give a new name, a new secret, the token's hosts, "
                                       "a lifetime or its mode")
        if own is not None:
            own = bounded_org_reach(own, f"organization token {record.name!r}")
        if expires_in is not None:
            check_lifetime(expires_in)  # refused before anything is written
        now = self._now()
        new = dataclasses.replace(
            record, name=check_name(name, NAME_MAX, ORG_TOKEN_NAME) if name is not None else record.name,
            own=own if own is not None else record.own, relay=record.relay if relay is None else relay,
            version=record.version + 1, updated_us=now,
            expires_us=record.expires_us if expires_in is None else expiry_us(now, expires_in))
        sealed = self._seal(record.id, record.provider, secret) if secret is not None else None
        # A change of mode alone is `token.relay`, whoever made it (CLI, RPC, console): what
        # `audit --action token.relay` finds.
        mode_only = relay is not None and relay != record.relay and name is None and secret is None \
            and own is None and expires_in is None
        with self.record.changing() as note:
            self._store.replace_token(new, sealed)
            note("token.relay" if mode_only else "token.update", new.name,
                 token_change(record, new, rotated=sealed is not None))
        self.pump()
        return new

    def delete(self, record: OrgTokenRecord) -> None:
        with self.record.changing() as note:
            self._store.delete_token(record)
            note("token.delete", record.name, f"id {record.id}; provider {record.provider}")
        self.pump()

    # -- members -------------------------------------------------------------------
    def list(self) -> tuple[list[OrgTokenRecord], int]:
        """Every token, and the revision they are at least as new as."""
        revision = self._seq
        return self._store.tokens(), revision

    def list_page(self, user: User, page_token: str, size: int) -> tuple[list[OrgTokenRecord], int, str]:
        """A page of the tokens `user` may see: (tokens, revision, the next page's token, "" at the end)."""
        created, _, after = page_token.partition(":")
        if page_token and not (created.isdigit() and len(created) <= 19 and after):
            raise InvalidArgumentError("page_token is not one a ListTokens answer gave: start again without it")
        size = min(size or LIST_PAGE_MAX, LIST_PAGE_MAX)
        revision = self._seq
        records = self._store.tokens_after(int(created) if page_token else -1, after, size + 1, _audience(user))
        more = len(records) > size
        records = records[:size]
        return records, revision, f"{records[-1].created_us}:{records[-1].id}" if more else ""

    def secrets(self, user: User, ids: list[str]) -> list[tuple[OrgTokenRecord, Secret]]:
        """The secrets members' daemons hold: never a relay token's (it never leaves this server),
        nor one of a token the member may not see, nor one of a token that expired."""
        audience = _audience(user)
        records = self._store.tokens(None if not ids else ids[:FETCH_IDS_MAX + 1], audience)
        if len(ids) > FETCH_IDS_MAX or len(records) > FETCH_IDS_MAX:
            raise InvalidArgumentError(f"FetchSecrets takes at most {FETCH_IDS_MAX} ids a call: name them, in batches")
        records = [r for r in records if not r.relay and not self.expired(r)]
        sealed = self._store.sealed_many([r.id for r in records])  # one read for all, not one each
        out = []
        for record in records:
            secret = self.open_secret(record, sealed.get(record.id))
            if secret is not None:
                out.append((record, secret))
        return out

    def open_secret(self, record: OrgTokenRecord, sealed: tuple[bytes, bytes] | None = None) -> Secret | None:
        """The token's secret, for this server's own use (relay) or a member's daemon (not relay)."""
        if sealed is None:
            sealed = self._store.sealed(record.id)
        nonce, ciphertext = sealed
        try:
            return Secret(crypto.open_sealed(self._key, nonce, ciphertext, _ad(record.id, record.provider)))
        except crypto.DecryptionError:
            log.error("organization token id=%s name=%r does not open: altered on disk", record.id, record.name)
            return None

    # -- the usage record ---------------------------------------------------------------
    def report_usage(self, user: User, rows: list[UsageRecord]) -> int:
        """Store a member's records of their own uses; the member is the caller, whatever was sent.
        Returns how many were new (a resend after a lost answer stores nothing twice)."""
        if len(rows) > USAGE_BATCH_MAX:
            raise InvalidArgumentError(f"a usage report holds at most {USAGE_BATCH_MAX} records: send them in batches")
        self._report_budget.take(user.name, len(rows))
        now = self._now()
        checked = [_checked_usage(r, user.name, now, self._custom) for r in rows]
        moved = sum(1 for r, c in zip(rows, checked, strict=True) if r.at_us != c.at_us)
        if moved:
            log.warning("%d usage records from %r were dated outside the last %d days or ahead of this server's "
                        "clock: stored at the nearest bound", moved, user.name, RECORD_LATE_US_MAX // 86_400_000_000)
        stored = self._store.add_usage(checked, now, charge=lambda r: self._charge_reported(r, user))
        if stored:
            self.usage_stored()
        return stored

    def _charge_reported(self, record: UsageRecord, user: User) -> int:
        """QPU time a member's daemon reports is charged against the reservation its record names
        (quotas.py); never for relay tokens (the server reads those answers itself), nor for tokens
        the member may not use (their word cannot spend a group's quota)."""
        if not record.reservation:
            return 0
        try:
            token = self._store.token(token_id=record.token_id, visible_to=_audience(user))
        except NotFoundError:
            return 0  # no such token (any more): nothing of the org's to charge
        if not traits(token.provider).meters_qpu_time or token.relay:  # the token's own provider, not the report's word
            return 0
        return self._quotas.charge_reported(record)

    def usage(self, user: User, query: UsageQuery) -> UsagePage:
        """One read of the record (ListUsage), within the caller's read budget (RESOURCE_EXHAUSTED
        past it): admins read every record, members their own only; with where the next read
        resumes (`OrgStore.usage`: each read examines a bounded number of rows)."""
        self._read_budget.take(user.name)
        return self._read_usage(user, query)

    async def follow_usage(self, user: User, query: UsageQuery, *, paced: bool) -> UsagePage:
        """A follower's next read; `paced` (its first, and while it catches up) waits its turn in the
        same budget rather than failing. Reads of new records as they arrive are not counted."""
        if paced:
            await self._read_budget.wait(user.name)
        return self._read_usage(user, query)

    def _read_usage(self, user: User, query: UsageQuery) -> UsagePage:
        if user.role != "admin":
            if query.member not in ("", user.name):
                raise PermissionDeniedError(
                    f"members read their own usage only, not {query.member!r}'s: an org admin can read everyone's")
            # A name can be reused: a member reads only what was recorded since they were added.
            query = dataclasses.replace(query, member=user.name, since_us=max(query.since_us, user.created_us))
        return self._store.usage(query)

    # -- quotas ----------------------------------------------------------------------------
    def reserve(self, user: User, token_id: str) -> tuple[list[Quota], str]:
        """Before a use of a metered token: count it, or refuse it (RESOURCE_EXHAUSTED). For a cached
        D-Wave token, also the reservation its record names (what its reported QPU time may charge)."""
        token = self.usable(user, token_id)
        return self._quotas.reserve(user.name, token.id, qpu=traits(token.provider).meters_qpu_time and not token.relay)

    def quota_status(self, user: User, member: str, every: bool) -> list[Quota]:
        """The caller's quotas and their use; admins: another member's, or every quota. A member
        is not shown quotas on tokens they may not see (their names included)."""
        if (every or member not in ("", user.name)) and user.role != "admin":
            raise PermissionDeniedError("members see their own quotas only: an org admin can see everyone's")
        quotas = self._quotas.status(None if every else (member or user.name))
        if user.role == "admin":
            return quotas
        seen = {r.id for r in self._store.tokens([q.token_id for q in quotas if q.token_id], user.name)}
        return [q for q in quotas if not q.token_id or q.token_id in seen]

    def set_quota(self, *, member: str, token: str, unit: str, limit: int | None, start_us: int | None,
                  end_us: int | None, update: bool) -> Quota:
        """Admins (the interceptor checks): luna-quantum's create or update of a time quota."""
        q = quota_admin.set_span(self._store, self.record, member=member, token=token, unit=unit, limit=limit,
                                 start_us=start_us, end_us=end_us, update=update, now_us=self._now())
        self.pump()
        return q

    def write_quota(self, q: Quota) -> Quota:
        """Admins (the console): `quota set`'s add or replace, recorded and pushed."""
        q = quota_admin.write(self._store, self.record, q)
        self.pump()
        return q

    def remove_quota_id(self, quota_id: int) -> None:
        """Admins (the console): `quota rm`'s removal, recorded and pushed."""
        quota_admin.remove(self._store, self.record, quota_id)
        self.pump()

    def remove_quota(self, *, member: str, token: str, unit: str) -> Quota:
        """Admins (the interceptor checks): luna-quantum's delete of a time quota."""
        gone = quota_admin.remove_for(self._store, self.record, member=member, token=token, unit=unit)
        self.pump()
        return gone

    def metered_ids(self, member: str) -> frozenset[str] | None:
        """The tokens whose use by `member` a quota counts (None: every token)."""
        return self._quotas.metered_ids(member)

    # -- the server's own records (relayed calls) ---------------------------------------------
    def now_us(self) -> int:
        return self._now()

    def record_job(self, record: UsageRecord, counted: bool) -> Callable[[OrgStore], QpuBrokerError | None]:
        """A record this server makes (a relayed call's), as a write for the record writer (its
        connection, its transaction). `counted`: the use goes out (a forward begun, a signature),
        so the member's quotas check and count it first, in the same transaction (one step, as
        `Quotas.reserve` says); refused, the record says so instead and the job returns the refusal
        (its caller raises it: the use does not go out). QPU time a record reports is charged in
        the same transaction too."""
        received = self._now()

        def job(store: OrgStore) -> QpuBrokerError | None:
            quotas = Quotas(store, self._clock)
            if counted:
                try:
                    quotas.reserve(record.member, record.token_id)
                except ResourceExhaustedError as refused:
                    store.add_usage([dataclasses.replace(record, outcome=usage.REFUSED_QUOTA, status=0)], received)
                    return refused
            store.add_usage([record], received, charge=quotas.charge)
            return None
        return job

    def finish_job(self, record_id: str, status: int, outcome: str, answer_bytes: int,
                   qpu_us: int) -> Callable[[OrgStore], None]:
        return lambda store: store.finish_usage(record_id, status, outcome, answer_bytes, qpu_us,
                                                charge=Quotas(store, self._clock).charge)

    def usage_stored(self) -> None:
        """Records were stored (by this process): usage followers read what is new."""
        self._usage_arrived.set()
        self._usage_arrived = asyncio.Event()

    async def usage_arrival(self, timeout: float) -> None:
        """Wait until new records are stored (or `timeout` passes)."""
        try:
            await asyncio.wait_for(self._usage_arrived.wait(), timeout)
        except TimeoutError:
            pass

    # -- push ------------------------------------------------------------------------
    def subscribe(self, user: Caller) -> Subscription:
        """A new push stream's place: before its snapshot or resume, so nothing falls between."""
        self._watching.take(user.name)
        sub = Subscription(user, self.view(user))
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if sub.holds_slot:
            sub.holds_slot = False
            self._watching.give_back(sub.user.name)

    @contextlib.contextmanager
    def following(self, user: User) -> Iterator[None]:
        """While a usage follower's stream is open: at most STREAMS_PER_USER a user."""
        with self._following.held(user.name):
            yield

    @contextlib.contextmanager
    def relaying(self, user: User) -> Iterator[None]:
        """While a Relay stream is open: at most STREAMS_PER_USER a user (each holds up to
        STREAM_IN_FLIGHT calls and their answers)."""
        with self._relaying.held(user.name):
            yield

    @property
    def revision(self) -> int:
        return self._seq

    def pump(self) -> None:
        """Push every event after the last one pushed (see the module's docstring)."""
        while events := self._store.events_after(self._seq):
            changes = {c.revision: c for c in self._changes(events)}  # every read first: nothing half done
            for event in events:
                # In order, and the position moves past an event only once it is handled: a read
                # that fails (the database gone a moment) leaves it to the next pump, never skipped.
                self._forget(event)  # before anything reads what it changed again
                if event.kind == USER_EVENT:
                    self._recheck(event.subject)
                elif event.kind == ORG_EVENT:
                    self._org_reach = self._store.org_reach()
                    self._custom = read_definitions(self._store)
                    log.info("organization settings changed (revision %d): resending snapshots", event.seq)
                    for sub in self._subscribers:
                        sub.queue.put_nowait(Resnapshot())
                elif event.seq in changes:
                    for sub in self._subscribers:
                        sub.queue.put_nowait(changes[event.seq])
                self._seq = event.seq

    def caught_up(self) -> None:
        """Before a call is admitted: what another process committed to this store file (the CLI)
        is applied first where the database tells at no cost (SQLite), so a kept standing or row
        never outlives a change made before the call; replicas hear of each other's by NOTIFY."""
        if self._store.db.committed_elsewhere():
            self.pump()

    def _forget(self, event: StoreEvent) -> None:
        """Drop what calls kept of what `event` changed: a user's devices, role or groups (who may
        see which token); a token; anything, for an org-wide change."""
        if event.kind == USER_EVENT:
            self.devices.forget(event.subject)
            self._relay_rows.drop(lambda key, _: key[1] == event.subject)
        elif event.kind in TOKEN_EVENTS:
            self._relay_rows.drop(lambda key, _: key[0] == event.subject)
        else:
            self._relay_rows.clear()

    def _changes(self, events: list[StoreEvent]) -> list[Change]:
        """The token events of `events`, each with its token as it is now (one read for all)."""
        ids = [e.subject for e in events if e.kind in TOKEN_EVENTS and e.kind != DELETED]
        now = {r.id: r for r in self._store.tokens(ids)} if ids else {}
        out = []
        for e in events:
            if e.kind not in TOKEN_EVENTS:
                continue
            record = now.get(e.subject) if e.kind != DELETED else None
            if e.kind in (CREATED, UPDATED) and record is None:
                continue  # deleted since: its own event follows (an access change still tells who lost it)
            log.info("organization token %s id=%s name=%r (revision %d)", e.kind, e.subject, e.name, e.seq)
            out.append(Change(e.kind, e.subject, e.name, e.seq, record, e.audience))
        return out

    def changes_since(self, revision: int, sub: Subscription) -> list[Change] | None:
        """What `sub`'s daemon, which saw everything up to `revision`, missed and may see, one
        change per token (its latest); None when that cannot be told (the events were trimmed,
        another store's numbers, an org-wide change, a token's access or the member's own
        groups changed between): it gets a whole snapshot instead."""
        if revision > self._seq or (revision < self._seq and self._store.oldest_event() > revision + 1):
            return None
        events: list[StoreEvent] = []
        while len(events) < self._seq - revision:
            page = self._store.events_after(events[-1].seq if events else revision)
            page = [e for e in page if e.seq <= self._seq]
            if not page:
                break
            events += page
        if (any(e.kind in (ORG_EVENT, ACCESS) or (e.kind == USER_EVENT and e.subject == sub.user.name) for e in events)
                or [e.seq for e in events] != list(range(revision + 1, self._seq + 1))):
            return None  # an org-wide change, who sees what changed, or a gap (trimmed meanwhile): the whole snapshot
        latest = {c.token_id: c for c in self._changes(events)}
        seen = [seen_as(c, sub.view) for c in sorted(latest.values(), key=lambda c: c.revision)]
        return [c for c in seen if c is not None]

    def _recheck(self, name: str) -> None:
        """`name`'s devices, codes, role, membership or groups changed: end each of their streams
        whose device or role is not as it was; new groups get them a new snapshot (what they may
        see changed)."""
        for sub in list(self._subscribers):
            if sub.user.name != name:
                continue
            error = self.no_longer_admitted(sub.user)
            if error is None:
                view = self.view(sub.user)
                if view != sub.view:
                    sub.view = view  # changes pushed from here on are seen with it
                    sub.queue.put_nowait(Resnapshot())
                continue
            log.warning("ending the push stream of %r: %s", sub.user.name, error)
            self._subscribers.discard(sub)
            sub.queue.put_nowait(End(error))

    def no_longer_admitted(self, user: Caller) -> QpuBrokerError | None:
        """Why a caller admitted earlier (an open stream's) is not any more (see Devices); None
        while they are as they were."""
        return self.devices.no_longer_admitted(user)

    def end_all(self, reason: str) -> None:
        """End every push stream now (shutdown): daemons notice at once and count their grace from here."""
        self._end_reason = f"the org server for {self.org} {reason}"
        self._ending.set()
        for sub in list(self._subscribers):
            self._subscribers.discard(sub)
            sub.queue.put_nowait(End(UnavailableError(self._end_reason)))

    async def ended(self) -> str:
        """Once `end_all` is called, why: streams that are not push streams (Relay) wait on it."""
        await self._ending.wait()
        return self._end_reason

    async def follow_store(self, poll_seconds: float) -> None:
        """Pump whenever the database says another connection (an admin's CLI, another replica)
        committed; records reported to another replica wake this one's usage followers too."""
        async for _ in self._store.db.changes(poll_seconds):
            try:
                self.pump()
            except Exception as exc:  # noqa: BLE001 - this task must outlive a bad moment of the database
                log.warning("cannot read the org store's events (tried again at the next change): %s", exc)
            self.usage_stored()


def _audience(user: User) -> str | None:
    """Whose view a store read is filtered by: a member's own; an admin's is every token."""
    return None if user.role == "admin" else user.name


def _checked_usage(row: UsageRecord, member: str, now_us: int, custom: dict[str, CustomDefinition]) -> UsageRecord:
    if not row.id or not row.id.isascii() or not row.id.isprintable():
        raise InvalidArgumentError("a usage record needs an id of printable ASCII: it is how repeats are dropped")
    if row.kind not in usage.KINDS:
        raise InvalidArgumentError(f"usage record {row.id[:64]!r}: kind {row.kind[:16]!r} is not one of "
                                   f"{', '.join(sorted(usage.KINDS))}")
    if row.outcome not in usage.OUTCOMES:
        raise InvalidArgumentError(f"usage record {row.id[:64]!r}: outcome {row.outcome[:32]!r} is not one of "
                                   f"{', '.join(sorted(usage.OUTCOMES))}")
    # Cut to bounds, and nothing a terminal would act on (a line break, an escape): a record is shown as text.
    cut = {f: "".join(c if c.isprintable() else "?" for c in getattr(row, f)[:n]) for f, n in _FIELD_MAX.items()}
    provider = row.provider if row.provider in PROVIDERS or row.provider in custom else "unknown"
    qpu_us = min(max(row.qpu_us, 0), QPU_US_MAX) if traits(provider).meters_qpu_time and row.outcome == usage.ANSWERED else 0
    return dataclasses.replace(row, **cut, member=member, provider=provider, status=min(max(row.status, 0), 999),
                               request_bytes=min(max(row.request_bytes, -1), SIZE_MAX),
                               answer_bytes=min(max(row.answer_bytes, -1), SIZE_MAX), seq=0, qpu_us=qpu_us,
                               qpu_charged_us=0, at_us=min(max(row.at_us, now_us - RECORD_LATE_US_MAX),
                                                           now_us + CLOCK_SKEW_US_MAX))
