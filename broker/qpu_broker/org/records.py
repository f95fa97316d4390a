"""What the org server says and is asked, and what the link reports, as plain records: the gRPC
client (wire/org_link.py) turns its messages into these and these into its messages, and the
daemon's OrganizationService turns LinkStatus into its answer, so the org domain never sees proto.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from qpu_broker_client.errors import UnavailableError
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota

from qpu_broker.common.reach import Owner, Reach
from qpu_broker.tokens.org_login import OrgLogin

ORG_ONLY = Reach(owner=Owner.ORG)  # the official hosts and nothing else: an org's bad or missing settings

# A Watch event's kinds (org_pb2.WatchEvent.Kind).
HEARTBEAT, SNAPSHOT, CHANGED, DELETED, CAUGHT_UP = "heartbeat", "snapshot", "changed", "deleted", "caught-up"


@dataclasses.dataclass(frozen=True)
class PushedToken:
    """An org token as the server sent it (no handle yet: OrgState gives it one)."""

    id: str
    name: str
    provider: str
    version: int
    own: Reach  # the token's own settings, merged with the org-wide ones here
    reach: Reach | None  # the effective reach, from a server that sends it with each token
    created_us: int
    updated_us: int
    metered: bool = False
    relay: bool = False
    expires_us: int = 0


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    kind: str
    tokens: tuple[PushedToken, ...] = ()
    revision: int = 0
    store_id: str = ""
    more: bool = False  # SNAPSHOT: more pages follow
    heartbeat_seconds: float = 0.0  # SNAPSHOT and CAUGHT_UP (0: not said)
    org_reach: Mapping[str, Reach] = dataclasses.field(default_factory=dict)  # SNAPSHOT: by provider
    custom_providers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # SNAPSHOT: JSON by name


@dataclasses.dataclass(frozen=True)
class Member:
    """Who this device is in which org (WhoAmI, Enroll)."""

    org: str
    user: str
    role: str


@dataclasses.dataclass(frozen=True)
class RelayHeaders:
    """The parts of a call both relay calls carry."""

    token_id: str
    provider: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    region: str
    service: str


@dataclasses.dataclass(frozen=True)
class RelayForward:
    call: RelayHeaders
    body: bytes = dataclasses.field(repr=False)
    timeout_seconds: float
    luna_qpu_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)  # body field -> token server id
    luna_api_key: Secret | None = None  # the call's own Luna key, for this call only


@dataclasses.dataclass(frozen=True)
class RelaySign:
    call: RelayHeaders
    body_sha256: str
    body_bytes: int


class NotThisOrg(UnavailableError):
    """A listed server that is not the org this daemon's copy came from: not used, the next is tried."""


@dataclasses.dataclass(frozen=True)
class Enrolled:
    """A device just enrolled (Enroll): at which of the login's servers, as whom, and its first access token."""

    at: int
    login: OrgLogin
    member: Member
    access_token: str = dataclasses.field(repr=False)
    access_expires_us: int = 0


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
