"""The org's tokens as the Watch last said: metadata, handles, reach, custom providers.

Kept current by applying Watch events (a snapshot, in pages, replaces the copy; a change or a
deletion amends it; a resumed stream's catch-up marks it current), with the secrets of cached
tokens fetched before their metadata switches, so a caller sees the old version or the new one,
never a version without its secret. Clients see opaque handles, never server ids: a keyed hash
that changes with every daemon start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.secret import Secret

from qpu_broker.common.custom_providers import CustomDefinition, definition_from_json
from qpu_broker.common.names import canonical_name
from qpu_broker.common.reach import Reach, merge
from qpu_broker.org.records import (
    CAUGHT_UP,
    DELETED,
    HEARTBEAT,
    ORG_ONLY,
    SNAPSHOT,
    PushedToken,
    WatchEvent,
)
from qpu_broker.org.secret_cache import SecretCache
from qpu_broker.tokens.org_tokens import OrgToken

log = logging.getLogger(__name__)
DEFAULT_HEARTBEAT = 5.0  # seconds between a server's heartbeats until it says

# The secrets of these cached tokens, by server id: (version, secret).
Fetch = Callable[[Sequence[str]], Awaitable[Mapping[str, tuple[int, Secret]]]]


class OrgState:
    def __init__(self, secrets: SecretCache, handle_key: bytes | None = None) -> None:
        self._secrets = secrets
        self._handle_key = handle_key or os.urandom(32)  # handles change with every daemon start: short-lived by design
        self._tokens: dict[str, OrgToken] = {}  # by server id
        self._by_handle: dict[str, str] = {}
        self._by_name: dict[str, str] = {}  # a forward looks its token up twice (reach, then secret)
        self._org_reach: dict[str, Reach] = {}
        # The custom providers the org defines: its tokens of them use these, never this daemon's config.
        self._custom: dict[str, CustomDefinition] = {}
        # Where this copy stands: a reconnect (to any replica) resumes after it.
        self.revision, self.store_id = 0, ""
        self._pages: list[PushedToken] = []  # a snapshot's pages so far (applied at its last)
        self.synced = False  # this stream has brought the copy up to date
        self.heartbeat = DEFAULT_HEARTBEAT

    # -- what callers read --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._tokens)

    def tokens(self, provider: str = "") -> list[OrgToken]:
        return [t for t in self._tokens.values() if not provider or t.provider == provider]

    def lookup(self, *, handle: str = "", name: str = "") -> OrgToken | None:
        server_id = self._by_handle.get(handle) if handle else self._by_name.get(canonical_name(name))
        return self._tokens.get(server_id) if server_id is not None else None

    def server_id(self, handle: str) -> str | None:
        """The server id a handle names (a token just created is named before the push brings it)."""
        return self._by_handle.get(handle)

    def provider_reach(self, provider: str) -> Reach:
        """The org-wide settings for `provider` (official hosts only when the org set none)."""
        return self._org_reach.get(provider, ORG_ONLY)

    def custom_providers(self) -> Mapping[str, CustomDefinition]:
        """The custom providers the org defines, as last heard (a new mapping whenever they change)."""
        return self._custom

    def token(self, t: PushedToken) -> OrgToken:
        """A token the server sent, as clients see it: with its handle, and the org-wide reach merged in."""
        handle = "org_" + hmac.new(self._handle_key, t.id.encode(), hashlib.sha256).hexdigest()[:24]
        reach = t.reach if t.reach is not None else merge(self._org_reach.get(t.provider, ORG_ONLY), t.own)
        return OrgToken(handle, t.id, t.name, t.provider, t.version, reach, t.created_us, t.updated_us, t.metered,
                        t.relay, t.expires_us)

    def remember(self, token: OrgToken) -> None:
        """Its handle names it at once (the tutorial gets it by id next), before the push brings the token."""
        self._by_handle.setdefault(token.handle, token.server_id)

    # -- what the Watch says --------------------------------------------------------------
    def stream_started(self) -> None:
        self._pages, self.synced = [], False

    def foreign(self, event: WatchEvent) -> bool:
        """A snapshot of another store than the one this copy came from (the org re-created, or a
        server that is not a replica of it): nothing of it may be mixed in."""
        return event.kind == SNAPSHOT and bool(self.store_id and event.store_id and event.store_id != self.store_id)

    async def apply(self, event: WatchEvent, fetch: Fetch) -> None:
        kind = event.kind
        if kind == HEARTBEAT:
            return
        if kind == DELETED:
            for t in event.tokens:
                self.forget(t.id)
                log.info("organization token %r revoked: dropped", t.name)
            self.revision = max(self.revision, event.revision)
            return
        if kind in (SNAPSHOT, CAUGHT_UP):
            self.heartbeat = event.heartbeat_seconds or DEFAULT_HEARTBEAT
        if kind == CAUGHT_UP:
            self.revision, self.store_id, self.synced = event.revision, event.store_id, True
            return
        tokens = list(event.tokens)
        if kind == SNAPSHOT:
            if event.more:
                self._pages += tokens
                return
            tokens, self._pages = self._pages + tokens, []
            self._org_reach = dict(event.org_reach)
            self._define(event.custom_providers)
        fresh = {t.id: self.token(t) for t in tokens}
        # Fetch new secrets first, then switch metadata and secret together.
        # A relay token's secret never leaves the server: none is fetched, and one held before goes.
        # An expired token's secret is not asked for either (the server leaves it out anyway).
        fetched = await fetch([i for i, t in fresh.items() if not t.relay and not self._secrets.expired(t)
                               and self._secrets.version(i) < t.version])
        if kind == SNAPSHOT:
            for gone in set(self._tokens) - set(fresh):
                self.forget(gone)
        for server_id, token in fresh.items():
            if server_id in fetched:
                version, secret = fetched[server_id]
                self._secrets.put(server_id, secret, version)
            if token.relay or self._secrets.expired(token):
                self._secrets.discard(server_id)
            old = self._tokens.get(server_id)
            if old is not None and old.version != token.version:  # rotated: its old bearer goes too
                self._secrets.forget_derived(server_id)
            if old is not None and self._by_name.get(old.name) == server_id:
                del self._by_name[old.name]  # renamed
            self._tokens[server_id] = token
            self._by_handle[token.handle] = server_id
            self._by_name[token.name] = server_id
            self._secrets.arm(token)
        self.revision = max(self.revision, event.revision) if kind != SNAPSHOT else event.revision
        if kind == SNAPSHOT:
            self.store_id, self.synced = event.store_id, True

    def _define(self, pushed: Mapping[str, str]) -> None:
        """The org's custom providers, from a snapshot, each checked as this daemon's own config is (a
        bad one is left out: its tokens are refused). What was derived from tokens of a provider
        redefined or removed (exchanged bearers) goes: the next call uses the definition as it is now."""
        custom = {}
        for name, text in pushed.items():
            try:
                custom[name] = definition_from_json(name, text, f"the org's custom provider {name[:40]!r}")
            except InvalidArgumentError as exc:
                log.warning("ignoring %s", exc)
        changed = {n for n in {*custom, *self._custom} if custom.get(n) != self._custom.get(n)}
        for server_id, token in self._tokens.items():
            if token.provider in changed:
                self._secrets.forget_derived(server_id)
        if changed:
            log.info("the organization's custom providers changed: %s", ", ".join(sorted(changed)))
        self._custom = custom

    def forget(self, server_id: str) -> None:
        token = self._tokens.pop(server_id, None)
        self._secrets.forget(server_id)
        if token is not None:
            self._by_handle.pop(token.handle, None)
            if self._by_name.get(token.name) == server_id:
                del self._by_name[token.name]

    def drop(self) -> None:
        """Everything: tokens, handles, settings, where the copy stood, and every secret."""
        self._tokens.clear()
        self._by_handle.clear()
        self._by_name.clear()
        self._org_reach.clear()
        self._custom = {}
        self.revision, self.store_id = 0, ""
        self._secrets.drop()
