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
import json
from collections.abc import AsyncIterator

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import UNKNOWN_SIZE, UsageRecord

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
from qpu_broker.orgserver.quotas import is_metered
from qpu_broker.orgserver.service import SECRET_MAX, OrgService
from qpu_broker.orgserver.store import OrgTokenRecord, User
from qpu_broker.providers import all_schemes
from qpu_broker.providers.exchange_cache import ExchangeCache
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.resolution import Ref, RefResolver, Resolved, StoredToken
from qpu_broker.tokens.usage_queue import new_id
from qpu_broker.tokens.vault import INLINE, ORGANIZATION

RELAY_IN_FLIGHT = 16  # relayed calls the server makes at once (more wait)
RELAY_IN_FLIGHT_PER_MEMBER = 4  # and one member's (more are refused)
# Whose call this is: set by the relay for the length of one call (the forwarder it runs is shared).
MEMBER: contextvars.ContextVar[User] = contextvars.ContextVar("relay_member")
# The secrets this call opened (provider, secret), as they went out: an answer is scrubbed of
# these, not of what the store holds when it comes back (an admin may rotate a token meanwhile).
OPENED: contextvars.ContextVar[list[tuple[str, Secret]]] = contextvars.ContextVar("relay_opened")



class RelayResolver(RefResolver):
    """The forwarder's view of a relayed call's tokens, opened from the org's store: the call's own
    relay token (or, for Luna, the member's own key, inline), and the relay tokens of a Luna
    body's qpu_tokens. Every org token here was checked by the relay first (the member may use it,
    and it is a relay token); a Luna body that names any other stored token is refused."""

    def __init__(self, service: OrgService) -> None:
        super().__init__(SECRET_MAX)
        self._service = service

    def _record(self, ref: Ref) -> OrgTokenRecord:
        return self._service.find(token_id=ref.id)

    def _token(self, record: OrgTokenRecord) -> OrgToken:
        metered = is_metered(self._service.metered_ids(MEMBER.get().name), record.id)
        return OrgToken(record.id, record.id, record.name, record.provider, record.version,
                        self._service.reach(record), record.created_us, record.updated_us, metered, relay=True)

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
        record = self._record(ref)
        if record.provider != provider:
            raise FailedPreconditionError(f"organization token {record.name!r} is a {record.provider} token, not {provider}")
        secret = self._service.open_secret(record)
        if secret is None:
            raise FailedPreconditionError(f"organization token {record.name!r} does not open on the server: ask an org admin")
        if (opened := OPENED.get(None)) is not None:  # a forwarded call's (a signature has no answer to scrub)
            opened.append((record.provider, secret))
        return Resolved(field, provider, ORGANIZATION, record.id, record.name, secret,
                        f"relay:{record.id}:{record.version}", org_token=self._token(record))

    async def reserve(self, resolved: list[Resolved]) -> dict[str, str]:
        """No reservation to name: this server reads a relayed answer's QPU time itself."""
        for r in resolved:
            if r.org_token is not None and r.org_token.metered:
                self._service.reserve(MEMBER.get(), r.id)
        return {}

    def org_reach(self, provider: str) -> Reach:
        return self._service.org_reach().get(provider, Reach(owner=Owner.ORG))


class ServerRecords:
    """The usage record of relayed calls, written by the server itself (as a member's daemon
    writes its own queue): before the request leaves, finished with the answer."""

    def __init__(self, service: OrgService) -> None:
        self._service = service

    def begin(self, use: UsageRecord, outcome: str) -> str:
        record = dataclasses.replace(use, id=new_id(), member=MEMBER.get().name, outcome=outcome, at_us=self._service.now_us())
        self._service.record_use(record)
        return record.id

    def finish(self, record_id: str, status: int, outcome: str, answer_bytes: int = UNKNOWN_SIZE, qpu_us: int = 0) -> None:
        self._service.finish_use(record_id, status, outcome, answer_bytes, qpu_us)

    def add(self, use: UsageRecord, outcome: str, status: int = 0) -> None:
        self._service.record_use(dataclasses.replace(use, id=new_id(), member=MEMBER.get().name, outcome=outcome,
                                                     status=status, at_us=self._service.now_us()))


def _forms(provider: str, secret: Secret) -> list[str]:
    """What of a secret might come back in an answer: the whole, and an AWS set's secret parts
    (stored as canonical JSON; its access key id is no secret)."""
    text = secret.reveal().decode()
    if provider != "aws":
        return [text]
    doc = json.loads(text)
    return [text, *(doc[k] for k in ("secret_access_key", "session_token") if doc.get(k))]


class Relay:
    def __init__(self, service: OrgService) -> None:
        self._service = service
        schemes = all_schemes()
        self._forwarder = Forwarder(Config(), schemes, RelayResolver(service), ExchangeCache(),
                                    UseRecords(ServerRecords(service), lambda entry: None), timeout_max=RELAY_TIMEOUT_MAX)
        # A relayed call holds its body and answer in memory (up to 16 MiB each, and a scrubbed
        # copy): calls in flight are bounded per member, and for the server as a whole.
        self._all = asyncio.Semaphore(RELAY_IN_FLIGHT)
        self._in_flight: dict[str, int] = {}

    def _relay_record(self, user: User, token_id: str) -> OrgTokenRecord:
        record = self._service.usable(user, token_id)  # one the member may not see: NOT_FOUND, as a missing one
        if not record.relay:
            raise FailedPreconditionError(f"organization token {record.name!r} is not a relay token: your daemon "
                                          "uses it itself")
        return record

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
              own_key: Secret | None) -> tuple[dict[str, Ref], list[OrgTokenRecord]]:
        """The call's tokens as the forwarder reads them, and the relay tokens among them (each one
        the member may use: NOT_FOUND otherwise, as for a missing one)."""
        if (luna_fills or own_key is not None) and call.provider != "luna":
            raise InvalidArgumentError("luna_qpu_tokens and luna_api_key are for Luna requests only")
        if bool(token_id) == (own_key is not None):
            raise InvalidArgumentError("a relayed call names its relay token (token_id) or, for Luna only, carries "
                                       "the member's own Luna key (luna_api_key): one of the two")
        for field in luna_fills:
            if check_provider(field) == "luna":
                raise InvalidArgumentError("luna_qpu_tokens fills the qpu_tokens of other providers, not luna")
        own = self._relay_record(user, token_id) if token_id else None
        fills = {field: self._relay_record(user, tid) for field, tid in luna_fills.items()}
        key = Ref(ORGANIZATION, id=own.id) if own is not None else Ref(INLINE, secret=own_key)
        refs = {call.provider: key, **{field: Ref(ORGANIZATION, id=r.id) for field, r in fills.items()}}
        return refs, [r for r in (own, *fills.values()) if r is not None]

    async def _forward(self, user: User, token_id: str, call: ForwardCall, body: bytes, luna_fills: dict[str, str],
                       own_key: Secret | None) -> tuple[Reply, bytes]:
        refs, records = self._refs(user, token_id, call, luna_fills, own_key)
        # Read whole to take the secrets out, so ask for it uncompressed.
        headers = [(k, v) for k, v in call.headers if k.lower() != "accept-encoding"]
        call = dataclasses.replace(call, headers=headers, refs=refs)
        scope, opened = MEMBER.set(user), OPENED.set([])
        try:
            async def chunks():
                if body:
                    yield body

            reply = await self._forwarder.forward(call, chunks())
            # What went out on the wire, and what the store holds now (rotated during the call).
            sent = OPENED.get() + [(r.provider, secret) for r in records
                                   if (secret := self._service.open_secret(r)) is not None]
            forms = [form for provider, secret in sent for form in _forms(provider, secret)]
            reply = await scrubbed(reply, forms, call.url)
            whole = await read_whole(reply.body, RELAY_BODY_MAX)
            if whole is None:
                raise ResourceExhaustedError(f"the answer is over {RELAY_BODY_MAX} bytes: too large for a relay token's hop")
            return reply, whole
        finally:
            OPENED.reset(opened)
            MEMBER.reset(scope)

    async def sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        async with self._slot(user.name):
            return await self._sign(user, token_id, call)

    async def _sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        record = self._relay_record(user, token_id)
        secret = self._service.open_secret(record)
        if secret is not None and record.provider == "aws" and json.loads(secret.reveal()).get("session_token"):
            # SigV4 has the client send the session token itself: a relay keeps it, so only Forward.
            raise FailedPreconditionError(
                f"organization token {record.name!r} is a relay AWS credential with a session token, which a "
                "signature would hand to you (the request carries it): send the request with Forward instead")
        call = dataclasses.replace(call, refs={record.provider: Ref(ORGANIZATION, id=record.id)},
                                   provider=call.provider or record.provider)
        scope = MEMBER.set(user)
        try:
            return await self._forwarder.sign(call)
        finally:
            MEMBER.reset(scope)

    async def close(self) -> None:
        await self._forwarder.close()
