"""TokenService: proto in, personal tokens or org link call, proto out."""

from __future__ import annotations

from qpu_broker_client.errors import InvalidArgumentError, NotFoundError
from qpu_broker_client.proto.qpubroker.v1 import tokens_pb2, tokens_pb2_grpc
from qpu_broker_client.providers import check_provider
from qpu_broker_client.wire_messages import CACHED, MODE_TO_PROTO, RELAY

from qpu_broker.common.names import canonical_name
from qpu_broker.org.access import OrgAccess
from qpu_broker.org.admin import OrgTokenAdmin
from qpu_broker.store.db import TokenRecord
from qpu_broker.tokens.kinds import ORGANIZATION, PERSONAL
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.personal import PAGE_MAX, PersonalTokens
from qpu_broker.wire.proto_values import (
    KIND_FROM_PROTO,
    KIND_TO_PROTO,
    relay_mode,
    timestamp,
)


def _kind(value: int) -> str:
    try:
        return KIND_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgumentError(f"unknown token kind {value}: use personal or organization") from None


def token_to_proto(record: TokenRecord) -> tokens_pb2.Token:
    return tokens_pb2.Token(
        id=record.id, name=record.name, provider=record.provider, kind=KIND_TO_PROTO[record.kind],
        created_at=timestamp(record.created_us), updated_at=timestamp(record.updated_us),
        expires_at=timestamp(record.expires_us) if record.expires_us else None,
    )


def org_token_to_proto(token: OrgToken) -> tokens_pb2.Token:
    return tokens_pb2.Token(
        id=token.handle, name=token.name, provider=token.provider, kind=tokens_pb2.TOKEN_KIND_ORGANIZATION,
        created_at=timestamp(token.created_us), updated_at=timestamp(token.updated_us),
        expires_at=timestamp(token.expires_us) if token.expires_us else None,
        mode=MODE_TO_PROTO[RELAY if token.relay else CACHED],
    )


class TokenServicer(tokens_pb2_grpc.TokenServiceServicer):
    """Personal tokens go to the store's PersonalTokens; organization tokens are listed from the org's
    copy and changed through the org server (OrgTokenAdmin)."""

    def __init__(self, personal: PersonalTokens, org: OrgAccess, org_admin: OrgTokenAdmin) -> None:
        self._personal = personal
        self._org = org
        self._org_admin = org_admin

    def _find(self, selector: tokens_pb2.TokenSelector) -> TokenRecord:
        which = selector.WhichOneof("by")
        if which is None:
            raise InvalidArgumentError("name a token by id or by name")
        kind = _kind(selector.kind)
        try:
            return self._personal.find(kind, token_id=selector.id, name=selector.name)
        except NotFoundError as exc:
            if kind == PERSONAL and self._is_org_token(selector):  # personal is every caller's default
                raise NotFoundError(f"{exc}; it is an organization token: add --type organization "
                                    "(in Python, token_type='organization')") from None
            raise

    def _is_org_token(self, selector: tokens_pb2.TokenSelector) -> bool:
        name = canonical_name(selector.name) if selector.name else ""
        return any(t.handle == selector.id if selector.id else t.name == name for t in self._org.tokens())

    async def CreateToken(self, request, context):
        if _kind(request.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org_admin.create(request.name, check_provider(request.provider),
                                                             request.secret, relay_mode(request.relay, request.cached),
                                                             request.expires_in_seconds))
        if request.relay or request.cached:
            raise InvalidArgumentError("relay and cached are modes of organization tokens: a personal token is "
                                       "always in your own store")
        record = await self._personal.create(_kind(request.kind), request.name, request.provider,
                                          request.secret, request.request_id, request.expires_in_seconds)
        return token_to_proto(record)

    async def GetToken(self, request, context):
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org_admin.get(sel.id, sel.name))
        return token_to_proto(self._find(sel))

    async def ListTokens(self, request, context):
        response = tokens_pb2.ListTokensResponse()
        kinds = (PERSONAL, ORGANIZATION) if request.kind == tokens_pb2.TOKEN_KIND_UNSPECIFIED else (_kind(request.kind),)
        if PERSONAL in kinds:
            records, response.personal_total = self._personal.list(request.provider, request.limit, request.offset)
            response.personal.extend(token_to_proto(r) for r in records)
        if ORGANIZATION in kinds:
            org = self._org.tokens(check_provider(request.provider) if request.provider else "")
            end = request.offset + (request.limit or PAGE_MAX)
            response.organization.extend(org_token_to_proto(t) for t in org[request.offset:end])
            response.organization_total = len(org)
        return response

    async def UpdateToken(self, request, context):
        name = request.name if request.HasField("name") else None
        secret = request.secret if request.HasField("secret") else None
        expires_in = request.expires_in_seconds if request.HasField("expires_in_seconds") else None
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org_admin.update(sel.id, sel.name, name, secret, expires_in))
        return token_to_proto(await self._personal.update(self._find(sel), name=name, secret=secret,
                                                       expires_in=expires_in))

    async def DeleteToken(self, request, context):
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            await self._org_admin.delete(sel.id, sel.name)
        else:
            await self._personal.delete(self._find(sel))
        return tokens_pb2.DeleteTokenResponse()

    async def SetDefaultToken(self, request, context):
        if request.HasField("token") and request.clear_provider:
            raise InvalidArgumentError("name a token to make it the default, or a provider to clear: not both")
        if request.HasField("token"):
            if _kind(request.token.kind) == ORGANIZATION:
                raise InvalidArgumentError("a default is one of your personal tokens: name an organization token "
                                           "for a session with --org-token PROVIDER=NAME")
            record = self._find(request.token)
            await self._personal.set_default(record.provider, record)
        elif request.clear_provider:
            await self._personal.set_default(check_provider(request.clear_provider), None)
        names = {}
        for provider, token_id in self._personal.defaults().items():
            try:
                names[provider] = self._personal.find(PERSONAL, token_id=token_id).name
            except NotFoundError:
                continue  # deleted since: no default
        return tokens_pb2.SetDefaultTokenResponse(defaults=names)
