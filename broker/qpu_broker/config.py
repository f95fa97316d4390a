"""The daemon's configuration: a frozen dataclass built once at start-up.

Built from defaults, then `<config dir>/config.toml`; validated with messages
that name the bad key. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import PROVIDERS

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """`[providers.NAME]`: what the daemon's owner adds to a provider's official hosts."""

    hosts: tuple[str, ...] = ()  # extra "host" (port 443) or "host:port", https only
    plain_http_hosts: tuple[str, ...] = ()  # loopback "host:port" where http is allowed
    ca_file: pathlib.Path | None = None  # an extra CA trusted for this provider's hosts
    token_url: str | None = None  # the exchange endpoint (IBM IAM, Q-CTRL)


@dataclasses.dataclass(frozen=True)
class Config:
    name_max_chars: int = 128
    secret_max_bytes: int = 16 * 1024
    log_level: str = "info"
    # Argon2id is calibrated to take at least this long (never less than 0.25 s).
    kdf_seconds: float = 0.25
    # How long SIGTERM waits for in-flight calls before cutting them off.
    drain_seconds: float = 10.0
    forward_max_body_bytes: int = 64 * 1024 * 1024
    forward_timeout_seconds: float = 60.0
    # How long cached org handles keep working while the org server is unreachable.
    org_grace_seconds: float = 900.0
    providers: Mapping[str, ProviderConfig] = dataclasses.field(default_factory=dict)

    def provider(self, name: str) -> ProviderConfig:
        return self.providers.get(name, ProviderConfig())


# table -> key -> (Config field, type, check, what a valid value is)
_SCHEMA: dict[str, dict[str, tuple[str, type, Any, str]]] = {
    "limits": {
        "name_max_chars": ("name_max_chars", int, lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
        "secret_max_bytes": ("secret_max_bytes", int, lambda v: 1 <= v <= 1024 * 1024, "an integer from 1 to 1048576"),
    },
    "agent": {
        "log_level": ("log_level", str, lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
        "drain_seconds": ("drain_seconds", (int, float), lambda v: 0 <= v <= 600, "a number of seconds from 0 to 600"),
    },
    "store": {
        "kdf_seconds": ("kdf_seconds", (int, float), lambda v: 0.25 <= v <= 60, "a number of seconds from 0.25 to 60"),
    },
    "org": {
        "grace_seconds": ("org_grace_seconds", (int, float), lambda v: 0 <= v <= 7 * 86400, "a number of seconds up to 604800"),
    },
    "forward": {
        "max_body_bytes": ("forward_max_body_bytes", int, lambda v: 1 <= v <= 1024**3, "an integer from 1 to 1073741824"),
        "timeout_seconds": ("forward_timeout_seconds", (int, float), lambda v: 0 < v <= 3600, "a number of seconds up to 3600"),
    },
}
_PROVIDER_KEYS = ("hosts", "plain_http_hosts", "ca_file", "token_url")


def split_host_port(entry: str, default_port: int | None) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]:port" -> (lower-case host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port {port!r}")
    number = int(port) if port else default_port
    if number is not None and not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    if not host or any(c in host for c in "/@?#% \t"):
        raise ValueError(f"bad host {host!r}")
    return host.lower(), number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _provider_config(path: pathlib.Path, name: str, body: Any) -> ProviderConfig:
    where = f"config {path}: providers.{name}"
    if name not in PROVIDERS:
        raise InvalidArgumentError(f"config {path}: unknown provider [providers.{name}]; use one of {', '.join(PROVIDERS)}")
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"{where} must be a table")
    for key in body:
        if key not in _PROVIDER_KEYS:
            raise InvalidArgumentError(f"{where}: unknown key {key}; known keys: {', '.join(_PROVIDER_KEYS)}")
    lists = {}
    for key in ("hosts", "plain_http_hosts"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgumentError(f"{where}.{key} must be a list of \"host\" or \"host:port\" strings")
        try:
            parsed = [split_host_port(v, None if key == "plain_http_hosts" else 443) for v in value]
        except ValueError as exc:
            raise InvalidArgumentError(f"{where}.{key}: {exc}") from None
        if key == "plain_http_hosts":
            for (host, port), raw in zip(parsed, value, strict=True):
                if port is None or not is_loopback(host):
                    raise InvalidArgumentError(
                        f"{where}.plain_http_hosts: {raw!r} is not a loopback host:port; plain http is only "
                        "for local fakes (127.0.0.1:PORT, [::1]:PORT, localhost:PORT)")
        lists[key] = tuple(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed)
    ca_file = body.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str):
            raise InvalidArgumentError(f"{where}.ca_file must be a path")
        ca_file = (path.parent / ca_file).expanduser()
        if not ca_file.is_file():
            raise InvalidArgumentError(f"{where}.ca_file {ca_file} does not exist or is not a file")
    token_url = body.get("token_url")
    if token_url is not None and (not isinstance(token_url, str) or not token_url.startswith(("https://", "http://"))):
        raise InvalidArgumentError(f"{where}.token_url must be an https:// URL")
    return ProviderConfig(lists["hosts"], lists["plain_http_hosts"], ca_file, token_url)


def load_config(path: pathlib.Path) -> Config:
    """Read `path` if it exists; raise InvalidArgumentError naming any bad key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"config {path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for table, body in doc.items():
        if table == "providers":
            if not isinstance(body, dict):
                raise InvalidArgumentError(f"config {path}: providers must hold tables like [providers.ibm]")
            values["providers"] = {name: _provider_config(path, name, b) for name, b in body.items()}
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
