"""Relay tokens: the org server forwards and signs for members, and the secret never leaves it.

The server runs the daemon's own forwarder (destination rules, IBM bearer rules, SigV4, the
key exchange and its cache) with a resolver that opens the token from the org's store, and
records each use itself: the org's Reach, the member's quotas and the usage record apply
here, where a member who controls their own machine cannot skip them. Every answer is read
whole and has the token's secret taken out before it goes back (a provider may echo its input).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import AsyncIterator

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import SIGNED, UNKNOWN_SIZE, UsageRecord

from qpu_broker.common.config import Config
from qpu_broker.common.org_limits import RELAY_BODY_MAX, RELAY_TIMEOUT_MAX
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.forward.forwarder import (
    ForwardCall,
    Forwarder,
    Reply,
    SignCall,
    read_whole,
    scrubbed,
)
from qpu_broker.forward.use_records import UseRecords
from qpu_broker.orgserver.record_writer import RecordWriter
from qpu_broker.orgserver.service import SECRET_MAX, OrgService
from qpu_broker.orgserver.store import OrgTokenRecord, User
from qpu_broker.providers import Schemes, traits
from qpu_broker.providers.exchange_cache import ExchangeCache
from qpu_broker.tokens.kinds import INLINE, ORGANIZATION
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.resolution import Ref, RefResolver, Resolved, StoredToken
from qpu_broker.tokens.usage_queue import new_id

RELAY_IN_FLIGHT = 16  # relayed calls the server makes at once (more wait)
RELAY_IN_FLIGHT_PER_MEMBER = 4  # and one member's (more are refused)


@dataclasses.dataclass(frozen=True)
class RelayCall:
    """One relayed call: whose it is, and its relay tokens as read once at its start, by id, each
    with its secret opened (None: it does not open). Every step of the call uses these, not reads
    of its own. `opened`: the secrets that went out (provider, secret), noted as they are put in
    the request: a forwarded answer is scrubbed of these, not only of what the store holds when it
    comes back (an admin may rotate a token meanwhile); None for a signature (no answer to scrub)."""

    member: User
    tokens: dict[str, tuple[OrgTokenRecord, Secret | None]]
    opened: list[tuple[str, Secret]] | None


# Set by the relay for the length of one call (the forwarder it runs is shared).
CALL: contextvars.ContextVar[RelayCall] = contextvars.ContextVar("relay_call")


class RelayResolver(RefResolver):
    """The forwarder's view of a relayed call's tokens, as the call at hand read them: its own
    relay token (or, for Luna, the member's own key, inline), and the relay tokens of a Luna
    body's qpu_tokens. Every org token here was checked by the relay first (the member may use it,
    and it is a relay token); a Luna body that names any other stored token is refused."""

    def __init__(self, service: OrgService) -> None:
        super().__init__(SECRET_MAX)
        self._service = service

    def _record(self, ref: Ref) -> OrgTokenRecord:
        return self._opened(ref)[0]

    def _opened(self, ref: Ref) -> tuple[OrgTokenRecord, Secret | None]:
        opened = CALL.get().tokens.get(ref.id)
        if opened is None:  # only what the relay read (and checked) for this call
            raise FailedPreconditionError("a relayed call uses the relay tokens it names, no others")
        return opened

    def _token(self, record: OrgTokenRecord) -> OrgToken:
        # Not metered here: the member's quotas count a relayed use in its record's own transaction
        # (ServerRecords), not in a reservation made before it.
        return OrgToken(record.id, record.id, record.name, record.provider, record.version,
                        self._service.reach(record), record.created_us, record.updated_us, False, relay=True)

    def reach(self, provider: str, refs: dict[str, Ref], own: Reach) -> Reach:
        ref = refs.get(provider)
        if ref is not None and ref.kind == ORGANIZATION:
            return self._service.reach(self._record(ref))
        # The member's own Luna key, with the org's tokens in the body: the org's Luna settings decide.
        return self.org_reach(provider)

    def stored_tokens(self, provider: str, refs: dict[str, Ref]) -> list[StoredToken]:
        """Every org token of the call (its own and those its Luna body gets), for a refusal's record."""
        return [StoredToken(ORGANIZATION, r.id, r.name, r.provider)
                for r in (self._record(ref) for ref in refs.values() if ref.kind == ORGANIZATION and ref.id)]

    def _stored(self, field: str, provider: str, ref: Ref) -> Resolved:
        if ref.kind != ORGANIZATION or not ref.id:  # written in the body by the member, not vetted
            raise InvalidArgumentError(
                f"qpu_tokens.{field} of a relayed Luna request names a stored token: the org server fills only the "
                "entries luna_qpu_tokens names, with relay tokens; every other entry comes inline")
        record, secret = self._opened(ref)
        if record.provider != provider:
            raise FailedPreconditionError(f"organization token {record.name!r} is a {record.provider} token, not {provider}")
        if secret is None:
            raise FailedPreconditionError(f"organization token {record.name!r} does not open on the server: ask an org admin")
        if (opened := CALL.get().opened) is not None:
            opened.append((record.provider, secret))
        return Resolved(field, provider, ORGANIZATION, record.id, record.name, secret,
                        f"relay:{record.id}:{record.version}", org_token=self._token(record))

    async def reserve(self, resolved: list[Resolved]) -> dict[str, str]:
        """Nothing reserved ahead: a relayed use is counted with its record (ServerRecords), and this
        server reads a relayed answer's QPU time itself."""
        return {}

    def org_reach(self, provider: str) -> Reach:
        return self._service.org_reach().get(provider, Reach(owner=Owner.ORG))


class ServerRecords:
    """The usage record of relayed calls, written by the server itself (as a member's daemon
    writes its own queue): before the request leaves (a forward begun, a signature), the member's
    quotas checking and counting the use in the same transaction; finished with the answer. Each
    write is committed (in a group with other calls' writes: record_writer.py) before it returns:
    before the answer goes back, so an answer a member got is never recorded as anything else, a
    server killed at any moment included (a finish left until after the answer was tried, and
    measured, and left: docs/performance.md, the fifth pass)."""

    def __init__(self, service: OrgService, writer: RecordWriter) -> None:
        self._service = service
        self._writer = writer

    async def _store(self, use: UsageRecord, outcome: str, status: int, counted: bool) -> str:
        record = dataclasses.replace(use, id=new_id(), member=CALL.get().member.name, outcome=outcome, status=status,
                                     at_us=self._service.now_us())
        refused = await self._writer.write(self._service.record_job(record, counted))
        self._service.usage_stored()
        if refused is not None:
            raise refused
        return record.id

    async def begin(self, use: UsageRecord, outcome: str) -> str:
        return await self._store(use, outcome, 0, counted=True)

    async def finish(self, record_id: str, status: int, outcome: str, answer_bytes: int = UNKNOWN_SIZE,
                     qpu_us: int = 0) -> None:
        await self._writer.write(self._service.finish_job(record_id, status, outcome, answer_bytes, qpu_us))
        self._service.usage_stored()

    async def add(self, use: UsageRecord, outcome: str, status: int = 0) -> None:
        """A use over as it happens: a signature (counted), or a refusal (not)."""
        await self._store(use, outcome, status, counted=outcome == SIGNED)


class Relay:
    def __init__(self, service: OrgService, writer: RecordWriter) -> None:
        self._service = service
        # Every token here is the org's: a custom provider's scheme is the org's definition, as it is now.
        schemes = Schemes(org=service.custom_providers)
        # Each forward's log line at debug: the usage record holds every relayed call already.
        self._forwarder = Forwarder(Config(), schemes, RelayResolver(service), ExchangeCache(),
                                    UseRecords(ServerRecords(service, writer), lambda entry: None),
                                    timeout_max=RELAY_TIMEOUT_MAX, call_log_level=logging.DEBUG)
        # A relayed call holds its body and answer in memory (up to 16 MiB each, and a scrubbed
        # copy): calls in flight are bounded per member, and for the server as a whole.
        self._all = asyncio.Semaphore(RELAY_IN_FLIGHT)
        self._in_flight: dict[str, int] = {}

    def _relay_opened(self, user: User, token_id: str) -> tuple[OrgTokenRecord, Secret | None]:
        """A relay token of the call, read once, its secret opened: one the member may not see is
        NOT_FOUND, as a missing one; an expired one is refused."""
        record, secret = self._service.usable_opened(user, token_id)
        if not record.relay:
            raise FailedPreconditionError(f"organization token {record.name!r} is not a relay token: your daemon "
                                          "uses it itself")
        return record, secret

    @contextlib.asynccontextmanager
    async def _slot(self, member: str) -> AsyncIterator[None]:
        if self._in_flight.get(member, 0) >= RELAY_IN_FLIGHT_PER_MEMBER:
            raise ResourceExhaustedError(f"{member!r} has {RELAY_IN_FLIGHT_PER_MEMBER} relayed calls in flight already, "
                                         "the most the org server takes from one member: wait for one to finish")
        self._in_flight[member] = self._in_flight.get(member, 0) + 1
        try:
            async with self._all:
                yield
        finally:
            self._in_flight[member] -= 1
            if not self._in_flight[member]:
                del self._in_flight[member]

    async def forward(self, user: User, token_id: str, call: ForwardCall, body: bytes,
                      luna_fills: dict[str, str] | None = None, own_key: Secret | None = None) -> tuple[Reply, bytes]:
        """The provider's answer (its head, and its body read whole), the tokens' secrets taken out.
        A Luna call may also have entries of its body's qpu_tokens filled with relay tokens
        (`luna_fills`: field -> token id), and may carry the member's own Luna key instead of a
        relay one (`own_key`, used for this call only)."""
        async with self._slot(user.name):
            return await self._forward(user, token_id, call, body, luna_fills or {}, own_key)

    def _refs(self, user: User, token_id: str, call: ForwardCall, luna_fills: dict[str, str],
              own_key: Secret | None) -> tuple[dict[str, Ref], RelayCall]:
        """The call's tokens as the forwarder reads them, and the relay tokens among them, each read
        once (each one the member may use: NOT_FOUND otherwise, as for a missing one)."""
        if (luna_fills or own_key is not None) and not traits(call.provider).fills_body_tokens:
            raise InvalidArgumentError("luna_qpu_tokens and luna_api_key are for Luna requests only")
        if bool(token_id) == (own_key is not None):
            raise InvalidArgumentError("a relayed call names its relay token (token_id) or, for Luna only, carries "
                                       "the member's own Luna key (luna_api_key): one of the two")
        for field in luna_fills:
            if traits(check_provider(field)).fills_body_tokens:
                raise InvalidArgumentError("luna_qpu_tokens fills the qpu_tokens of other providers, not luna")
        own = self._relay_opened(user, token_id) if token_id else None
        fills = {field: self._relay_opened(user, tid) for field, tid in luna_fills.items()}
        key = Ref(ORGANIZATION, id=own[0].id) if own is not None else Ref(INLINE, secret=own_key)
        refs = {call.provider: key, **{field: Ref(ORGANIZATION, id=r.id) for field, (r, _) in fills.items()}}
        tokens = {opened[0].id: opened for opened in (own, *fills.values()) if opened is not None}
        return refs, RelayCall(user, tokens, [])

    async def _forward(self, user: User, token_id: str, call: ForwardCall, body: bytes, luna_fills: dict[str, str],
                       own_key: Secret | None) -> tuple[Reply, bytes]:
        refs, relayed = self._refs(user, token_id, call, luna_fills, own_key)
        # Read whole to take the secrets out, so ask for it uncompressed.
        headers = [(k, v) for k, v in call.headers if k.lower() != "accept-encoding"]
        call = dataclasses.replace(call, headers=headers, refs=refs)
        scope = CALL.set(relayed)
        try:
            async def chunks():
                if body:
                    yield body

            reply = await self._forwarder.forward(call, chunks())
            try:
                # What went out on the wire, and what the store holds now (rotated during the call).
                sent = relayed.opened + [(r.provider, secret) for r, _ in relayed.tokens.values()
                                         if (secret := self._service.open_secret(r)) is not None]
                forms = [form for provider, secret in sent
                         for form in traits(provider).secret_forms(secret.reveal().decode())]
                scrubbed_reply = await scrubbed(reply, forms, call.url)
                whole = await read_whole(scrubbed_reply.body, RELAY_BODY_MAX)
                if whole is None:
                    raise ResourceExhaustedError(f"the answer is over {RELAY_BODY_MAX} bytes: too large for a relay "
                                                 "token's hop")
                return scrubbed_reply, whole
            finally:
                # Closed here, in this call: a D-Wave answer's body finishes its record as it closes
                # (forwarder._timed), and one left half read (too large) would be closed by the
                # garbage collector, some time later and outside the call.
                await reply.body.aclose()
        finally:
            CALL.reset(scope)

    async def sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        async with self._slot(user.name):
            return await self._sign(user, token_id, call)

    async def _sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        record, secret = self._relay_opened(user, token_id)
        if secret is not None and traits(record.provider).signature_hands_over(secret.reveal()):
            # SigV4 has the client send the session token itself: a relay keeps it, so only Forward.
            raise FailedPreconditionError(
                f"organization token {record.name!r} is a relay AWS credential with a session token, which a "
                "signature would hand to you (the request carries it): send the request with Forward instead")
        call = dataclasses.replace(call, refs={record.provider: Ref(ORGANIZATION, id=record.id)},
                                   provider=call.provider or record.provider)
        scope = CALL.set(RelayCall(user, {record.id: (record, secret)}, None))
        try:
            return await self._forwarder.sign(call)
        finally:
            CALL.reset(scope)

    async def close(self) -> None:
        await self._forwarder.close()
