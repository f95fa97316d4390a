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

from qpu_broker_client.errors import FailedPreconditionError, ResourceExhaustedError
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import SIGNED, UNKNOWN_SIZE, UsageRecord

from qpu_broker.common.config import Config
from qpu_broker.common.org_limits import RELAY_BODY_MAX
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
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgTokenRecord, User
from qpu_broker.providers import all_schemes
from qpu_broker.providers.exchange_cache import ExchangeCache
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.resolution import Ref, Resolved, StoredToken
from qpu_broker.tokens.usage_queue import new_id
from qpu_broker.tokens.vault import ORGANIZATION

RELAY_IN_FLIGHT = 16  # relayed calls the server makes at once (more wait)
RELAY_IN_FLIGHT_PER_MEMBER = 4  # and one member's (more are refused)


@dataclasses.dataclass(frozen=True)
class RelayCall:
    """One relayed call: whose it is, and its token as read once at its start, secret opened
    (None: it does not open). Every step of the call uses these, not reads of its own."""

    member: User
    record: OrgTokenRecord
    secret: Secret | None


# Set by the relay for the length of one call (the forwarder it runs is shared).
CALL: contextvars.ContextVar[RelayCall] = contextvars.ContextVar("relay_call")


class RelayResolver:
    """The forwarder's view of one relay token, as the call at hand read it."""

    def __init__(self, service: OrgService) -> None:
        self._service = service

    def _record(self, refs: dict[str, Ref], provider: str) -> OrgTokenRecord:
        ref, record = refs.get(provider), CALL.get().record
        if ref is None or ref.kind != ORGANIZATION or ref.id != record.id:
            raise FailedPreconditionError(f"a relayed call names one relay token for {provider}")
        return record  # the relay checked the member may use it

    def _token(self, record: OrgTokenRecord) -> OrgToken:
        # Not metered here: the member's quotas count a relayed use in its record's own transaction
        # (ServerRecords), not in a reservation made before it.
        return OrgToken(record.id, record.id, record.name, record.provider, record.version,
                        self._service.reach(record), record.created_us, record.updated_us, False, relay=True)

    def reach(self, provider: str, refs: dict[str, Ref], own: Reach) -> Reach:
        return self._service.reach(self._record(refs, provider))

    def stored_token(self, provider: str, refs: dict[str, Ref]) -> StoredToken | None:
        record = self._record(refs, provider)
        return StoredToken(ORGANIZATION, record.id, record.name, record.provider)

    def resolve(self, provider: str, refs: dict[str, Ref]) -> Resolved:
        record = self._record(refs, provider)
        if record.provider != provider:
            raise FailedPreconditionError(f"organization token {record.name!r} is a {record.provider} token, not {provider}")
        secret = CALL.get().secret
        if secret is None:
            raise FailedPreconditionError(f"organization token {record.name!r} does not open on the server: ask an org admin")
        return Resolved(provider, provider, ORGANIZATION, record.id, record.name, secret,
                        f"relay:{record.id}:{record.version}", org_token=self._token(record))

    def resolve_all(self, refs: dict[str, Ref]) -> dict[str, Resolved]:
        raise FailedPreconditionError("tokens inside a Luna body (qpu_tokens) cannot go through a relay token's hop: "
                                      "send them inline in the body's own call, or use a cached Luna token")

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
    write is committed (in a group with other calls' writes: record_writer.py) before it returns."""

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


def _forms(provider: str, secret: Secret) -> list[str]:
    """What of a secret might come back in an answer: the whole, and an AWS set's secret parts
    (stored as canonical JSON; its access key id is no secret)."""
    text = secret.reveal().decode()
    if provider != "aws":
        return [text]
    doc = json.loads(text)
    return [text, *(doc[k] for k in ("secret_access_key", "session_token") if doc.get(k))]


class Relay:
    def __init__(self, service: OrgService, writer: RecordWriter) -> None:
        self._service = service
        schemes = all_schemes()
        self._forwarder = Forwarder(Config(), schemes, RelayResolver(service), ExchangeCache(),
                                    UseRecords(ServerRecords(service, writer), lambda entry: None))
        # A relayed call holds its body and answer in memory (up to 16 MiB each, and a scrubbed
        # copy): calls in flight are bounded per member, and for the server as a whole.
        self._all = asyncio.Semaphore(RELAY_IN_FLIGHT)
        self._in_flight: dict[str, int] = {}

    def _call(self, user: User, token_id: str) -> RelayCall:
        """The call's token, read once: one the member may not see is NOT_FOUND, as a missing one."""
        record, secret = self._service.usable_opened(user, token_id)
        if not record.relay:
            raise FailedPreconditionError(f"organization token {record.name!r} is not a relay token: your daemon "
                                          "uses it itself")
        return RelayCall(user, record, secret)

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

    async def forward(self, user: User, token_id: str, call: ForwardCall, body: bytes) -> tuple[Reply, bytes]:
        """The provider's answer (its head, and its body read whole), the token's secret taken out."""
        async with self._slot(user.name):
            return await self._forward(user, token_id, call, body)

    async def _forward(self, user: User, token_id: str, call: ForwardCall, body: bytes) -> tuple[Reply, bytes]:
        relayed = self._call(user, token_id)
        record = relayed.record
        # Read whole to take the secret out, so ask for it uncompressed.
        headers = [(k, v) for k, v in call.headers if k.lower() != "accept-encoding"]
        call = dataclasses.replace(call, headers=headers, refs={call.provider: Ref(ORGANIZATION, id=record.id)})
        scope = CALL.set(relayed)
        try:
            async def chunks():
                if body:
                    yield body

            reply = await self._forwarder.forward(call, chunks())
            forms = _forms(record.provider, relayed.secret) if relayed.secret is not None else []
            reply = await scrubbed(reply, forms, call.url)
            whole = await read_whole(reply.body, RELAY_BODY_MAX)
            if whole is None:
                raise ResourceExhaustedError(f"the answer is over {RELAY_BODY_MAX} bytes: too large for a relay token's hop")
            return reply, whole
        finally:
            CALL.reset(scope)

    async def sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        async with self._slot(user.name):
            return await self._sign(user, token_id, call)

    async def _sign(self, user: User, token_id: str, call: SignCall) -> list[tuple[str, str]]:
        relayed = self._call(user, token_id)
        record, secret = relayed.record, relayed.secret
        if secret is not None and record.provider == "aws" and json.loads(secret.reveal()).get("session_token"):
            # SigV4 has the client send the session token itself: a relay keeps it, so only Forward.
            raise FailedPreconditionError(
                f"organization token {record.name!r} is a relay AWS credential with a session token, which a "
                "signature would hand to you (the request carries it): send the request with Forward instead")
        call = dataclasses.replace(call, refs={record.provider: Ref(ORGANIZATION, id=record.id)},
                                   provider=call.provider or record.provider)
        scope = CALL.set(relayed)
        try:
            return await self._forwarder.sign(call)
        finally:
            CALL.reset(scope)

    async def close(self) -> None:
        await self._forwarder.close()
