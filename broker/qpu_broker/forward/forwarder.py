"""Forward and Sign as domain operations: parse the URL once, check the destination,
swap in the provider's auth (or sign), send, stream back.

Uses aiohttp (one pooled keep-alive session per provider, its own CA set, no
redirects followed, no proxies from the environment, no decompression, and no
headers the caller did not send). Domain code: no grpc here. aiohttp is imported
on first use, not at start-up, to keep start-to-ready short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol

from qpu_broker_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    QpuBrokerError,
    ResourceExhaustedError,
    UnavailableError,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import (
    ANSWERED,
    FAILED,
    INTERRUPTED,
    REFUSED_DESTINATION,
    REFUSED_QUOTA,
    SIGNED,
    UNKNOWN_SIZE,
)

from qpu_broker.common.config import (
    FORWARD_TIMEOUT_MAX,
    PRESIGN_KEY,
    PRESIGN_PROVIDER,
    Config,
)
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.common.url import Url, parse_url
from qpu_broker.forward.destinations import check_destination, host_belongs
from qpu_broker.forward.request_syntax import (
    check_body_sha256,
    check_headers,
    http_method,
)
from qpu_broker.forward.upstream_failures import unreachable
from qpu_broker.forward.use_records import CallShape, Pending, UseRecords
from qpu_broker.providers import Schemes, provider_of_field, traits
from qpu_broker.providers.base import (
    CLIENT_AUTH_HEADERS,
    HOP_BY_HOP,
    ExchangeScheme,
    Outbound,
    Scheme,
    SignScheme,
)
from qpu_broker.providers.exchange_cache import CachedExchange, ExchangeCache
from qpu_broker.tokens.kinds import INLINE, ORGANIZATION
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.resolution import (
    Ref,
    Resolved,
    Resolver,
    StoredToken,
    luna_qpu_tokens,
    refs_from_luna_body,
)

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


SCRUB_LIMIT = 16 << 20  # Luna answers to bodies with stored tokens are read whole to take out what they may echo
REDACTED = b"[redacted by qpu-broker]"


@dataclasses.dataclass(frozen=True)
class ForwardCall:
    provider: str
    method: str
    url: str
    headers: list[tuple[str, str]]
    refs: dict[str, Ref]
    timeout: float = 0.0
    region: str = ""
    service: str = ""
    # From an exec session: the caller is the session's command, which may use the session's
    # tokens only, and must never read one back (see _luna_body and scrubbed).
    session: bool = False
    # Luna hop of an exec session: placeholder -> (qpu_tokens field, the stored token it stands for).
    swaps: Mapping[str, tuple[str, Ref]] = dataclasses.field(default_factory=dict)
    # A proxy session's call: the official host the SDK asked for, which the URL's may stand in
    # for (`[providers.NAME.endpoints]`); the bearer rules are that host's.
    official_host: str = ""
    # An exec session's grant for this one call: the official host of the S3 bucket a Braket task
    # the session looked up wrote its results to (forward/session_results.py). Personal and inline
    # tokens only: an org token goes where the org allows, and nowhere a session vouches for.
    granted_host: str = ""
    # Who makes the call, for its record: an exec session's id and its command's name.
    session_id: str = ""
    command: str = ""


@dataclasses.dataclass(frozen=True)
class SignCall:
    provider: str  # empty: the provider whose hosts include the URL's (aws when none does)
    method: str
    url: str
    headers: list[tuple[str, str]]
    body_sha256: str
    refs: dict[str, Ref]
    region: str = ""
    service: str = ""
    body_bytes: int = UNKNOWN_SIZE


@dataclasses.dataclass(frozen=True)
class LunaFill:
    """What the org server adds to a Luna request whose body names relay org tokens: their
    secrets, in the body's qpu_tokens (field -> token); and the call's Luna key when that is not a
    relay token itself (the member's own, or a cached org token's: `own_key`, for this call only)."""

    relayed: Mapping[str, OrgToken]
    own_key: Secret | None = dataclasses.field(default=None, repr=False)


class RelayHop(Protocol):
    """Where a member's daemon sends calls with relay tokens: the org server (org/relay.py)."""

    async def relay_forward(self, token: OrgToken | None, call: ForwardCall, body: bytes,
                            luna: LunaFill | None = None) -> Reply: ...
    async def relay_sign(self, token: OrgToken, call: SignCall) -> list[tuple[str, str]]: ...


@dataclasses.dataclass(frozen=True)
class LunaBody:
    """A Luna request's body with its qpu_tokens filled by this side."""

    parts: list[bytes]
    size: int
    sha: str
    used: list[Resolved]  # the stored tokens whose secrets are now in it
    inserted: list[str]  # their values, to take out of the answer
    relayed: dict[str, OrgToken]  # fields left for the org server to fill (relay org tokens)


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    http_version: str
    body: AsyncIterator[bytes]


class Forwarder:
    def __init__(self, config: Config, schemes: Schemes, resolver: Resolver, cache: ExchangeCache,
                 records: UseRecords, relay: RelayHop | None = None, timeout_max: float = FORWARD_TIMEOUT_MAX,
                 call_log_level: int = logging.INFO) -> None:
        self._config = config
        self._call_log_level = call_log_level  # each forward's line
        self._timeout_max = timeout_max  # a call's own timeout_seconds, at most
        self._schemes = schemes
        self._signers = tuple(n for n in schemes.names() if schemes[n].signs)  # Sign's providers (AWS)
        self._resolver = resolver
        self._records = records  # every use of a stored token is recorded (org: for the org; personal: audit)
        self._relay = relay  # where calls with relay tokens go (the org server); None on the server itself
        self._cache = cache  # exchanged bearers, by token, token URL and the scheme's exchange terms
        self._clients: dict[tuple[Owner, bytes], aiohttp.ClientSession] = {}  # (owner, CA PEM) -> pool

    def _scheme(self, provider: str, refs: dict[str, Ref]) -> Scheme:
        """The scheme of the call's credential for `provider`: a custom provider's is its owner's
        definition (an org token's the org's, whatever this daemon's config says; providers.Schemes)."""
        provider = check_provider(provider)
        ref = refs.get(provider)
        org = ref is not None and ref.kind == ORGANIZATION
        scheme = self._schemes.get(provider, Owner.ORG if org else Owner.CONFIG)
        if scheme is None and org:
            raise FailedPreconditionError(
                f"the organization defines no provider {provider!r} (any more), so its {provider} tokens cannot be "
                f"used: ask an org admin (qpu-broker org-server provider define {provider})")
        if scheme is None:  # a custom name this daemon does not define: say how to
            self._config.known_provider(provider)
            raise InvalidArgumentError(f"[providers.custom.{provider}] was added after the daemon started: restart "
                                       "it (qpu-broker stop) to use it")
        return scheme

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: hosts, CAs, token URLs, limits and timeouts apply from the next call.
        Pools are per CA set, so a changed CA gets a fresh pool; an unchanged one keeps its connections."""
        self._config = config

    def _reach(self, provider: str, refs: dict[str, Ref]) -> Reach:
        """Where this call's credential may go: the org's settings for an org token, else our config."""
        return self._resolver.reach(provider, refs, self._config.provider(provider))

    def _provider_of(self, url: Url) -> str | None:
        """The provider whose official or configured hosts include the URL's host, if any."""
        # Signing schemes first (a signature is what Sign makes), then whoever else owns the host.
        for name in (*self._signers, *self._schemes.names()):
            if host_belongs(url, self._schemes[name], self._config.provider(name)):
                return name
        return None

    def _client(self, reach: Reach) -> aiohttp.ClientSession:
        """One pool per set of trusted CAs: a connection verified under a CA that our
        config trusts is never reused for an org token, whose CAs are the org's alone."""
        key = (reach.owner, reach.ca_pem)  # bytes hash once, cached by Python: nothing per call
        client = self._clients.get(key)
        if client is None:
            import aiohttp
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
            if reach.ca_pem:
                ctx.load_verify_locations(cadata=reach.ca_pem.decode("ascii", errors="replace"))
            client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=100, keepalive_timeout=60),
                trust_env=False, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._config.forward_timeout_seconds),
            )
            self._clients[key] = client
        return client

    async def _post_json(self, scheme: Scheme, reach: Reach, url: str, form: dict | None,
                         body: dict | None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        """An exchange call (IAM, Q-CTRL): the same reach, destination rules and pools as the forward."""
        import aiohttp

        dest = parse_url(url, f"the {scheme.provider} token URL")
        try:
            check_destination(dest, scheme, reach)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(f"the {scheme.provider} token URL {url} is refused: {exc}") from None
        # The pool sends no Content-Type of its own (skip_auto_headers): a token endpoint wants the form's
        # named (RFC 6749 4.4.2), so it is given here as the JSON one is.
        kwargs = {"data": urllib.parse.urlencode(form).encode(),
                  "headers": {"Content-Type": "application/x-www-form-urlencoded"}} if form is not None else {
            "data": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}
        kwargs["headers"] = {**kwargs["headers"], **(headers or {})}
        try:
            async with self._client(reach).post(
                    dest.for_aiohttp(), allow_redirects=False, timeout=aiohttp.ClientTimeout(total=self._config.forward_timeout_seconds),
                    **kwargs) as r:
                status, raw = r.status, await r.read()
        except TimeoutError:
            raise DeadlineExceededError(f"the {scheme.provider} token endpoint {dest.netloc} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise unreachable(f"the {scheme.provider} token endpoint {dest.netloc}", exc) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        return status, doc if isinstance(doc, dict) else {}

    async def _auth_headers(self, scheme: Scheme, resolved: Resolved, outbound: Outbound, reach: Reach,
                            region: str = "", service: str = "") -> list[tuple[str, str]]:
        if isinstance(scheme, SignScheme):
            return scheme.sign(resolved.secret, outbound, region, service, resolved.cache_key)
        if isinstance(scheme, ExchangeScheme):
            # The credential owner's endpoint: an org token never follows our config's token_url.
            token_url = reach.token_url or scheme.default_token_url
            bearer = await CachedExchange(scheme, self._cache).bearer(
                resolved.secret, lambda u, f, j, h=None: self._post_json(scheme, reach, u, f, j, h),
                token_url, resolved.cache_key)
            return [("Authorization", "Bearer " + bearer.reveal().decode())]
        return scheme.headers(resolved.secret)

    async def _read_body(self, chunks: AsyncIterator[bytes]) -> tuple[list[bytes], int, str]:
        parts, size, digest = [], 0, hashlib.sha256()
        limit = self._config.forward_max_body_bytes
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ResourceExhaustedError(
                    f"the request body is over the limit of {limit} bytes: raise forward.max_body_bytes if this is intended")
            parts.append(chunk)
            digest.update(chunk)
        return parts, size, digest.hexdigest()

    async def sign(self, call: SignCall) -> list[tuple[str, str]]:
        """The headers that sign `call` (SigV4), for a client that sends the request itself."""
        method = http_method(call.method or "GET")
        check_headers(call.headers)
        check_body_sha256(call.body_sha256)
        url = parse_url(call.url, "the URL to sign", verbatim=True)  # the client sends it, as it is
        provider = check_provider(call.provider) if call.provider else self._provider_of(url) or self._signers[0]
        scheme = self._scheme(provider, call.refs)
        if not isinstance(scheme, SignScheme):
            raise FailedPreconditionError(
                f"{provider} authenticates with a bearer or a header, so a signature would be the secret "
                "itself: use Forward to send the request through the daemon")
        reach = self._reach(provider, call.refs)
        lifetime = scheme.presign_seconds(url, call.headers)
        if lifetime is not None:  # checked here and, for a relay token, again on the org server
            _check_presign(lifetime, reach, self._config)
        relay = self._relay_token(provider, call.refs)
        if relay is not None:  # the org server signs: the secret never comes here
            return await self._relay.relay_sign(relay, dataclasses.replace(call, provider=provider))
        shape = CallShape("sign", method, url, call.body_bytes)
        try:
            check_destination(url, scheme, reach)
        except PermissionDeniedError:
            await self._record_refusal(provider, call.refs, shape)
            raise
        region, service = scheme.scope(url.host, call.region, call.service, reach.owner)
        resolved = self._resolver.resolve(provider, call.refs)
        headers = [(k, v) for k, v in call.headers if k.lower() not in CLIENT_AUTH_HEADERS]
        outbound = Outbound(method, url, tuple(headers), call.body_sha256)
        await self._reserve([resolved], shape)
        added = await self._auth_headers(scheme, resolved, outbound, reach, region, service)
        await self._records.over(_stored([resolved]), shape, SIGNED)
        return added

    async def forward(self, call: ForwardCall, body_chunks: AsyncIterator[bytes]) -> Reply:
        scheme = self._scheme(call.provider, call.refs)
        method = http_method(call.method)
        if method not in METHODS:
            raise InvalidArgumentError(f"unsupported HTTP method {call.method!r}: use one of {', '.join(sorted(METHODS))}")
        if not 0 <= call.timeout <= self._timeout_max:  # nan fails too; 0 is unset: the configured default
            raise InvalidArgumentError(f"timeout_seconds {call.timeout} is not a number of seconds from 0 (the default) "
                                       f"to {self._timeout_max}: give one in that range")
        check_headers(call.headers)
        url = parse_url(call.url, f"the URL for {call.provider}")
        relay = self._relay_token(call.provider, call.refs)
        if relay is not None and not scheme.fills_body_tokens:  # the org server sends it: rules, quota and record apply there
            parts, _, _ = await self._read_body(body_chunks)
            return await self._relay.relay_forward(relay, call, b"".join(parts))
        reach = self._reach(call.provider, call.refs)
        try:
            if not _granted(call, url, reach):
                check_destination(url, scheme, reach)
            _check_bearer_call(scheme, url, method, reach, call)
        except PermissionDeniedError:
            await self._record_refusal(call.provider, call.refs, CallShape("forward", method, url))
            raise
        if isinstance(scheme, SignScheme):  # the scope is checked before anything is counted or sent
            region, service = scheme.scope(url.host, call.region, call.service, reach.owner)
            call = dataclasses.replace(call, region=region, service=service)
        # A relay Luna key stays on the org server, which adds it on its hop (_luna_hop).
        resolved = None if relay is not None else self._resolver.resolve(call.provider, call.refs)
        parts, size, sha = await self._read_body(body_chunks)
        inserted: list[str] = []
        relayed: dict[str, OrgToken] = {}
        used = [resolved] if resolved is not None else []
        if scheme.fills_body_tokens:
            luna = self._luna_body(parts, call.refs, call.swaps, call.session)
            parts, size, sha, inserted, relayed = luna.parts, luna.size, luna.sha, luna.inserted, luna.relayed
            used += luna.used
            org_inside = _stored([r for r in luna.used if r.kind == ORGANIZATION]) + [
                StoredToken(ORGANIZATION, t.server_id, t.name, t.provider) for t in relayed.values()]
            if org_inside and reach.owner is not Owner.ORG:
                # Org secrets ride in this body: the org's own Luna settings decide where it may go.
                reach = self._resolver.org_reach(call.provider)
                try:
                    check_destination(url, scheme, reach)
                except PermissionDeniedError:
                    await self._records.over(org_inside, CallShape("forward", method, url, size), REFUSED_DESTINATION)
                    raise
        shape = CallShape("forward", method, url, size, call.session_id, call.command)
        reservations = await self._reserve(used, shape)
        # Written before anything leaves with an org secret (the exchange included), finished with the answer;
        # a process killed before that leaves it `interrupted`.
        pending = await self._records.begin(_stored(used), shape, INTERRUPTED, reservations)
        try:
            if resolved is None or relayed:
                return await self._luna_hop(call, relay, resolved, url, parts, relayed, inserted, pending)
            return await self._send(call, scheme, method, url, reach, resolved, parts, size, sha, inserted, pending)
        except BaseException as exc:
            await self._records.finish(pending, 0, FAILED, detail=_failure(exc))
            raise

    async def _luna_hop(self, call: ForwardCall, relay: OrgToken | None, resolved: Resolved | None, url: Url,
                        parts: list[bytes], relayed: dict[str, OrgToken], inserted: list[str],
                        pending: Pending) -> Reply:
        """A Luna request with relay org tokens (its key, or entries of its qpu_tokens) goes to Luna
        through the org server, which adds their secrets on its own hop: they never come here.
        What this daemon filled in goes with it, and is taken out of the answer here as in _send."""
        own_key = resolved.secret if resolved is not None else None
        reply = await self._relay.relay_forward(relay, call, b"".join(parts), LunaFill(relayed, own_key))
        await self._records.finish(pending, reply.status, ANSWERED, _content_length(reply.headers))
        # Stored secrets rode in this body (the server takes out its own): so is Luna's key taken out, when stored.
        if resolved is not None and resolved.kind != INLINE:
            inserted = [*inserted, resolved.secret.reveal().decode()]
        return await scrubbed(reply, inserted, url.netloc) if inserted else reply

    async def _send(self, call: ForwardCall, scheme: Scheme, method: str, url: Url, reach: Reach, resolved: Resolved,
                    parts: list[bytes], size: int, sha: str, inserted: list[str], pending: Pending) -> Reply:
        import aiohttp
        # Luna may echo a request back (a 422 names its input): stored secrets the daemon put in
        # the body are taken out of the answer, for every caller (a member never reads an org secret).
        scrub = bool(inserted)
        if scrub and resolved.kind != INLINE:
            inserted.append(resolved.secret.reveal().decode())  # Luna's own key, in its header: echoed by a 401
        # An org token's answer is read for its QPU time, where its provider reports one (D-Wave): the
        # org's usage record and quotas.
        timed = scheme.meters_qpu_time and resolved.org_token is not None
        # A reply to scrub or to time must come as plain bytes: ask for no compression.
        dropped = CLIENT_AUTH_HEADERS | scheme.client_headers | HOP_BY_HOP | (
            {"accept-encoding"} if scrub or timed else set())
        headers = [(k, v) for k, v in call.headers if k.lower() not in dropped]
        outbound = Outbound(method, url, tuple(headers), sha)
        headers += await self._auth_headers(scheme, resolved, outbound, reach, call.region, call.service)
        data = None
        if size:
            # Stream the chunks as received, with a length: no join, no chunked encoding.
            headers.append(("Content-Length", str(size)))

            async def body() -> AsyncIterator[bytes]:
                for part in parts:
                    yield part

            data = body()

        seconds = call.timeout or self._config.forward_timeout_seconds
        client = self._client(reach)
        try:
            response = await client.request(
                method, url.for_aiohttp(), headers=_multidict(headers), data=data, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds))
        except TimeoutError:
            raise DeadlineExceededError(f"{url.netloc} ({call.provider}) did not answer within {seconds} s") from None
        except aiohttp.ClientError as exc:
            raise unreachable(f"{url.netloc} ({call.provider})", exc) from None
        finally:
            parts = []
        log.log(self._call_log_level, "forward %s %s -> %d (%s token %s)", method, url.netloc, response.status,
                resolved.kind, resolved.id or "inline")
        reply_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        version = f"HTTP/{response.version.major}.{response.version.minor}" if response.version else "HTTP/1.1"
        if timed and content_encoding(reply_headers) == "identity":  # finished once read through, for its time
            return Reply(response.status, reply_headers, version,
                         self._timed(scheme, _stream(response, url.netloc), pending, response.status))
        if timed:  # compressed though not asked to be: its body is its caller's to decode (or refuse) unread
            log.warning("a %s answer (compressed) was not read for its QPU time: the usage record counts none",
                        scheme.provider)
        await self._records.finish(pending, response.status, ANSWERED,
                             response.content_length if response.content_length is not None else UNKNOWN_SIZE)
        if scrub:
            return await scrubbed(Reply(response.status, reply_headers, version, _stream(response, url.netloc)),
                                   inserted, url.netloc)
        return Reply(response.status, reply_headers, version, _stream(response, url.netloc))

    async def _timed(self, scheme: Scheme, body: AsyncIterator[bytes], pending: Pending,
                     status: int) -> AsyncIterator[bytes]:
        """The answer as it streams to the caller, kept (up to the scheme's qpu_answer_max) to read its
        QPU time once it has been read through (or given up on)."""
        kept: list[bytes] | None = []
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                if kept is not None and size <= scheme.qpu_answer_max:
                    kept.append(chunk)
                else:
                    kept = None
                yield chunk
        finally:
            qpu_us = scheme.qpu_access_us(b"".join(kept)) if kept is not None else 0
            if kept is None:
                log.warning("a %s answer of %d bytes was not read for its QPU time: the usage record counts none",
                            scheme.provider, size)
            await self._records.finish(pending, status, ANSWERED, size, qpu_us)

    def _luna_body(self, parts: list[bytes], refs: dict[str, Ref], swaps: Mapping[str, tuple[str, Ref]],
                   session: bool) -> LunaBody:
        """The body with its qpu_tokens made inline, but for the entries of relay org tokens, which
        the org server fills (on the server itself, every entry is filled here)."""
        raw = b"".join(parts)
        try:
            doc = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            doc = None
        named = {k: v for k, v in refs.items() if not traits(k).fills_body_tokens}
        if not isinstance(doc, dict) or (not named and "qpu_tokens" not in doc):
            return LunaBody([raw], len(raw), hashlib.sha256(raw).hexdigest(), [], [], {})
        in_body, kept = refs_from_luna_body(doc)
        if session:  # a session's command uses the session's tokens, through their placeholders only
            for field, ref in in_body.items():
                if ref.kind != INLINE:
                    raise PermissionDeniedError(
                        f"qpu_tokens.{field} names a stored token: a session's command uses the session's tokens "
                        f"only, through their LUNA_* placeholders (choose them with --token PROVIDER=NAME)")
        merged = {**_swapped(in_body, swaps), **named}
        relayed = self._resolver.relay_fields(merged) if self._relay is not None else {}
        resolved = self._resolver.resolve_all({f: r for f, r in merged.items() if f not in relayed})
        # Entries the SDK wrote that are no token reference stay as they were.
        doc["qpu_tokens"] = {**kept, **luna_qpu_tokens(resolved)}
        out = json.dumps(doc).encode()
        stored = {p: r for p, r in resolved.items() if r.kind != INLINE}  # the caller never had these
        return LunaBody([out], len(out), hashlib.sha256(out).hexdigest(), list(stored.values()),
                        _token_values(luna_qpu_tokens(stored)), relayed)

    def _relay_token(self, provider: str, refs: dict[str, Ref]) -> OrgToken | None:
        return self._resolver.relay_token(provider, refs) if self._relay is not None else None

    async def _reserve(self, used: list[Resolved], shape: CallShape) -> dict[str, str]:
        """Quotas: a metered org token's use is counted by the org server first; a refusal is recorded.
        Returns the server's reservations, by token id (what the records name)."""
        try:
            return await self._resolver.reserve(used)
        except ResourceExhaustedError:
            await self._records.over([t for r in used if r.org_token and r.org_token.metered and (t := r.stored())],
                               shape, REFUSED_QUOTA)
            raise

    async def _record_refusal(self, provider: str, refs: dict[str, Ref], shape: CallShape) -> None:
        """A destination refused for a stored token is a use its records keep too (the org's
        admins see an org token's; the audit log a personal one's). A plain try at each check, not
        a context manager: this is on every call's path."""
        await self._records.over(self._resolver.stored_tokens(provider, refs), shape, REFUSED_DESTINATION)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def _failure(exc: BaseException) -> str:
    """What happened to a call that got no answer, for its audit entry: our errors name the host
    and what failed, never a secret; anything else by its kind only."""
    if isinstance(exc, QpuBrokerError):
        return str(exc)
    return "the caller went away" if isinstance(exc, asyncio.CancelledError) else f"internal error ({type(exc).__name__})"


def _stored(resolved: list[Resolved]) -> list[StoredToken]:
    """The stored tokens among `resolved`, each once."""
    out: list[StoredToken] = []
    for r in resolved:
        token = r.stored()
        if token is not None and token not in out:
            out.append(token)
    return out


def _check_presign(lifetime: int, reach: Reach, config: Config) -> None:
    """A presigned URL is a bearer URL until it expires: never with an org token (it would outlive
    the member's access and be used unseen by the org's quotas and usage record); with a personal
    or inline token only as long as the daemon's owner set in config."""
    if reach.owner is Owner.ORG:
        raise PermissionDeniedError(
            "the URL's query asks for a presigned URL (X-Amz-* query authentication), which an organization token "
            "never signs: it would work for anyone holding it until it expires, past your access and outside the "
            "org's quotas and usage record. Leave the X-Amz-* parameters out: the signature goes in the headers")
    limit = config.presign_max_seconds
    if lifetime > limit:
        allowed = f"at most {limit} s" if limit else "none (the default)"
        raise PermissionDeniedError(
            f"the URL's query asks for a presigned URL valid {lifetime} s (X-Amz-Expires), and {PRESIGN_KEY} under "
            f"[providers.{PRESIGN_PROVIDER}] in your config allows {allowed}: raise it to presign with a personal "
            "token, or leave the X-Amz-* parameters out of the query")


def _granted(call: ForwardCall, url: Url, reach: Reach) -> bool:
    """The one official host an exec session vouched for, over https on 443, for a credential of the
    daemon's owner (the session judged the request: session_results)."""
    return (call.session and bool(call.granted_host) and reach.owner is Owner.CONFIG and url.scheme == "https"
            and url.port == 443 and not url.has_userinfo and url.host == call.granted_host)


def _check_bearer_call(scheme: Scheme, url: Url, method: str, reach: Reach, call: ForwardCall) -> None:
    """An exchanged bearer acts for the whole account: it never goes to the exchange's own
    host, and with an org token or from an exec session only with the calls the provider's SDK
    makes, judged on the URL that is sent."""
    if not isinstance(scheme, ExchangeScheme):
        return
    if url.host == scheme.exchange_only_host:
        raise PermissionDeniedError(
            f"{url.host} is {scheme.provider}'s key exchange: the daemon trades the key there itself and forwards "
            "nothing to it (with the bearer, it could mint a lasting key)")
    org = reach.owner is Owner.ORG
    host = call.official_host or url.host
    if (org or call.session) and not scheme.bearer_allowed(host, method, url):
        why = "" if url.resolved_path is not None else (
            " (its path has an encoded '/', '\\', '.' or '%', a backslash, '//', a segment of dots or of "
            "parameters only, or other than printable ASCII: servers read such paths in more than one way)")
        raise PermissionDeniedError(
            f"{'an organization token' if org else 'an exec session'} goes to {host} only with the calls "
            f"{scheme.provider}'s SDK makes there, not {method} {url.path}{why}"
            + (": ask an org admin to do this with the org's own account" if org else ""))


def _content_length(headers: list[tuple[str, str]]) -> int:
    value = next((v.strip() for k, v in headers if k.lower() == "content-length"), "")
    return int(value) if value.isdigit() else UNKNOWN_SIZE


def _token_values(qpu_tokens: dict) -> list[str]:
    """Every token string in a qpu_tokens object of Luna's shape (AWS's parts nested)."""
    out: list[str] = []
    for entry in qpu_tokens.values():
        for part in (entry, *entry.values()) if isinstance(entry, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("token"), str) and part["token"]:
                out.append(part["token"])
    return out


def content_encoding(headers: list[tuple[str, str]]) -> str:
    """Every coding the body went through, Content-Encoding and Transfer-Encoding together (each
    header repeated or listed), chunking aside: "identity" only when there is none."""
    codings = [c.strip().lower() for k, v in headers if k.lower() in ("content-encoding", "transfer-encoding")
               for c in v.split(",")]
    return ", ".join(c for c in codings if c not in ("", "identity", "chunked")) or "identity"


async def read_whole(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """All of `chunks` joined, or None once they pass `limit` bytes (a body read whole to be
    checked or rewritten; everything else streams)."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def without_length(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A rewritten body's headers: its old length and entity tag no longer hold."""
    return [(k, v) for k, v in headers if k.lower() not in ("content-length", "etag")]


async def scrubbed(reply: Reply, secrets: list[str], netloc: str) -> Reply:
    """An answer without the secrets its request carried, read whole: Luna may echo a request
    back (a 422 names its input), and no caller reads a stored secret (nor a member a relay
    token's, on the org server)."""
    encoding = content_encoding(reply.headers)
    if encoding != "identity":
        raise UnavailableError(f"{netloc} compressed its answer ({encoding}) though asked not to: the daemon cannot "
                               "check it for the stored tokens the request carried, so it is not passed on")
    body = await read_whole(reply.body, SCRUB_LIMIT)
    if body is None:
        raise UnavailableError(f"{netloc} answered with more than {SCRUB_LIMIT} bytes: too large for the daemon "
                               "to check for the stored tokens the request carried")
    headers = reply.headers
    for secret in secrets:
        for form in {secret, json.dumps(secret)[1:-1]}:
            body = body.replace(form.encode(), REDACTED)
            headers = [(k, v.replace(form, REDACTED.decode())) for k, v in headers]

    async def once() -> AsyncIterator[bytes]:
        yield body

    return Reply(reply.status, [*without_length(headers), ("Content-Length", str(len(body)))],
                 reply.http_version, once())


def _swapped(in_body: dict[str, Ref], swaps: Mapping[str, tuple[str, Ref]]) -> dict[str, Ref]:
    """Session placeholders the SDK copied from LUNA_<PROVIDER>_TOKEN, as the tokens they stand for."""
    out: dict[str, Ref] = {}
    for field, ref in in_body.items():
        given = ref.secret.reveal() if ref.kind == INLINE and ref.secret is not None else b""
        hit = next((s for p, s in swaps.items() if given and hmac.compare_digest(given, p.encode())), None)
        if hit is None:
            out[field] = ref
        elif hit[0] != field:  # a real token must not travel as another provider's
            raise InvalidArgumentError(f"qpu_tokens.{field} holds the session placeholder of {hit[0]}: "
                                       f"set {field} from its own LUNA_* variable")
        else:
            out[provider_of_field(field)] = hit[1]
    return out


def _multidict(headers: list[tuple[str, str]]):
    from multidict import CIMultiDict

    return CIMultiDict(headers)


async def _stream(response: aiohttp.ClientResponse, netloc: str) -> AsyncIterator[bytes]:
    import aiohttp

    try:
        async for chunk in response.content.iter_chunked(1 << 20):
            yield chunk
    except TimeoutError:
        raise DeadlineExceededError(f"{netloc} stopped sending the response body in time") from None
    except aiohttp.ClientError as exc:
        raise UnavailableError(f"{netloc} broke off the response: {type(exc).__name__}") from None
    finally:
        response.release()
