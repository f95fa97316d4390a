"""Using tokens on hardware from Python: TokenProvider on the wire, forward replies.

The calling process's LUNA_* variables fill the TokenProvider fields it leaves
empty (an explicit field wins), as the Luna SDK 1.x does; they travel to the
daemon as inline tokens, which it never stores or logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from .errors import InvalidArgumentError
from .proto import requests_pb2, tokens_pb2
from .providers import LUNA_AWS_ENV, LUNA_ENV
from .tokens import QpuToken, QpuTokenType, TokenProvider

KIND_TO_PROTO = {
    QpuTokenType.PERSONAL: tokens_pb2.TOKEN_KIND_PERSONAL,
    QpuTokenType.ORGANIZATION: tokens_pb2.TOKEN_KIND_ORGANIZATION,
    QpuTokenType.INLINE: tokens_pb2.TOKEN_KIND_INLINE,
}
CHUNK = 1 << 20


def merged_fields(qpu_tokens: TokenProvider | None, environ: Mapping[str, str] | None = None) -> dict[str, QpuToken]:
    """Explicit fields, then each empty field from its environment variable."""
    env = os.environ if environ is None else environ
    fields = dict(qpu_tokens.items()) if qpu_tokens is not None else {}
    for field, var in LUNA_ENV.items():
        if field not in fields and env.get(var):
            fields[field] = QpuToken("inline", token=env[var])
    if not {"aws", "aws_access_key", "aws_secret_access_key"} & set(fields):
        present = {f: env[v] for f, v in LUNA_AWS_ENV.items() if env.get(v)}
        if present:
            for needed in ("aws_access_key", "aws_secret_access_key"):
                if needed not in present:
                    have = ", ".join(LUNA_AWS_ENV[f] for f in present)
                    raise InvalidArgumentError(f"{LUNA_AWS_ENV[needed]} is not set, but {have} is: AWS needs both halves")
            fields.update({f: QpuToken("inline", token=v) for f, v in present.items()})
    return fields


def token_provider_proto(qpu_tokens: TokenProvider | None, environ: Mapping[str, str] | None = None) -> requests_pb2.TokenProvider:
    msg = requests_pb2.TokenProvider()
    for field, token in merged_fields(qpu_tokens, environ).items():
        ref = getattr(msg, field)
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


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive; repeated names joined with ", "."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> str:
        values = [v for k, v in self._items if k.lower() == name.lower()]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for k, _ in self._items:
            seen.setdefault(k.lower())
        return iter(seen)

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._items})

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class ForwardResponse:
    """What the provider answered: status, headers and body, exactly as sent."""

    def __init__(self, status_code: int, headers: list[tuple[str, str]], content: bytes, http_version: str) -> None:
        self.status_code = status_code
        self.headers = Headers(headers)
        self.content = content
        self.http_version = http_version

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        import json

        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<ForwardResponse [{self.status_code}]>"
