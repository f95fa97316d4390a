"""gRPC servicer for Forward, Sign and Resolve: proto in, domain call, proto out."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from qpu_broker_client.broker import SMALL_BODY_MAX
from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.proto.qpubroker.v1 import (
    requests_pb2,
    requests_pb2_grpc,
    tokens_pb2,
)
from qpu_broker_client.providers import TOKEN_FIELDS, check_provider
from qpu_broker_client.secret import Secret

from qpu_broker.forward.forwarder import ForwardCall, Forwarder, SignCall
from qpu_broker.tokens.resolution import Ref, Resolver
from qpu_broker.wire.proto_values import KIND_FROM_PROTO, KIND_TO_PROTO, header_pairs
from qpu_broker.wire.unread_answers import UnreadAnswers

# Answer bytes in a ForwardSmallResponse: under grpc's default 4 MiB receive limit,
# with room left for the status and headers.
SMALL_ANSWER_MAX = 3 * 1024 * 1024


def refs_from_proto(tokens: requests_pb2.TokenProvider) -> dict[str, Ref]:
    """Each field given, by its name; a custom provider's by the provider's name."""
    given = [(f, getattr(tokens, f)) for f in TOKEN_FIELDS if tokens.HasField(f)]
    for name, msg in tokens.custom.items():
        if check_provider(name) != name or name in TOKEN_FIELDS:
            raise InvalidArgumentError(f"custom token field {name[:40]!r} is not a custom provider's name")
        given.append((name, msg))
    return {field: _ref(field, msg) for field, msg in given}


def _ref(field: str, msg: requests_pb2.TokenRef) -> Ref:
    kind = KIND_FROM_PROTO.get(msg.kind)
    if kind is None:
        raise InvalidArgumentError(f"unknown token kind {msg.kind} for {field}")
    if msg.kind == tokens_pb2.TOKEN_KIND_UNSPECIFIED and msg.secret:
        kind = "inline"
    if kind == "inline":
        return Ref(kind, secret=Secret(msg.secret))
    if msg.id or msg.name:
        return Ref(kind, id=msg.id, name=msg.name)
    raise InvalidArgumentError(f"the {kind} token for {field} needs an id or a name")


def _call(h: requests_pb2.ForwardHead) -> ForwardCall:
    return ForwardCall(check_provider(h.provider), h.method or "GET", h.url, header_pairs(h.headers), refs_from_proto(h.tokens),
                       h.timeout_seconds, h.region, h.service)


def _reply_head(reply) -> requests_pb2.ForwardResponseHead:
    return requests_pb2.ForwardResponseHead(status=reply.status, http_version=reply.http_version,
                                            headers=[requests_pb2.Header(name=k, value=v) for k, v in reply.headers])


class RequestServicer(requests_pb2_grpc.RequestServiceServicer):
    def __init__(self, forwarder: Forwarder, resolver: Resolver) -> None:
        self._forwarder = forwarder
        self._resolver = resolver
        self._rest = UnreadAnswers()

    async def Forward(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("head"):
            raise InvalidArgumentError("a Forward stream starts with its head (method, url, provider)")

        async def body() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                if msg.HasField("head"):
                    raise InvalidArgumentError("a Forward stream has one head, then body chunks")
                yield msg.body_chunk

        reply = await self._forwarder.forward(_call(first.head), body())
        yield requests_pb2.ForwardResponse(head=_reply_head(reply))
        async for chunk in reply.body:
            yield requests_pb2.ForwardResponse(body_chunk=chunk)

    async def ForwardSmall(self, request, context):
        if len(request.body) > SMALL_BODY_MAX:
            raise InvalidArgumentError(f"ForwardSmall takes bodies up to {SMALL_BODY_MAX} bytes: stream larger ones with Forward")

        async def body() -> AsyncIterator[bytes]:
            if request.body:
                yield request.body

        reply = await self._forwarder.forward(_call(request.head), body())
        first, continuation = await self._rest.take(reply.body, SMALL_ANSWER_MAX)
        return requests_pb2.ForwardSmallResponse(head=_reply_head(reply), body=first, continuation=continuation)

    async def ForwardRest(self, request, context):
        async for chunk in self._rest.pop(request.continuation):
            yield requests_pb2.ForwardResponse(body_chunk=chunk)

    async def Sign(self, request, context):
        added = await self._forwarder.sign(SignCall(
            request.provider, request.method, request.url, header_pairs(request.headers),
            hashlib.sha256(request.body).hexdigest(), refs_from_proto(request.tokens), request.region, request.service,
            len(request.body)))
        return requests_pb2.SignResponse(headers=[requests_pb2.Header(name=k, value=v) for k, v in added])

    async def Resolve(self, request, context):
        provider = check_provider(request.provider)
        field, kind, token_id, name = self._resolver.preview(provider, refs_from_proto(request.tokens))
        return requests_pb2.ResolveResponse(provider=provider, tokens=[requests_pb2.ResolvedToken(
            field=field, kind=KIND_TO_PROTO[kind], id=token_id, name=name)])
