"""Providers defined in config (`[providers.custom.NAME]`) or by an org: schemes built from a
`CustomDefinition` (common/custom_providers.py), behind the same interfaces as the built-ins.

- `header` / `bearer`: the key in one header, through the definition's template;
- `client_credentials`, `password`: an OAuth 2.0 grant (RFC 6749 4.4, 4.3) at the definition's
  token endpoint, the key stored as CLIENT_ID:CLIENT_SECRET or USERNAME:PASSWORD; the bearer is
  cached like IBM's.
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
    GRANTS,
    PROXY,
    PROXY_ENV,
    TOKEN_FIELD,
    CustomDefinition,
)
from qpu_broker.common.url import parse_url
from qpu_broker.providers.base import Exchanged, ExchangeScheme, HeaderScheme, Scheme
from qpu_broker.providers.standin import standin_jwt

STANDIN_SECONDS = 3600  # a session's stand-in bearer: the SDK trades again through the session before it ends


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


class CustomGrant(ExchangeScheme):
    """An OAuth 2.0 grant at the definition's token endpoint, traded for a bearer:
    - client credentials (RFC 6749 4.4): the token is CLIENT_ID:CLIENT_SECRET;
    - password (4.3; Auth0's password-realm is one, its realm in token_form): USERNAME:PASSWORD.
    Under exec, an SDK presents its placeholder as a static bearer (`Authorization: Bearer
    PLACEHOLDER`), or, in proxy form, makes the grant itself with the placeholder for the secret:
    the session answers that at the official token URL with a stand-in bearer of its own."""

    header, prefix, suffix = "Authorization", "Bearer ", ""

    def __init__(self, definition: CustomDefinition) -> None:
        self.definition = definition
        self.provider = definition.name
        self.hosts = definition.official_hosts
        self.default_token_url = definition.token_url
        self.exchange_terms = urllib.parse.urlencode({"scope": definition.scope, "audience": definition.audience})
        self.session_env = _session_env(definition)
        self.session_tls_names = definition.official_hosts if definition.session == PROXY else ()
        if definition.session == PROXY:
            self.session_exchange = _host_and_path(definition.token_url)
        # The form field that carries the secret: the SDK's placeholder arrives there.
        self._secret_field = "client_secret" if definition.auth == CLIENT_CREDENTIALS else "password"
        self._id_field = "client_id" if definition.auth == CLIENT_CREDENTIALS else "username"

    async def exchange(self, secret, post, token_url):
        name, sep, value = secret.reveal().decode().partition(":")
        if not sep or not name or not value:
            shape = "CLIENT_ID:CLIENT_SECRET (OAuth client credentials)" if self._id_field == "client_id" else \
                "USERNAME:PASSWORD"
            raise InvalidArgumentError(f"the {self.provider} token must be {shape}: rotate it in that form")
        d = self.definition
        form = {"grant_type": d.grant_type, **d.token_form, self._id_field: name, self._secret_field: value}
        form.update({k: v for k, v in (("scope", d.scope), ("audience", d.audience)) if v})
        status, doc = await post(token_url, form, None)
        if status in (400, 401, 403):
            raise UnauthenticatedError(f"{self.provider}'s token endpoint refused the {self._id_field} and its "
                                       f"{self._secret_field.replace('_', ' ')} ({status}): check or rotate the "
                                       f"{self.provider} token")
        access, lifetime = doc.get("access_token"), doc.get("expires_in", 3600)
        if status != 200 or not isinstance(access, str) or not access or isinstance(lifetime, bool) \
                or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            raise UnavailableError(f"{self.provider}'s token endpoint at {token_url} gave no usable access token "
                                   f"(HTTP {status})")
        return Exchanged(Secret(access), float(lifetime))

    def exchange_key(self, form):
        """The secret an SDK's own grant presents (its form, at the token URL): the placeholder, if ours."""
        if form.get("grant_type") != self.definition.grant_type:
            return None
        key = form.get(self._secret_field)
        return key if isinstance(key, str) else None

    def exchange_refused(self):
        # RFC 6749 5.2, as a token endpoint refuses a wrong secret: the SDK reports it as it would.
        error = "invalid_client" if self._secret_field == "client_secret" else "invalid_grant"
        return {"error": error, "error_description": f"qpu-broker session: this session's {self.provider} grant "
                                                      f"takes only the session's placeholder as the "
                                                      f"{self._secret_field.replace('_', ' ')}"}, 401 if \
            error == "invalid_client" else 400

    def standin(self):
        """A bearer as token endpoints issue them (a JWT: SDKs read expires_in, some the JWT's exp)."""
        bearer, _ = standin_jwt(STANDIN_SECONDS)
        return bearer, float(STANDIN_SECONDS), {"access_token": bearer, "token_type": "Bearer",
                                                "expires_in": STANDIN_SECONDS}


def _host_and_path(url: str) -> tuple[str, str]:
    """The official token URL's host and path: where a proxy session answers the SDK's grant."""
    parsed = parse_url(url, "official_token_url")
    return parsed.host, parsed.path


def custom_scheme(definition: CustomDefinition) -> Scheme:
    return (CustomGrant if definition.auth in GRANTS else CustomHeader)(definition)


def presents_in_header(scheme: Scheme) -> bool:
    """A session's SDK shows its placeholder in one header (`header`, between `prefix` and `suffix`)."""
    return isinstance(scheme, HeaderScheme | CustomGrant)
