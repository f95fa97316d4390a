"""Providers beyond the built-ins, defined by whoever owns the credential: `[providers.custom.NAME]`
in the daemon's config, or an org admin on the org server. One definition, checked here for both, so
the two cannot disagree about what a custom provider is.

A definition names the provider's official hosts (https on 443, exact names), how its credential is
applied (`auth`: a header, or an OAuth 2.0 grant traded for a bearer at the official token URL), and
for exec sessions the variables its SDK reads. Nothing here is secret.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import CUSTOM_NAME, PROVIDERS

from qpu_broker.common.reach import check_token_url, split_host_port

HEADER, BEARER, CLIENT_CREDENTIALS, PASSWORD = "header", "bearer", "client_credentials", "password"
AUTH_KINDS = (HEADER, BEARER, CLIENT_CREDENTIALS, PASSWORD)
GRANTS = (CLIENT_CREDENTIALS, PASSWORD)  # traded at official_token_url for a bearer (RFC 6749 4.4, 4.3)
# Form fields of a grant that its own keys or the stored credential fill: never in token_form.
_GRANT_FIELDS = frozenset({"grant_type", "username", "password", "client_secret", "scope", "audience"})
ENDPOINT, PROXY = "endpoint", "proxy"  # how an exec session serves the SDK
SESSION_FORMS = (ENDPOINT, PROXY)
TOKEN_FIELD = "{token}"
# What a session variable's template may name: the session's endpoint and the placeholder (the HTTPS
# proxy form also sets the proxy and CA variables itself).
SESSION_FIELDS = frozenset({"url", "credential"})
# Variables a proxy session sets itself (requests and most SDKs read them).
PROXY_ENV = MappingProxyType({"HTTPS_PROXY": "{proxy}", "https_proxy": "{proxy}", "REQUESTS_CA_BUNDLE": "{ca_bundle}",
                              "SSL_CERT_FILE": "{ca_bundle}"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Never a custom header: the HTTP client sets them, or they would steer the request.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "cookie",
                               "proxy-authorization", "keep-alive", "trailer", "expect"})
KEYS = ("official_hosts", "auth", "header", "template", "official_token_url", "scope", "audience", "grant_type",
        "token_form", "session", "session_env")


@dataclasses.dataclass(frozen=True)
class CustomDefinition:
    name: str
    official_hosts: tuple[str, ...]  # exact host names, https on 443
    auth: str  # header | bearer | client_credentials | password
    header: str = "Authorization"
    template: str = "Bearer {token}"  # the header's value, {token} the credential (or the exchanged bearer)
    token_url: str = ""  # client_credentials, password: the official token endpoint
    scope: str = ""
    audience: str = ""
    grant_type: str = ""  # the grant's form value: client_credentials, or "password" unless the service names another
    token_form: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the grant's other, public, fields
    session: str = ENDPOINT
    session_env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The definition as its owner writes it (config keys), for the org server's store."""
        doc = {k: getattr(self, k) for k in KEYS if k != "official_token_url"}
        doc["official_token_url"] = self.token_url
        doc["official_hosts"] = list(self.official_hosts)
        doc["session_env"] = dict(self.session_env)
        doc["token_form"] = dict(self.token_form)
        if self.grant_type == self.auth:
            del doc["grant_type"]  # the default
        if self.auth != HEADER:  # fixed by the auth kind, and refused in its table
            del doc["header"], doc["template"]
        return {k: v for k, v in doc.items() if v not in ("", [], {})}


def check_name(name: str, where: str) -> str:
    if name in PROVIDERS:
        raise InvalidArgumentError(f"{where}: {name!r} is a built-in provider; a custom provider must not shadow it: "
                                   "pick another name")
    if not isinstance(name, str) or not CUSTOM_NAME.fullmatch(name):
        raise InvalidArgumentError(f"{where}: {str(name)[:40]!r} is not a custom provider name (lower-case letters, "
                                   "digits and '-', starting with a letter, at most 32)")
    return name


def _strings(body: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(f"{where}.{key} must be a list of strings")
    return value


def _string(body: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where}.{key} must be a string")
    return value


def _template_fields(template: str, where: str) -> list[str]:
    """The fields a template names; a format spec or conversion ({token!r}, {token:>9}) is refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc} (write a literal brace as {{{{ or }}}})") from None
    if any(spec or conv for _, field, spec, conv in parsed if field is not None):
        raise InvalidArgumentError(f"{where}: a field takes no format spec or conversion: write {{token}} as it is")
    return [field for _, field, _, _ in parsed if field is not None]


def parse_definition(name: str, body: Any, where: str, also_known: tuple[str, ...] = ()) -> CustomDefinition:
    """A custom provider from its table (`where` names it in errors: a config path and key, or the
    org server's command); every error names the bad key. `also_known`: keys the caller reads itself."""
    check_name(name, where)
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"{where} must be a table")
    for key in body:
        if key not in KEYS + also_known:
            raise InvalidArgumentError(f"{where}: unknown key {key}; known keys: {', '.join(KEYS + also_known)}")
    body = {k: v for k, v in body.items() if k in KEYS}
    hosts = []
    for entry in _strings(body, "official_hosts", where):
        try:
            host, port = split_host_port(entry, 443)
        except ValueError as exc:
            raise InvalidArgumentError(f"{where}.official_hosts: {exc}") from None
        if port != 443 or "." not in host or host.endswith(".") or any(c.isupper() for c in entry):
            raise InvalidArgumentError(f"{where}.official_hosts: {entry!r} is not a lower-case DNS name on 443; "
                                       "other ports and test hosts go in hosts (and plain_http_hosts)")
        hosts.append(host)
    if not hosts:
        raise InvalidArgumentError(f"{where}.official_hosts must name the provider's hosts, like "
                                   "[\"api.example-quantum.com\"]")
    auth = _string(body, "auth", where, HEADER if "template" in body else BEARER)
    if auth not in AUTH_KINDS:
        raise InvalidArgumentError(f"{where}.auth must be one of {', '.join(AUTH_KINDS)}, not {auth!r}")
    header = _string(body, "header", where, "Authorization")
    if not _HEADER_NAME.fullmatch(header) or header.lower() in _RESERVED_HEADERS:
        raise InvalidArgumentError(f"{where}.header must be an HTTP header name (a token, not one of "
                                   f"{', '.join(sorted(_RESERVED_HEADERS))}), not {header[:64]!r}")
    template = _string(body, "template", where, "Bearer {token}")
    if auth != HEADER and ("template" in body or "header" in body):
        raise InvalidArgumentError(f"{where}: header and template are for auth = \"header\"; {auth} sends "
                                   "Authorization: Bearer")
    if auth != HEADER:
        header, template = "Authorization", "Bearer {token}"
    if _template_fields(template, f"{where}.template") != ["token"] or any(c in template for c in "\r\n\0"):
        raise InvalidArgumentError(f"{where}.template must hold {TOKEN_FIELD} exactly once (the credential) and no "
                                   "other field, like \"Bearer {token}\"")
    token_url = _string(body, "official_token_url", where)
    scope, audience = _string(body, "scope", where), _string(body, "audience", where)
    grant_type, token_form = _string(body, "grant_type", where, auth), body.get("token_form", {})
    if auth in GRANTS:
        check_token_url(token_url, f"{where}.official_token_url")
        if not token_url.startswith("https://") or _host_of(token_url) not in hosts:
            raise InvalidArgumentError(f"{where}.official_token_url must be an https:// URL on one of its "
                                       "official_hosts (a test endpoint goes in token_url)")
        _check_grant(auth, grant_type, token_form, where)
    elif token_url or scope or audience or "grant_type" in body or "token_form" in body:
        raise InvalidArgumentError(f"{where}: official_token_url, scope, audience, grant_type and token_form are "
                                   f"for auth = \"{CLIENT_CREDENTIALS}\" or \"{PASSWORD}\"")
    session = _string(body, "session", where, ENDPOINT)
    if session not in SESSION_FORMS:
        raise InvalidArgumentError(f"{where}.session must be {' or '.join(SESSION_FORMS)}, not {session!r}")
    env = body.get("session_env", {})
    if not isinstance(env, dict):
        raise InvalidArgumentError(f"{where}.session_env must be a table of VARIABLE = \"template\"")
    for var, value in env.items():
        if not _ENV_NAME.fullmatch(var) or not isinstance(value, str):
            raise InvalidArgumentError(f"{where}.session_env: {str(var)[:64]!r} must be a variable name with a "
                                       "string template")
        unknown = set(_template_fields(value, f"{where}.session_env.{var}")) - SESSION_FIELDS
        if unknown:
            raise InvalidArgumentError(f"{where}.session_env.{var} names {', '.join(sorted(unknown))}: a template "
                                       f"may hold {', '.join('{' + f + '}' for f in sorted(SESSION_FIELDS))}")
    return CustomDefinition(name, tuple(dict.fromkeys(hosts)), auth, header, template, token_url, scope, audience,
                            grant_type if auth in GRANTS else "", MappingProxyType(dict(token_form)), session,
                            MappingProxyType(dict(env)))


def _check_grant(auth: str, grant_type: str, token_form: Any, where: str) -> None:
    """A grant's type and public form fields (Auth0's realm, a public client_id): what the stored
    credential fills (the secret, a user name) or a key of its own sets is never one of them."""
    if auth == CLIENT_CREDENTIALS and grant_type != CLIENT_CREDENTIALS:
        raise InvalidArgumentError(f"{where}.grant_type: client credentials are sent as grant_type = "
                                   f"\"{CLIENT_CREDENTIALS}\"; leave grant_type out")
    if not grant_type or any(c in grant_type for c in "\r\n\0"):
        raise InvalidArgumentError(f"{where}.grant_type must name the grant, like \"password\"")
    if not isinstance(token_form, dict) or not all(isinstance(v, str) for v in token_form.values()):
        raise InvalidArgumentError(f"{where}.token_form must be a table of FIELD = \"value\"")
    taken = sorted(_GRANT_FIELDS.intersection(token_form) | ({"client_id"} & set(token_form)
                                                            if auth == CLIENT_CREDENTIALS else set()))
    if taken:
        raise InvalidArgumentError(f"{where}.token_form must not set {', '.join(taken)}: the stored credential or "
                                   "the keys scope, audience and grant_type fill those")


def definition_json(definition: CustomDefinition) -> str:
    """A definition as the org server stores and pushes it: its config keys, as JSON."""
    return json.dumps(definition.as_dict(), sort_keys=True)


def definition_from_json(name: str, text: str, where: str) -> CustomDefinition:
    """A stored or pushed definition, checked by `parse_definition` as a config table is: one
    parser for the daemon's config, the org server's CLI and what a daemon hears from its org."""
    try:
        body = json.loads(text)
    except ValueError:
        raise InvalidArgumentError(f"{where} is not a JSON object of a custom provider's keys") from None
    return parse_definition(name, body, where)


def _host_of(url: str) -> str:
    rest = url.split("://", 1)[1]
    return rest.split("/", 1)[0].split("?", 1)[0].lower().removesuffix(":443")


__all__ = [
    "AUTH_KINDS",
    "BEARER",
    "CLIENT_CREDENTIALS",
    "ENDPOINT",
    "GRANTS",
    "HEADER",
    "PASSWORD",
    "PROXY",
    "PROXY_ENV",
    "CustomDefinition",
    "check_name",
    "definition_from_json",
    "definition_json",
    "parse_definition",
]
