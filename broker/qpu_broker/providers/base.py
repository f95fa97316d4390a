"""The small interfaces provider modules implement, one per kind of scheme.

- `HeaderScheme.headers(secret)`: the key itself in a header (D-Wave, Fujitsu, IonQ, Luna);
- `ExchangeScheme.exchange(secret, post, token_url)`: the key traded for a bearer (IBM, Q-CTRL,
  Fujitsu Quantum Cloud's Cognito refresh token);
- `SignScheme.sign(...)`: a signature made with the key (AWS SigV4), within the scope
  `scope(...)` allows and never as a presigned URL unless `presign_seconds` says so.

The forwarder and the Sign RPC call only these; caching of exchanges is a
wrapper (`qpu_broker.providers.exchange_cache`), not a flag in here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

from qpu_broker_client.secret import Secret

from qpu_broker.common.reach import Owner
from qpu_broker.common.url import Url

# Auth headers a client might set for any provider: always dropped before the
# daemon adds the real one, so a client can never smuggle or override a credential.
CLIENT_AUTH_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-auth-token", "x-api-key", "luna-api-key",
    "x-amz-security-token", "x-amz-date", "x-amz-content-sha256", "cookie",
})
# Never forwarded: connection-level headers, and those the HTTP client sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length",
})


@dataclasses.dataclass(frozen=True)
class Outbound:
    """A request about to leave for a provider: its final URL and headers."""

    method: str
    url: Url  # the one parsed URL: checked, signed and sent as it is
    headers: tuple[tuple[str, str], ...]
    body_sha256: str  # hex digest of the whole body


# (url, form or json body[, headers]) -> (status, parsed JSON); given by the forwarder so
# exchanges go through the same destination checks and pools as everything else. The headers
# (Cognito's X-Amz-Target and its JSON 1.1 content type) replace the defaults of the same name.
PostJson = Callable[..., Awaitable[tuple[int, dict]]]


@dataclasses.dataclass(frozen=True)
class Exchanged:
    bearer: Secret
    lifetime_seconds: float


class Scheme:
    """Base: a provider, its official hosts, and how its credential is applied."""

    provider: str = ""
    hosts: tuple[str, ...] = ()  # exact official hosts, https on 443
    host_patterns: tuple[re.Pattern[str], ...] = ()  # full-match patterns, e.g. regions
    signs: bool = False
    default_token_url: str | None = None
    # Exec sessions: the variables this provider's SDKs read, as templates of the session's
    # loopback endpoint ({url}) and placeholders ({credential}, and {key_id} for SigV4).
    # Names from the SDKs' sources.
    session_env: Mapping[str, str] = MappingProxyType({})
    # The SDK follows absolute URLs the service puts in its JSON answers (D-Wave's binary-ref
    # answers): a session rewrites them to its own endpoint, or the SDK would send the
    # placeholder to the real host and get nothing.
    session_rewrites_urls: bool = False
    # Variables the session's command must not inherit: they would beat the session's own.
    session_unset: tuple[str, ...] = ()
    # Exec sessions in proxy form: the names the session's TLS certificate covers (the hosts the SDK names).
    session_tls_names: tuple[str, ...] = ()
    # Headers besides CLIENT_AUTH_HEADERS that carry this provider's credential: a client's own are dropped.
    client_headers: frozenset[str] = frozenset()

    # -- What the rest of the daemon and the org server ask of a provider (its quirks): read on the
    # class as well (`qpu_broker.providers.traits(name)`), so the defaults are what a custom provider has.
    # The TokenProvider fields that may carry the credential in parts (AWS's split form), in the order
    # `secret_shape` reads them joined with ':'; `split_required` are the parts none may leave out.
    split_fields: tuple[str, ...] = ()
    split_required: tuple[str, ...] = ()
    # Its requests carry other providers' tokens in their JSON body's `qpu_tokens` (Luna), filled by the
    # daemon: a call's body is read and rewritten, a session gives a placeholder per token there.
    fills_body_tokens: bool = False
    # Its answers report the QPU access time an org meters (usage records, time quotas): an org token's
    # answers are read whole, up to `qpu_answer_max` bytes, for `qpu_access_us`.
    meters_qpu_time: bool = False
    qpu_answer_max: int = 0

    def official(self, host: str) -> bool:
        return host in self.hosts or any(p.fullmatch(host) for p in self.host_patterns)

    @staticmethod
    def qpu_access_us(answer: bytes) -> int:
        """The QPU access time (µs) an answer reports; 0 when it reports none."""
        return 0

    @staticmethod
    def secret_shape(text: str) -> bytes | None:
        """The canonical bytes to seal for a credential given as `text`, its shape checked
        (InvalidArgumentError saying what is wrong, never the secret); None: sealed as given."""
        return None

    @staticmethod
    def split_parts(secret: bytes) -> dict[str, str | None]:
        """A sealed credential (as `secret_shape` made it) in its `split_fields`, each one (None where
        it has no such part)."""
        return {}

    @staticmethod
    def secret_forms(text: str) -> list[str]:
        """What of a sealed credential might come back in an answer, each to be taken out of it: the
        whole, and any part that is a secret on its own."""
        return [text]

    @staticmethod
    def signature_hands_over(secret: bytes) -> bool:
        """Whether a signature made with this credential gives part of it to whoever sends the
        request (SigV4 has the sender carry a session token itself)."""
        return False

    @staticmethod
    def file_secret(value: bytes) -> bytes:
        """What of a credential as an SDK's file holds it (sdk_files' joined form) is secret, and must
        not stay in the file."""
        return value

    def forget(self) -> None:
        """Drop whatever this scheme derived from credentials (AWS's signing keys)."""


class HeaderScheme(Scheme):
    """A static header carries the key itself (D-Wave, Fujitsu, IonQ, Luna)."""

    header: str = ""
    prefix: str = ""
    suffix: str = ""

    def headers(self, secret: Secret) -> list[tuple[str, str]]:
        return [(self.header, self.prefix + secret.reveal().decode())]


class SignScheme(Scheme):
    """The key signs each request and never leaves the daemon (AWS SigV4)."""

    signs = True

    def scope(self, host: str, region: str, service: str, owner: Owner) -> tuple[str, str]:
        """The (region, service) to sign for on `host`, the caller's asking checked against what the
        credential's owner (`owner`) allowed it for."""
        raise NotImplementedError

    def presign_seconds(self, url: Url, headers: list[tuple[str, str]]) -> int | None:
        """How long the request asks to be valid as a presigned URL (query authentication), or None
        for one signed in its headers."""
        raise NotImplementedError

    def sign(self, secret: Secret, outbound: Outbound, region: str, service: str,
             token_key: str) -> list[tuple[str, str]]:
        """The headers that sign `outbound` for the (region, service) `scope` returned."""
        raise NotImplementedError


class ExchangeScheme(Scheme):
    """The key is exchanged for a short-lived bearer (IBM IAM, Q-CTRL)."""

    # Exec sessions in proxy form: (host, path) of the SDK's own key exchange, which the session
    # answers with a stand-in bearer; and the names the session's TLS certificate covers. Without
    # it a session is a loopback endpoint whose URL carries the placeholder as its first path
    # segment (for SDKs that send some calls with no credential: session_requests.exchanging).
    session_exchange: tuple[str, str] | tuple[()] = ()
    # A host for the key exchange alone: nothing else is forwarded there, whoever asks (with
    # the bearer, IBM IAM mints lasting API keys). Empty where the exchange shares the API's host.
    exchange_only_host: str = ""
    # What besides the key and the token URL decides the bearer an exchange gives (a custom provider's
    # scope and audience): part of the cache's key, so a changed definition never reuses an old bearer.
    exchange_terms: str = ""

    async def exchange(self, secret: Secret, post: PostJson, token_url: str) -> Exchanged:
        raise NotImplementedError

    def bearer_allowed(self, host: str, method: str, url: Url) -> bool:
        """Whether a caller who must not act for the whole account (an exec session's command, a
        member with an org token) may send this call to `host` (the official host it is for)
        with the real bearer. `url` is the one that is sent: judge `url.resolved_path`."""
        return True

    def exchange_key(self, form: Mapping[str, object], headers: Mapping[str, str] = MappingProxyType({})) -> str | None:
        """The key an SDK's exchange request presents (a session placeholder, if it is ours): `form`
        is its form (proxy sessions) or its JSON body (loopback ones, where None means the request
        is no key exchange); `headers` are the request's (loopback sessions)."""
        raise NotImplementedError

    def exchange_refused(self) -> tuple[dict, int]:
        """The provider's own answer to a wrong key, so the SDK reports it as it would."""
        raise NotImplementedError

    def standin(self) -> tuple[str, float, dict]:
        """A session-scoped bearer in the shape the SDK decodes: (bearer, lifetime, the answer)."""
        raise NotImplementedError

    def session_files(self, url: str, placeholder: str, standin: str) -> dict[str, bytes]:
        """Files an SDK reads its endpoint and credential from, for a session's private directory
        (`{home}` in session_env): name -> content, holding only the session's URL, its placeholder
        and a stand-in bearer it gave out. Empty: the SDK reads variables only."""
        return {}
