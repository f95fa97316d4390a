"""Providers defined in config (`[providers.custom.NAME]`) or by an org: schemes built from a
`CustomDefinition` (common/custom_providers.py), behind the same interfaces as the built-ins.

- `header` / `bearer`: the key in one header, through the definition's template;
- `client_credentials`: an OAuth 2.0 client-credentials grant (RFC 6749 4.4) at the definition's
  token endpoint, the key stored as CLIENT_ID:CLIENT_SECRET; the bearer is cached like IBM's.
"""

from __future__ import annotations

import urllib.parse
from types import MappingProxyType

from qpu_broker_client.errors import (
    InvalidArgumentError,
    UnauthenticatedError,
    UnavailableError,
)
from qpu_broker_client.secret import Secret

from qpu_broker.common.custom_providers import (
    CLIENT_CREDENTIALS,
    PROXY,
    PROXY_ENV,
    TOKEN_FIELD,
    CustomDefinition,
)
from qpu_broker.providers.base import Exchanged, ExchangeScheme, HeaderScheme, Scheme


def _session_env(definition: CustomDefinition) -> MappingProxyType:
    env = dict(definition.session_env)
    if definition.session == PROXY:
        env = {**PROXY_ENV, **env}
    return MappingProxyType(env)


class CustomHeader(HeaderScheme):
    """The key in a header: `template` with {token} replaced (`Bearer {token}`, `{token}`, ...)."""

    def __init__(self, definition: CustomDefinition) -> None:
        self.definition = definition
        self.provider = definition.name
        self.hosts = definition.official_hosts
        self.header = definition.header
        self.prefix, _, self.suffix = definition.template.partition(TOKEN_FIELD)
        self.client_headers = frozenset({definition.header.lower()})
        self.session_env = _session_env(definition)
        self.session_tls_names = definition.official_hosts if definition.session == PROXY else ()

    def headers(self, secret: Secret) -> list[tuple[str, str]]:
        return [(self.header, self.prefix + secret.reveal().decode() + self.suffix)]


class CustomClientCredentials(ExchangeScheme):
    """OAuth client credentials: CLIENT_ID:CLIENT_SECRET traded at the token endpoint for a bearer.
    A session's SDK presents its placeholder as `Authorization: Bearer PLACEHOLDER`."""

    header, prefix, suffix = "Authorization", "Bearer ", ""

    def __init__(self, definition: CustomDefinition) -> None:
        self.definition = definition
        self.provider = definition.name
        self.hosts = definition.official_hosts
        self.default_token_url = definition.token_url
        self.exchange_terms = urllib.parse.urlencode({"scope": definition.scope, "audience": definition.audience})
        self.session_env = _session_env(definition)
        self.session_tls_names = definition.official_hosts if definition.session == PROXY else ()

    async def exchange(self, secret, post, token_url):
        client_id, sep, client_secret = secret.reveal().decode().partition(":")
        if not sep or not client_id or not client_secret:
            raise InvalidArgumentError(f"the {self.provider} token must be CLIENT_ID:CLIENT_SECRET (OAuth client "
                                       "credentials): rotate it in that form")
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        form.update({k: v for k, v in (("scope", self.definition.scope), ("audience", self.definition.audience)) if v})
        status, doc = await post(token_url, form, None)
        if status in (400, 401, 403):
            raise UnauthenticatedError(f"{self.provider}'s token endpoint refused the client credentials ({status}): "
                                       f"check or rotate the {self.provider} token")
        access, lifetime = doc.get("access_token"), doc.get("expires_in", 3600)
        if status != 200 or not isinstance(access, str) or not access or isinstance(lifetime, bool) \
                or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            raise UnavailableError(f"{self.provider}'s token endpoint at {token_url} gave no usable access token "
                                   f"(HTTP {status})")
        return Exchanged(Secret(access), float(lifetime))


def custom_scheme(definition: CustomDefinition) -> Scheme:
    return (CustomClientCredentials if definition.auth == CLIENT_CREDENTIALS else CustomHeader)(definition)


def presents_in_header(scheme: Scheme) -> bool:
    """A session's SDK shows its placeholder in one header (`header`, between `prefix` and `suffix`)."""
    return isinstance(scheme, HeaderScheme | CustomClientCredentials)
