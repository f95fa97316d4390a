"""Where a credential may go: its provider's official hosts over https, plus what
the daemon's own config adds. Everything else is PERMISSION_DENIED, naming the host."""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError

from .config import ProviderConfig
from .providers.base import Scheme


@dataclasses.dataclass(frozen=True)
class Destination:
    url: str
    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_belongs(url: str, scheme: Scheme, config: ProviderConfig) -> bool:
    """Whether the URL's host is one of this provider's (official, or added by config)."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return netloc in config.hosts or netloc in config.plain_http_hosts or (port == 443 and scheme.official(host))


def check_destination(url: str, scheme: Scheme, config: ProviderConfig, extra_hosts: tuple[str, ...] = ()) -> Destination:
    """Parse `url` and refuse any destination the provider's credential must not reach.

    `extra_hosts` are https "host:port"s one token may also reach (an org admin's
    allowed hosts for an org token)."""
    provider = scheme.provider
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot parse the URL for {provider}: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise PermissionDeniedError(f"{provider} credentials go only over https, not {parts.scheme or 'a bare path'}")
    if "@" in parts.netloc:
        raise PermissionDeniedError(f"a URL with user info (user@host) is refused for {provider}: remove it")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise InvalidArgumentError(f"the URL for {provider} has no host")
    host = raw_host.lower()
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parts.scheme == "http":
        if netloc not in config.plain_http_hosts:
            raise PermissionDeniedError(
                f"plain http to {netloc} is refused for {provider}: use https (http is allowed only for "
                f"loopback hosts in [providers.{provider}] plain_http_hosts)")
    elif netloc not in config.hosts and netloc not in extra_hosts and not (port == 443 and scheme.official(host)):
        # Official hosts only by exact name on 443: no IP literals, no trailing
        # dots, no look-alikes (ibm.com.example.org, xn-- spoofs, other ports).
        if _is_ip(host):
            raise PermissionDeniedError(
                f"{netloc} is an IP address, not one of {provider}'s hosts: name the host, "
                f"or add {netloc} to [providers.{provider}] hosts")
        raise PermissionDeniedError(
            f"{netloc} is not one of {provider}'s hosts: {provider} credentials go only to "
            f"{', '.join(scheme.hosts)}{' (and region hosts)' if scheme.host_patterns else ''}, "
            f"or to hosts added in [providers.{provider}] hosts")
    return Destination(url, parts.scheme, host, port)
