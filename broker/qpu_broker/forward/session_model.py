"""What an exec session is: the token it uses per provider, its endpoints and their
placeholders, and the variables its command gets."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from typing import TYPE_CHECKING

from qpu_broker_client.providers import LUNA_AWS_ENV, LUNA_ENV

from qpu_broker.providers.base import Scheme
from qpu_broker.tokens.resolution import Ref

if TYPE_CHECKING:
    from qpu_broker.forward.session_proxy import SessionProxy

LOOPBACK = "127.0.0.1,localhost"  # for NO_PROXY: the caller adds its own entries
PROGRAM_NAME_MAX = 64  # characters of a session's command name kept for the audit log
PLACEHOLDER_PREFIX = "qbs_"  # recognisable in a leaked environment dump; the rest is 256 random bits
# HTTP status for each error a forward can raise (the session endpoint speaks HTTP, not gRPC).

def program_name(command: str) -> str:
    """A caller's word for what runs in a session, as the audit log keeps it: a file name only
    (no directories, no arguments), printable, bounded. The caller is the user's own process: a
    label, not a proof."""
    name = command.rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable() and not c.isspace())[:PROGRAM_NAME_MAX]


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The stored token a session uses for one provider."""

    provider: str
    token_name: str
    ref: Ref


@dataclasses.dataclass
class Endpoint:
    chosen: Chosen
    # The provider's scheme as the session opened (its variables, its listener's form). Requests look
    # the scheme up again: a custom provider the org redefines or removes binds an open session too.
    scheme: Scheme
    placeholder: str  # the credential the SDK is given; for SigV4, the secret key it signs with
    key_id: str = ""  # SigV4: the access key id that goes with it (a name, not a proof)
    url: str = ""  # http://127.0.0.1:PORT, once listening
    listener: asyncio.AbstractServer | None = None  # a loopback endpoint's (a proxy has its own)
    # The HTTPS-proxy form (session_proxy), for SDKs that build URLs from host names:
    proxy: SessionProxy | None = None
    bundle: pathlib.Path | None = None  # the session CA and the system roots, for the SDK's CA variables
    home: pathlib.Path | None = None  # a private directory of the files the SDK reads (Scheme.session_files)
    standins: dict[str, float] = dataclasses.field(default_factory=dict)  # stand-in bearer -> expiry (monotonic)
    # SigV4: the (bucket, directory) of Braket task results this session may read from S3 (session_results).
    s3_results: dict[tuple[str, str], None] = dataclasses.field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.chosen.provider


@dataclasses.dataclass
class Session:
    id: str
    endpoints: dict[str, Endpoint]
    # For luna-quantum's LUNA_<PROVIDER>_TOKEN variables: placeholder -> (body field, token).
    # The SDK copies them into qpu_tokens; the Luna hop swaps each for its stored token.
    luna_swaps: dict[str, tuple[str, Chosen]]
    skipped: list[str]
    persistent: bool  # `qpu-broker env`: ends with End or lock, not with a stream
    command: str = ""  # what its caller said it runs (a program's name), for the audit log

    def env(self) -> dict[str, str]:
        """The variables the providers' SDKs read, pointing at this session."""
        # requests- and botocore-based SDKs send even loopback traffic to a configured proxy.
        out: dict[str, str] = {"NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK}
        for endpoint in self.endpoints.values():
            for name, template in endpoint.scheme.session_env.items():
                out[name] = template.format(url=endpoint.url, credential=endpoint.placeholder, key_id=endpoint.key_id,
                                            proxy=endpoint.proxy.proxy_url() if endpoint.proxy else "",
                                            ca_bundle=str(endpoint.bundle or ""), home=str(endpoint.home or ""))
        for placeholder, (field, _) in self.luna_swaps.items():
            out[LUNA_ENV.get(field) or LUNA_AWS_ENV[field]] = placeholder
        return out

    def unset(self) -> list[str]:
        return sorted({name for endpoint in self.endpoints.values() for name in endpoint.scheme.session_unset})


