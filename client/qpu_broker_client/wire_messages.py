"""Client-side values as request messages: TokenProvider, headers, streamed bodies."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .luna_env import merged_fields
from .proto.qpubroker.v1 import requests_pb2, tokens_pb2
from .providers import TOKEN_FIELDS
from .tokens import QpuTokenType, TokenProvider

KIND_TO_PROTO = {
    QpuTokenType.PERSONAL: tokens_pb2.TOKEN_KIND_PERSONAL,
    QpuTokenType.ORGANIZATION: tokens_pb2.TOKEN_KIND_ORGANIZATION,
    QpuTokenType.INLINE: tokens_pb2.TOKEN_KIND_INLINE,
}
# An organization token's mode, as QpuToken.mode spells it.
RELAY, CACHED = "relay", "cached"
MODE_TO_PROTO = {RELAY: tokens_pb2.ORG_TOKEN_MODE_RELAY, CACHED: tokens_pb2.ORG_TOKEN_MODE_CACHED}
MODE_FROM_PROTO = {proto: mode for mode, proto in MODE_TO_PROTO.items()}
CHUNK = 1 << 20


def token_provider_proto(qpu_tokens: TokenProvider | None, environ: Mapping[str, str] | None = None) -> requests_pb2.TokenProvider:
    msg = requests_pb2.TokenProvider()
    for field, token in merged_fields(qpu_tokens, environ).items():
        ref = getattr(msg, field) if field in TOKEN_FIELDS else msg.custom[field]  # a custom provider's, by name
        ref.kind = KIND_TO_PROTO[token.source]
        if token.source is QpuTokenType.INLINE:
            ref.secret = token.token.reveal()
        elif token.id:
            ref.id = token.id
        else:
            ref.name = token.name or ""
    return msg


def header_list(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> list[requests_pb2.Header]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return [requests_pb2.Header(name=k, value=v) for k, v in items]


def forward_messages(head: requests_pb2.ForwardHead, body: bytes) -> Iterator[requests_pb2.ForwardRequest]:
    yield requests_pb2.ForwardRequest(head=head)
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        yield requests_pb2.ForwardRequest(body_chunk=bytes(view[start:start + CHUNK]))
