"""An org server in memory, for the org domain's in-process tests (org/server_api.OrgServerApi).

The way httpx's MockTransport stands in for the network: the domain classes take it where the
daemon gives them wire/org_link.OrgClient, and it records what they ask. It answers as strictly
as the real client's contract: a Watch stream yields the events queued for it, then ends (or
raises what was queued); a call queued to fail raises the error the client would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from qpu_broker.forward.forwarder import Reply
from qpu_broker.org.records import (
    Enrolled,
    Member,
    PushedToken,
    RelayForward,
    RelaySign,
    WatchEvent,
)
from qpu_broker.tokens.org_login import OrgLogin
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota, UsageRecord


class MemoryStream:
    def __init__(self, items: list[WatchEvent | BaseException]) -> None:
        self._items = list(items)
        self.cancelled = False

    async def next(self) -> WatchEvent:
        await asyncio.sleep(0)
        if not self._items:
            raise StopAsyncIteration
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


@dataclasses.dataclass
class MemoryOrgServer:
    servers: tuple[str, ...] = ("org-a.test:443", "org-b.test:443")
    member: Member = dataclasses.field(default_factory=lambda: Member("acme", "ada", "member"))
    secrets: dict[str, tuple[int, bytes]] = dataclasses.field(default_factory=dict)  # server id -> version, secret
    streams: list[list[WatchEvent | BaseException]] = dataclasses.field(default_factory=list)  # one per watch()
    quotas: list[Quota] = dataclasses.field(default_factory=list)
    fail: dict[str, BaseException] = dataclasses.field(default_factory=dict)  # method -> what it raises
    calls: list[tuple[str, object]] = dataclasses.field(default_factory=list)  # (method, what was asked)
    reported: list[UsageRecord] = dataclasses.field(default_factory=list)
    current: int = 0
    login_id: str = "org-a.test:443"
    has_device: bool = True
    device_login: OrgLogin | None = None

    @property
    def server(self) -> str:
        return self.servers[self.current] if self.servers else ""

    def _ask(self, method: str, what: object) -> None:
        self.calls.append((method, what))
        if method in self.fail:
            raise self.fail[method]

    def connect(self, login: OrgLogin, current: int = 0, enrolled: Enrolled | None = None) -> None:
        self.servers, self.login_id, self.current, self.device_login = login.servers, login.login_id, current, login

    def forget(self, servers: bool = False) -> None:
        self.has_device = False
        if servers:
            self.servers, self.current, self.login_id = (), 0, ""

    async def close(self) -> None:
        pass

    def switch(self) -> None:
        if len(self.servers) > 1:
            self.current = (self.current + 1) % len(self.servers)

    def expire_access(self) -> None:
        self.calls.append(("expire_access", None))

    async def enroll(self, servers: tuple[str, ...], ca_pem: bytes, code: bytes, login_id: str) -> Enrolled:
        raise NotImplementedError

    async def redeem_legacy_key(self, at: int, save: Callable[[OrgLogin], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def whoami(self, at: int) -> Member:
        self._ask("WhoAmI", at)
        return self.member

    async def watch(self, at: int, after_revision: int, store_id: str) -> MemoryStream:
        self._ask("Watch", (at, after_revision, store_id))
        return MemoryStream(self.streams.pop(0) if self.streams else [])

    async def fetch_secrets(self, ids: Sequence[str]) -> dict[str, tuple[int, Secret]]:
        self._ask("FetchSecrets", list(ids))
        return {i: (self.secrets[i][0], Secret(self.secrets[i][1])) for i in ids if i in self.secrets}

    async def report_usage(self, records: Sequence[UsageRecord]) -> None:
        self._ask("ReportUsage", [r.id for r in records])
        self.reported += records

    async def reserve(self, token_id: str) -> tuple[str, list[Quota]]:
        self._ask("Reserve", token_id)
        return f"res-{len(self.calls)}", list(self.quotas)

    async def list_quotas(self) -> list[Quota]:
        self._ask("ListQuotas", None)
        return list(self.quotas)

    async def relay_forward(self, relay: RelayForward) -> Reply:
        self._ask("RelayForward", relay)

        async def once():
            yield b"relayed"

        return Reply(200, [("content-type", "text/plain")], "HTTP/1.1", once())

    async def relay_sign(self, relay: RelaySign) -> list[tuple[str, str]]:
        self._ask("RelaySign", relay)
        return [("authorization", "AWS4-HMAC-SHA256 signed-by-the-org-server")]

    async def create_token(self, name: str, provider: str, secret: bytes, relay: bool, expires_in: int) -> PushedToken:
        raise NotImplementedError

    async def get_token(self, server_id: str, name: str) -> PushedToken:
        raise NotImplementedError

    async def update_token(self, server_id: str, name: str, new_name: str | None, secret: bytes | None,
                           expires_in: int | None) -> PushedToken:
        raise NotImplementedError

    async def delete_token(self, server_id: str, name: str) -> None:
        self._ask("DeleteToken", (server_id, name))
