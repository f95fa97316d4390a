"""What the daemon's answers become, other than tokens: the agent's status, its link to the org,
a store check, an audit check, a resolve's preview.

Apart from broker.py, and loaded by the calls that build them: each frozen dataclass compiles its
methods when it is made (about half a millisecond here), and `qpu-broker token list` needs none.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokens import QpuTokenType
    from .usage import Quota


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    locked: bool
    lock_reason: str
    key_source: str
    personal_tokens: int
    version: str
    pid: int
    uptime_seconds: float
    store_path: str
    socket_path: str
    warnings: tuple[str, ...] = ()  # what the agent could not do for its own protection
    key_memory_locked: bool = False


@dataclasses.dataclass(frozen=True)
class DamagedToken:
    id: str
    name: str
    provider: str
    reason: str


@dataclasses.dataclass(frozen=True)
class OrgStatus:
    """The daemon's link to its organization server."""

    state: str  # not-logged-in | connecting | connected | disconnected | unavailable | locked
    server: str
    org: str
    user: str
    role: str
    tokens: int
    seconds_since_contact: float
    grace_seconds: float
    detail: str
    usage_waiting: int = 0  # records of your org token use not yet acknowledged by the server (kept on disk)
    quotas: tuple[Quota, ...] = ()  # your quotas, with this window's use and when it resets
    metered_tokens: tuple[str, ...] = ()  # org tokens a quota binds: each use is counted by the server first
    relay_tokens: tuple[str, ...] = ()  # org tokens whose calls the org server makes (their secret never comes here)
    servers: tuple[str, ...] = ()  # every server of the login, in the order tried; `server` is the one connected
    cached_tokens: tuple[str, ...] = ()  # org tokens whose secret the daemon holds (an admin opted them into caching)
    device_id: str = ""  # this daemon's device in the org (enrolled by `org_login`)
    device_expires_us: int = 0  # when it expires (service devices), µs since the epoch; 0: never


@dataclasses.dataclass(frozen=True)
class ResolvedToken:
    """A preview of the token a call would use: where it came from, never its value."""

    field: str
    token_type: QpuTokenType
    name: str | None
    id: str | None


@dataclasses.dataclass(frozen=True)
class CheckResult:
    checked: int
    damaged: list[DamagedToken]
    rollback: str = ""  # the store is older than (or not) the one this machine last saw; nothing checked


@dataclasses.dataclass(frozen=True)
class AuditCheck:
    """The local audit log's chain, checked by the daemon (it holds the chain's key)."""

    entries: int  # entries verified, from the first
    problem: str  # empty: intact up to the anchor; else what is wrong and where
    path: str
