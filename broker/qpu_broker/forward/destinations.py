"""Where a credential may go: its provider's official hosts over https, plus what
the credential's owner adds (its `Reach`: the daemon's config for personal and
inline tokens, the org's settings for org tokens). Everything else is
PERMISSION_DENIED, naming the host and whom to ask."""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError

from qpu_broker.common.reach import Owner, Reach, netloc
from qpu_broker.providers.base import Scheme


@dataclasses.dataclass(frozen=True)
class Destination:
    url: str
    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        return netloc(self.host, self.port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_belongs(url: str, scheme: Scheme, reach: Reach) -> bool:
    """Whether the URL's host is one of this provider's (official, or in `reach`)."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    where = netloc(host, port)
    return where in reach.hosts or where in reach.plain_http_hosts or (port == 443 and scheme.official(host))


def check_destination(url: str, scheme: Scheme, reach: Reach) -> Destination:
    """Parse `url` and refuse any destination the credential must not reach.

    `reach` is the credential owner's: never a member's config for an org token."""
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
    where = netloc(host, port)
    org = reach.owner is Owner.ORG
    whose = "this organization token" if org else f"{provider} credentials"
    if parts.scheme == "http":
        if where not in reach.plain_http_hosts:
            raise PermissionDeniedError(
                f"plain http to {where} is refused for {whose}: use https (http is allowed only for "
                f"loopback test hosts; {reach.how_to_widen(provider)})")
    elif where not in reach.hosts and not (port == 443 and scheme.official(host)):
        # Official hosts only by exact name on 443: no IP literals, no trailing
        # dots, no look-alikes (ibm.com.example.org, xn-- spoofs, other ports).
        if _is_ip(host):
            raise PermissionDeniedError(
                f"{where} is an IP address, not one of {provider}'s hosts, and is refused for {whose}: "
                f"name the host, or {reach.how_to_widen(provider)}")
        raise PermissionDeniedError(
            f"{where} is not one of {provider}'s hosts: {whose} {'goes' if org else 'go'} only to "
            f"{', '.join(scheme.hosts)}{' (and region hosts)' if scheme.host_patterns else ''}; "
            f"{reach.how_to_widen(provider)}")
    return Destination(url, parts.scheme, host, port)
