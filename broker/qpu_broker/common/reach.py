"""Where a credential may go besides its provider's official hosts: a `Reach`.

One shape for both owners of a credential. A personal or inline token's reach
is the daemon's own `[providers.NAME]` config; an organization token's reach is
what the org's admins set (org-wide per provider, plus per token), pushed by the
org server. Nothing here is secret, and nothing here opens a network socket.
The daemon's config, the org server and the daemon's org link all validate
entries here, so the three cannot disagree about what a host or CA is.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError
from qpu_broker_client.providers import PROVIDERS

from qpu_broker.common.url import netloc, parse_url


class Owner(enum.Enum):
    """Who may widen a reach, for messages that say whom to ask."""

    CONFIG = "config"  # the daemon's owner, in config.toml
    ORG = "org"  # the organization's admins, on the org server


@dataclasses.dataclass(frozen=True)
class Reach:
    hosts: tuple[str, ...] = ()  # "host:port" (https)
    plain_http_hosts: tuple[str, ...] = ()  # loopback "host:port" where http is allowed
    ca_pem: bytes = b""  # extra CA certificates trusted for this reach's TLS
    token_url: str = ""  # the exchange endpoint; empty: the provider's official one
    owner: Owner = Owner.CONFIG

    def how_to_widen(self, provider: str, *, plain_http: bool = False) -> str:
        """Who may widen this reach and how; `plain_http`: for an http:// host (its own key and option)."""
        if self.owner is Owner.ORG:
            option = "--plain-http-host" if plain_http else "--host"
            return (f"an org admin can allow more ({option} of 'qpu-broker org-server provider set', or of "
                    "'token set-reach' for the token alone)")
        table = provider if provider in PROVIDERS else f"custom.{provider}"
        return f"add it to [providers.{table}] {'plain_http_hosts' if plain_http else 'hosts'} in your config"


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


def parse_hosts(entries: Iterable[str], where: str) -> tuple[str, ...]:
    try:
        parsed = [split_host_port(e, 443) for e in entries]
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None
    return tuple(netloc(h, p) for h, p in parsed if p is not None)


def parse_plain_http_hosts(entries: Iterable[str], where: str) -> tuple[str, ...]:
    out = []
    for entry in entries:
        try:
            host, port = split_host_port(entry, None)
        except ValueError as exc:
            raise InvalidArgumentError(f"{where}: {exc}") from None
        if port is None or not is_loopback(host):
            raise InvalidArgumentError(
                f"{where}: {entry!r} is not a loopback host:port; plain http is only for local fakes "
                "(127.0.0.1:PORT, [::1]:PORT, localhost:PORT)")
        out.append(netloc(host, port))
    return tuple(out)


ORG_REACH_MAX = 32 * 1024  # an org's settings for a provider, or a token's own: bytes of CA and hosts


def check_ca_pem(pem: bytes, where: str) -> bytes:
    """PEM CA certificates, or InvalidArgumentError naming `where`."""
    if not pem:
        return b""
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidArgumentError(f"{where} is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    return pem


def check_token_url(url: str, where: str) -> str:
    if not url:
        return ""
    try:
        parsed = parse_url(url, where)  # the parser it is sent with
    except PermissionDeniedError as exc:
        raise InvalidArgumentError(str(exc)) from None
    if parsed.has_userinfo:
        raise InvalidArgumentError(f"{where} must not hold user info (user@host): the key goes in the request body")
    if parsed.scheme not in ("https", "http") or not parsed.host or (
            parsed.scheme == "http" and not is_loopback(parsed.host)):
        raise InvalidArgumentError(f"{where} must be an https:// URL (http:// only for a loopback plain_http_hosts entry)")
    return url


def make_reach(*, hosts: Iterable[str] = (), plain_http_hosts: Iterable[str] = (), ca_pem: bytes = b"",
               token_url: str = "", owner: Owner, where: str) -> Reach:
    """A validated Reach; every error names `where` and the bad entry."""
    return Reach(parse_hosts(list(hosts), f"{where} hosts"),
                 parse_plain_http_hosts(list(plain_http_hosts), f"{where} plain_http_hosts"),
                 check_ca_pem(ca_pem, f"{where} CA"), check_token_url(token_url, f"{where} token_url"), owner)


def bounded_org_reach(reach: Reach, where: str) -> Reach:
    """An org's settings as an admin writes them (org-wide, or a token's own), at most ORG_REACH_MAX
    bytes: they travel to every member (checked when written; what is stored is read as it is)."""
    size = len(reach.ca_pem) + len(reach.token_url) + sum(len(h) for h in (*reach.hosts, *reach.plain_http_hosts))
    if size > ORG_REACH_MAX:
        raise InvalidArgumentError(f"{where}: CA certificates and hosts together are {size} bytes, over "
                                   f"{ORG_REACH_MAX}: give the CA that signs the provider's certificate, not a bundle")
    return reach


def merge(org_wide: Reach, own: Reach) -> Reach:
    """A token's reach: the org-wide settings for its provider, widened by its own."""
    def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*a, *b)))

    ca = org_wide.ca_pem if not own.ca_pem else (org_wide.ca_pem.rstrip(b"\n") + b"\n" + own.ca_pem).lstrip(b"\n")
    return Reach(union(org_wide.hosts, own.hosts), union(org_wide.plain_http_hosts, own.plain_http_hosts), ca,
                 own.token_url or org_wide.token_url, Owner.ORG)
