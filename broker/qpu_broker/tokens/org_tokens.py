"""The daemon's organization tokens as the domain sees them: handles, not secrets.

The link to the org server (wire/org_link.py) keeps them current; resolution
uses them through `OrgTokens`, so the domain never imports the wire layer.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota

from qpu_broker.common.reach import Reach

NOT_LOGGED_IN, CONNECTING, CONNECTED, DISCONNECTED, UNAVAILABLE, LOCKED, REMOVED, KEY_REVOKED = (
    "not-logged-in", "connecting", "connected", "disconnected", "unavailable", "locked", "removed", "key-revoked")


@dataclasses.dataclass(frozen=True)
class LinkStatus:
    state: str
    server: str  # the one connected to (or tried next)
    org: str
    user: str
    role: str
    tokens: int
    seconds_since_contact: float
    grace_seconds: float
    detail: str
    usage_waiting: int  # records of org token use the server has not acknowledged yet (on disk)
    quotas: list[Quota]  # the member's quotas and their use, as last heard from the server
    metered_tokens: list[str]  # names of the org tokens a quota binds (each use reserved with the server)
    relay_tokens: list[str]  # names of the relay tokens (their calls go to the org server)
    servers: list[str]  # every server of the login, in the order they are tried
    cached_tokens: list[str]  # names of the cached tokens (their secrets are held here, in memory)
    device_id: str = ""  # this daemon's device in the org
    device_expires_us: int = 0  # 0: it does not expire


@dataclasses.dataclass(frozen=True)
class OrgToken:
    handle: str
    server_id: str
    name: str
    provider: str
    version: int
    reach: Reach  # where its secret may go besides the official hosts: the org's say alone
    created_us: int
    updated_us: int
    metered: bool = False  # a quota binds this member's use: each use is reserved with the server first
    relay: bool = False  # its secret never leaves the org server: calls with it go there
    expires_us: int = 0  # the org's end for it (0: never): past it, it is listed but not used


class OrgTokens(Protocol):
    """What resolving a call needs from the organization link."""

    def find(self, *, handle: str = "", name: str = "") -> OrgToken: ...
    def provider_reach(self, provider: str) -> Reach: ...
    def secret(self, token: OrgToken) -> Secret: ...
    def cache_key(self, token: OrgToken) -> str: ...
    async def reserve(self, token: OrgToken) -> str: ...  # the reservation the use's record names
