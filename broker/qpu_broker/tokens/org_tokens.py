"""The daemon's organization tokens as the domain sees them: handles, not secrets.

The org domain (org/: its state, kept current by the Watch sync) holds them; resolution
uses them through `OrgTokens` (org/access.OrgAccess), so tokens/ imports neither org/ nor the wire.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from qpu_broker_client.secret import Secret

from qpu_broker.common.reach import Reach


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
