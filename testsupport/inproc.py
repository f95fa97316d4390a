"""The daemon's domain parts in the test's own process: the vault, the resolver and the forwarder,
wired by daemon/main.py's own functions (open_vault, open_forwarding) on a home in a temp dir.

No daemon process, no gRPC socket: a test calls the parts the servicers call. The upstream is
real: the forwarder sends over its pooled aiohttp to the loopback fakes (testsupport/fakes.py),
whose threads answer while this process's event loop waits, so what a test sees is what
aiohttp put on the wire (headers it skipped, no redirect followed, the reach's CAs), not an
imitation of it. The org link is not here: `NotLoggedIn` stands for a daemon that never joined
an org (its own in-process seam is the org domain's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from qpu_broker.common.config import Config, load_config
from qpu_broker.common.reach import Reach
from qpu_broker.daemon.main import Vault, forgetting, open_forwarding, open_vault
from qpu_broker.forward.forwarder import ForwardCall, Forwarder, Reply, SignCall
from qpu_broker.forward.use_records import UseRecords
from qpu_broker.providers import Schemes
from qpu_broker.providers.exchange_cache import ExchangeCache
from qpu_broker.store.db import TokenRecord
from qpu_broker.tokens.audit_log import AuditLog
from qpu_broker.tokens.events import Events
from qpu_broker.tokens.kinds import INLINE, PERSONAL
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.resolution import Ref, Resolver
from qpu_broker.tokens.usage_queue import UsageQueue, UsageRecorder
from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.paths import Paths, resolve_paths
from qpu_broker_client.secret import Secret
from qpu_broker_client.trust import ensure_private_dir

T = TypeVar("T")


def personal(name: str) -> Ref:
    return Ref(PERSONAL, name=name)


def inline(secret: str) -> Ref:
    return Ref(INLINE, secret=Secret(secret))


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


class NotLoggedIn:
    """The org side of a daemon that never joined an organization: no org tokens, no custom
    providers of its own, and nothing ever relayed (every reference to an org token is refused)."""

    def _none(self) -> FailedPreconditionError:
        return FailedPreconditionError("not logged in to an organization (an in-process daemon has no org link)")

    def find(self, *, handle: str = "", name: str = "") -> OrgToken:
        raise self._none()

    def provider_reach(self, provider: str) -> Reach:
        raise self._none()

    def secret(self, token: OrgToken) -> Secret:
        raise self._none()

    def cache_key(self, token: OrgToken) -> str:
        raise self._none()

    async def reserve(self, token: OrgToken) -> str:
        raise self._none()

    async def relay_forward(self, *args: Any, **kwargs: Any) -> Reply:
        raise self._none()

    async def relay_sign(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        raise self._none()

    def custom_providers(self) -> Mapping:
        return {}

    def login_id(self) -> tuple[str, str]:
        return "", ""


class InProcess:
    """One daemon's parts rooted at `home` (QPU_BROKER_HOME), config read from its config.toml as the
    daemon reads it. Async calls run on this object's own loop (`run`), the loop its events use."""

    def __init__(self, home: pathlib.Path, environ: Mapping[str, str] | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.home = home
        self.paths: Paths = resolve_paths({"QPU_BROKER_HOME": str(home)})
        for directory in (self.paths.config_dir, self.paths.data_dir, self.paths.state_dir):
            ensure_private_dir(directory)  # as the daemon's start-up makes them
        self.config: Config = load_config(self.paths.config_file)
        self.loop = asyncio.new_event_loop()
        self.events = Events(self.loop)
        self.vault: Vault = open_vault(self.config, self.paths.store, self.paths.key_file, self.events,
                                       environ={} if environ is None else environ, monotonic=monotonic)
        self.org = NotLoggedIn()
        self.cache = ExchangeCache()
        self.schemes = Schemes(self.config.custom.values(), self.org.custom_providers)
        self.usage = UsageQueue(self.paths.usage_queue)
        self.audit = AuditLog(self.paths.audit_log, self.paths.audit_anchor, self.vault.keys.key)
        self.events.subscribe(self.audit.on_event)
        self.resolver: Resolver
        self.forwarder: Forwarder
        self.resolver, self.forwarder = open_forwarding(
            self.config, self.vault.personal, self.events, self.schemes, self.cache,
            forgetting(self.cache, self.schemes), self.org,
            UseRecords(UsageRecorder(self.usage, self.org.login_id), self.audit.append), relay=self.org)
        self.audit.open()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def forward(self, method: str, url: str, provider: str, refs: dict[str, Ref], *, body: bytes = b"",
                headers: list[tuple[str, str]] | None = None, **call: Any) -> Answer:
        """Forward as the request servicer calls it, the answer read through."""
        async def go() -> Answer:
            async def chunks() -> AsyncIterator[bytes]:
                if body:
                    yield body
            reply = await self.forwarder.forward(ForwardCall(provider, method, url, headers or [], refs, **call), chunks())
            return Answer(reply.status, reply.headers, b"".join([c async for c in reply.body]))
        return self.run(go())

    def sign(self, method: str, url: str, refs: dict[str, Ref], *, provider: str = "", body: bytes = b"",
             headers: list[tuple[str, str]] | None = None, region: str = "", service: str = "") -> dict[str, str]:
        """Sign as the request servicer calls it: the headers to add."""
        added = self.run(self.forwarder.sign(SignCall(provider, method, url, headers or [],
                                                      hashlib.sha256(body).hexdigest(), refs, region, service, len(body))))
        return dict(added)

    def create(self, name: str, provider: str, secret: str) -> TokenRecord:
        """A personal token, stored as TokenService's create stores it."""
        return self.run(self.vault.personal.create(PERSONAL, name, provider, secret.encode()))

    def close(self) -> None:
        """As the daemon stops (a test may stop one to open the store again): once, whoever asks again."""
        if self.loop.is_closed():
            return
        self.run(self.forwarder.close())
        self.usage.close()
        self.audit.close()
        self.vault.close()
        self.loop.close()
