"""Org token secrets held in memory (never in the local store), and their ends.

Each secret sits in mlock'ed pages, wiped when dropped, with the version it belongs to. It is
dropped when its token goes or rotates, at the org's end for it (OrgExpiry's timer), and all at
once on lock, logout, removal or past the grace. Whatever was derived from a secret (exchanged
bearers, SigV4 signing keys) is cached under `cache_key`, which names a new epoch after every
drop: nothing derived under one login, membership or server is reached again under another.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from qpu_broker_client.errors import FailedPreconditionError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.common.hardening import LockedSecrets
from qpu_broker.common.lifetimes import expiry_text
from qpu_broker.org.expiry import OrgExpiry
from qpu_broker.tokens.org_tokens import OrgToken

log = logging.getLogger(__name__)


class SecretCache:
    def __init__(self, forget_derived: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        # Drops what was derived from org secrets, by cache-key prefix.
        self._forget_derived = forget_derived
        self._secrets: LockedSecrets[str, int] = LockedSecrets()  # server id -> the secret and its version
        self._expiry = OrgExpiry(clock, self._expired)
        self._armed: dict[str, OrgToken] = {}  # the tokens whose ends are kept, by server id (for the log line)
        self._epoch = os.urandom(8).hex()

    def __len__(self) -> int:
        return len(self._secrets)

    def wipe(self) -> None:
        """The secrets only, at once, from any thread (a lock may come from the store's writer thread)."""
        self._secrets.clear()

    def drop(self) -> None:
        """Every secret, timer and derived credential; a new epoch for what comes next."""
        self._secrets.clear()
        self._expiry.clear()
        self._armed.clear()
        self._epoch = os.urandom(8).hex()
        self._forget_derived("org:")

    def cache_key(self, token: OrgToken) -> str:
        """What derived credentials of this token are cached under (never reused across drops)."""
        return f"org:{self._epoch}:{token.server_id}:{token.version}"

    def forget_derived(self, server_id: str) -> None:
        """What was derived from this token's secret goes (rotated, or its provider redefined)."""
        self._forget_derived(f"org:{self._epoch}:{server_id}:")

    def version(self, server_id: str) -> int:
        """The version of the secret held (0: none)."""
        return self._secrets.meta(server_id) or 0

    def put(self, server_id: str, secret: Secret, version: int) -> None:
        self._secrets.put(server_id, secret.reveal(), version)

    def discard(self, server_id: str) -> None:
        self._secrets.pop(server_id)

    def forget(self, server_id: str) -> None:
        """The token is gone: its secret, its timer and what was derived from it."""
        self._secrets.pop(server_id)
        self._expiry.cancel(server_id)
        self._armed.pop(server_id, None)
        self.forget_derived(server_id)

    def arm(self, token: OrgToken) -> None:
        self._armed[token.server_id] = token
        self._expiry.arm(token)

    def expired(self, token: OrgToken) -> bool:
        return self._expiry.expired(token)

    def check(self, token: OrgToken) -> OrgToken:
        """The token, or the refusal of its use once it expired (its secret dropped then)."""
        return self._expiry.check(token)

    def secret(self, token: OrgToken) -> Secret:
        if token.relay:
            raise FailedPreconditionError(
                f"organization token {token.name!r} is a relay token: its secret never leaves the org server, which "
                "makes every call with it")
        held = self._secrets.get(token.server_id)
        if held is None or held[1] < token.version:  # a newer secret than the metadata is right too
            raise UnavailableError(f"the secret of organization token {token.name!r} is not here yet: try again in a moment")
        return Secret(held[0])

    def _expired(self, server_id: str) -> None:
        """A token's end came (OrgExpiry's timer): its secret and what was derived from it go; it
        stays listed, and the lookup refuses its use."""
        token = self._armed.get(server_id)
        if token is not None and self._secrets.meta(server_id) is not None:
            log.info("organization token %r expired at %s: its secret dropped", token.name, expiry_text(token.expires_us))
        self._secrets.pop(server_id)
        self.forget_derived(server_id)
