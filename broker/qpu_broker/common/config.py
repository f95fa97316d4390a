"""The daemon's configuration: a frozen dataclass built once at start-up.

Built from defaults, then `<config dir>/config.toml`; validated with messages
that name the bad key. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import PRESIGN_PROVIDER, PROVIDERS
from qpu_broker_client.trust import read_trusted

from qpu_broker.common.custom_providers import KEYS as CUSTOM_KEYS
from qpu_broker.common.custom_providers import CustomDefinition, parse_definition
from qpu_broker.common.reach import Owner, Reach, make_reach
from qpu_broker.common.url import parse_url

LOG_LEVELS = ("debug", "info", "warning", "error")
# `[providers.aws] presign_max_seconds`: the longest presigned URL (SigV4 query authentication) Sign
# makes with a personal or inline token; 0, the default: none. Never for an org token.
PRESIGN_KEY = "presign_max_seconds"
PRESIGN_MAX = 7 * 86400  # AWS's own ceiling
FORWARD_TIMEOUT_MAX = 3600  # seconds a forwarded call waits for the provider, at most (config and per call)
_NO_REACH = Reach()


@dataclasses.dataclass(frozen=True)
class Config:
    name_max_chars: int = 128
    secret_max_bytes: int = 16 * 1024
    log_level: str = "info"
    # A log file the daemon writes itself (autostart's) becomes FILE.1 at this size: at most twice
    # this on disk. 0: no cap. (Under systemd the journal keeps the log, and caps it.)
    log_max_bytes: int = 10 * 1024 * 1024
    # Argon2id is calibrated to take at least this long (never less than 0.25 s).
    kdf_seconds: float = 0.25
    # How long SIGTERM waits for in-flight calls before cutting them off.
    drain_seconds: float = 10.0
    # Lock the agent after this long unused (0: never), like ssh-add -t for the whole agent.
    auto_lock_seconds: float = 0.0
    forward_max_body_bytes: int = 64 * 1024 * 1024
    forward_timeout_seconds: float = 60.0
    # How long cached org handles keep working while the org server is unreachable.
    org_grace_seconds: float = 900.0
    # Exec session endpoints, whose port any local user can reach: a request head must be whole
    # within this long of its connection opening or of the previous answer (first byte, whole head
    # and idle keep-alive in one), and a request body may pause no longer than this.
    session_head_seconds: float = 10.0
    session_body_idle_seconds: float = 10.0
    # `[providers.NAME]`: what the daemon's owner adds to a provider's official hosts.
    # It applies to personal and inline tokens only: an org token's reach is the org's.
    providers: Mapping[str, Reach] = dataclasses.field(default_factory=dict)
    # `[providers.NAME] endpoint`: where exec sessions send that provider's requests instead of
    # its first official host (an origin, "https://host:port"); the destination rules still apply.
    endpoints: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # `[providers.NAME.endpoints]`: official host -> origin, for SDKs that call several hosts
    # (IBM: IAM, the Quantum API, Global Search, Global Catalog) through an exec session.
    host_endpoints: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    # See PRESIGN_KEY.
    presign_max_seconds: int = 0
    # `[providers.custom.NAME]`: providers the built-ins do not know, by name. Their hosts, CA, endpoints
    # and token URL for tests sit in the same table and land in the mappings above, as a built-in's do.
    custom: Mapping[str, CustomDefinition] = dataclasses.field(default_factory=dict)

    def provider(self, name: str) -> Reach:
        return self.providers.get(name, _NO_REACH)

    def endpoint(self, name: str) -> str:
        return self.endpoints.get(name, "")

    def host_endpoint(self, name: str, host: str) -> str:
        return self.host_endpoints.get(name, {}).get(host, "")

    def known_provider(self, name: str) -> str:
        """`name` if it is a built-in or one of this config's custom providers, else the error that
        says how to define it."""
        if name in PROVIDERS or name in self.custom:
            return name
        raise InvalidArgumentError(
            f"unknown provider {name[:40]!r}: use one of {', '.join((*PROVIDERS, *self.custom))}, or define it as "
            f"[providers.custom.{name[:40]}] in the daemon's config (official_hosts, auth)")


# table -> key -> (Config field, type, check, what a valid value is)
_SCHEMA: dict[str, dict[str, tuple[str, type, Any, str]]] = {
    "limits": {
        "name_max_chars": ("name_max_chars", int, lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
        "secret_max_bytes": ("secret_max_bytes", int, lambda v: 1 <= v <= 1024 * 1024, "an integer from 1 to 1048576"),
    },
    "agent": {
        "log_level": ("log_level", str, lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
        "log_max_bytes": ("log_max_bytes", int, lambda v: v == 0 or 4096 <= v <= 1 << 40,
                          "0 (no cap) or a number of bytes from 4096"),
        "drain_seconds": ("drain_seconds", (int, float), lambda v: 0 <= v <= 600, "a number of seconds from 0 to 600"),
        "auto_lock_seconds": ("auto_lock_seconds", (int, float), lambda v: 0 <= v <= 30 * 86400,
                              "a number of seconds from 0 (never) to 2592000"),
    },
    "store": {
        "kdf_seconds": ("kdf_seconds", (int, float), lambda v: 0.25 <= v <= 60, "a number of seconds from 0.25 to 60"),
    },
    "org": {
        "grace_seconds": ("org_grace_seconds", (int, float), lambda v: 0 <= v <= 7 * 86400, "a number of seconds up to 604800"),
    },
    "sessions": {
        "head_seconds": ("session_head_seconds", (int, float), lambda v: 0.1 <= v <= 300,
                         "a number of seconds from 0.1 to 300"),
        "body_idle_seconds": ("session_body_idle_seconds", (int, float), lambda v: 0.1 <= v <= 300,
                              "a number of seconds from 0.1 to 300"),
    },
    "forward": {
        "max_body_bytes": ("forward_max_body_bytes", int, lambda v: 1 <= v <= 1024**3, "an integer from 1 to 1073741824"),
        "timeout_seconds": ("forward_timeout_seconds", (int, float), lambda v: 0 < v <= FORWARD_TIMEOUT_MAX,
                            f"a number of seconds up to {FORWARD_TIMEOUT_MAX}"),
    },
}
# A config, or a CA it names, that another user could have written would send our keys where they say.
_WRITABLE_FIX = "another user could have written it: check it, then make it and each directory above it yours (or root's) and not writable by others (chmod go-w)"
# What a provider's table holds besides a custom provider's definition: where this daemon's owner lets
# personal and inline tokens go, and where exec sessions send (never an org token's: the org's own say).
PROVIDER_KEYS = ("hosts", "plain_http_hosts", "ca_file", "token_url", "endpoint", "endpoints", PRESIGN_KEY)


def _provider_config(path: pathlib.Path, name: str, body: Any, where: str = "") -> Reach:
    where = where or f"config {path}: providers.{name}"
    if ".custom." not in where and name not in PROVIDERS:
        raise InvalidArgumentError(f"config {path}: unknown provider [providers.{name}]; use one of {', '.join(PROVIDERS)}, "
                                   f"or define one as [providers.custom.{name[:40]}]")
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"{where} must be a table")
    for key in body:
        if key not in PROVIDER_KEYS:
            raise InvalidArgumentError(f"{where}: unknown key {key}; known keys: {', '.join(PROVIDER_KEYS)}")
    if PRESIGN_KEY in body and name != PRESIGN_PROVIDER:
        raise InvalidArgumentError(f"{where}: {PRESIGN_KEY} is for [providers.{PRESIGN_PROVIDER}] only (presigned URLs "
                                   "are SigV4's)")
    for key in ("hosts", "plain_http_hosts"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgumentError(f"{where}.{key} must be a list of \"host\" or \"host:port\" strings")
    ca_pem = b""
    ca_file = body.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str):
            raise InvalidArgumentError(f"{where}.ca_file must be a path")
        ca_path = (path.parent / ca_file).expanduser()
        try:
            read = read_trusted(ca_path, f"{where}.ca_file", _WRITABLE_FIX)
        except OSError:
            read = None
        if read is None:
            raise InvalidArgumentError(f"{where}.ca_file {ca_path} does not exist or is not a readable file")
        ca_pem = read
    token_url = body.get("token_url", "")
    if not isinstance(token_url, str):
        raise InvalidArgumentError(f"{where}.token_url must be a URL string: https://, or http:// for a loopback "
                                   "plain_http_hosts entry")
    return make_reach(hosts=body.get("hosts", []), plain_http_hosts=body.get("plain_http_hosts", []), ca_pem=ca_pem,
                      token_url=token_url, owner=Owner.CONFIG, where=where)


def _host_endpoints(path: pathlib.Path, name: str, value: Any) -> dict[str, str]:
    where = f"config {path}: providers.{name}.endpoints"
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where} must be a table of \"official host\" = \"https://host:port\"")
    return {str(host).lower(): _endpoint(path, name, origin, f"{where}.\"{host}\"") for host, origin in value.items()}


def _endpoint(path: pathlib.Path, name: str, value: Any, where: str = "") -> str:
    where = where or f"config {path}: providers.{name}.endpoint"
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where} must be an origin like \"https://host:port\"")
    url = parse_url(value, where)
    if url.scheme not in ("https", "http") or not url.host or url.has_userinfo or url.path not in ("", "/") or url.query:
        raise InvalidArgumentError(f"{where} must be an origin like \"https://host:port\" (no path, no user info)")
    return f"{url.scheme}://{url.host_header}"


def _presign_max(path: pathlib.Path, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= PRESIGN_MAX:
        raise InvalidArgumentError(f"config {path}: providers.{PRESIGN_PROVIDER}.{PRESIGN_KEY} must be a whole number "
                                   f"of seconds from 0 (no presigned URLs) to {PRESIGN_MAX}, not {value!r}")
    return value


def _custom(path: pathlib.Path, tables: Any) -> dict[str, CustomDefinition]:
    if not isinstance(tables, dict):
        raise InvalidArgumentError(f"config {path}: providers.custom must hold tables like [providers.custom.NAME]")
    out = {}
    for name, body in tables.items():
        where = f"config {path}: providers.custom.{name}"
        if not isinstance(body, dict):
            raise InvalidArgumentError(f"{where} must be a table")
        if PRESIGN_KEY in body:
            raise InvalidArgumentError(f"{where}: {PRESIGN_KEY} is for [providers.{PRESIGN_PROVIDER}] only")
        out[name] = parse_definition(name, body, where, tuple(k for k in PROVIDER_KEYS if k != PRESIGN_KEY))
    return out


def load_config(path: pathlib.Path) -> Config:
    """Read `path` if it exists; raise InvalidArgumentError naming any bad key, and
    FailedPreconditionError if another user could have written it (or a file it names)."""
    try:
        raw = read_trusted(path, "the config", _WRITABLE_FIX)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read config {path}: {exc.strerror}") from exc
    if raw is None:
        return Config()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"config {path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for table, body in doc.items():
        if table == "providers":
            if not isinstance(body, dict):
                raise InvalidArgumentError(f"config {path}: providers must hold tables like [providers.ibm]")
            custom = body.get("custom", {})
            body = {name: b for name, b in body.items() if name != "custom"}
            values["providers"] = {name: _provider_config(path, name, b) for name, b in body.items()}
            values["custom"] = _custom(path, custom)
            for name in values["custom"]:
                body[name] = custom[name]
                values["providers"][name] = _provider_config(path, name, {k: v for k, v in custom[name].items()
                                                                          if k not in CUSTOM_KEYS},
                                                             f"config {path}: providers.custom.{name}")
            values["endpoints"] = {name: _endpoint(path, name, b.get("endpoint")) for name, b in body.items()
                                   if b.get("endpoint") is not None}
            values["host_endpoints"] = {name: _host_endpoints(path, name, b["endpoints"]) for name, b in body.items()
                                        if b.get("endpoints") is not None}
            values["presign_max_seconds"] = _presign_max(path, body.get(PRESIGN_PROVIDER, {}).get(PRESIGN_KEY, 0))
            continue
        known = _SCHEMA.get(table)
        if known is None:
            raise InvalidArgumentError(
                f"config {path}: unknown table [{table}]; known tables: {', '.join(_SCHEMA)}, providers.NAME")
        if not isinstance(body, dict):
            raise InvalidArgumentError(f"config {path}: {table} must be a table [{table}]")
        for key, value in body.items():
            if key not in known:
                raise InvalidArgumentError(f"config {path}: unknown key {table}.{key}; known keys: {', '.join(known)}")
            field, kind, check, expected = known[key]
            if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
                raise InvalidArgumentError(f"config {path}: {table}.{key} must be {expected}, not {value!r}")
            values[field] = value
    return Config(**values)
