"""Where a credential may go: its provider's official hosts over https, plus what
the credential's owner adds (its `Reach`: the daemon's config for personal and
inline tokens, the org's settings for org tokens). Everything else is
PERMISSION_DENIED, naming the host and whom to ask."""

from __future__ import annotations

import ipaddress

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError

from qpu_broker.common.reach import Owner, Reach
from qpu_broker.common.url import Url
from qpu_broker.providers.base import Scheme


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_belongs(url: Url, scheme: Scheme, reach: Reach) -> bool:
    """Whether the URL's host is one of this provider's (official, or in `reach`)."""
    return (url.netloc in reach.hosts or url.netloc in reach.plain_http_hosts
            or (url.port == 443 and scheme.official(url.host)))


def check_destination(url: Url, scheme: Scheme, reach: Reach) -> None:
    """Refuse any destination the credential must not reach.

    `reach` is the credential owner's: never a member's config for an org token."""
    provider = scheme.provider
    if url.scheme not in ("https", "http"):
        raise PermissionDeniedError(f"{provider} credentials go only over https, not {url.scheme or 'a bare path'}")
    if url.has_userinfo:
        raise PermissionDeniedError(f"a URL with user info (user@host) is refused for {provider}: remove it")
    if not url.host:
        raise InvalidArgumentError(f"the URL for {provider} has no host")
    where = url.netloc
    org = reach.owner is Owner.ORG
    whose = "this organization token" if org else f"{provider} credentials"
    if url.scheme == "http":
        if where not in reach.plain_http_hosts:
            raise PermissionDeniedError(
                f"plain http to {where} is refused for {whose}: use https (http is allowed only for "
                f"loopback test hosts; {reach.how_to_widen(provider, plain_http=True)})")
    elif where not in reach.hosts and not (url.port == 443 and scheme.official(url.host)):
        # Official hosts only by exact name on 443: no IP literals, no trailing
        # dots, no look-alikes (ibm.com.example.org, xn-- spoofs, other ports).
        if _is_ip(url.host):
            raise PermissionDeniedError(
                f"{where} is an IP address, not one of {provider}'s hosts, and is refused for {whose}: "
                f"name the host, or {reach.how_to_widen(provider)}")
        raise PermissionDeniedError(
            f"{where} is not one of {provider}'s hosts: {whose} {'goes' if org else 'go'} only to "
            f"{', '.join(scheme.hosts)}{' (and region hosts)' if scheme.host_patterns else ''}; "
            f"{reach.how_to_widen(provider)}")
