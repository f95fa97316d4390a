"""The org's tokens as the daemon's callers reach them (resolution, token listing, custom
providers): through the membership's state and the grace, never straight from the copy.

Past the grace every org secret and handle is dropped here, at the first look (status, a list,
a use, or the sync's next try); an expired token is refused at its lookup (every use finds its
token first: forward, sign, relay, sessions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from qpu_broker_client.errors import NotFoundError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.common.custom_providers import CustomDefinition
from qpu_broker.common.reach import Reach
from qpu_broker.org.quotas import OrgQuotas
from qpu_broker.org.secret_cache import SecretCache
from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.org.session import (
    CONNECTING,
    KEY_REVOKED,
    LOCKED,
    NOT_LOGGED_IN,
    REMOVED,
    UNAVAILABLE,
    OrgSession,
)
from qpu_broker.org.state import OrgState
from qpu_broker.tokens.org_tokens import OrgToken

log = logging.getLogger(__name__)


class OrgAccess:
    """tokens/org_tokens.OrgTokens, for the resolver."""

    def __init__(self, session: OrgSession, state: OrgState, secrets: SecretCache, quotas: OrgQuotas,
                 server: OrgServerApi) -> None:
        self._session = session
        self._state = state
        self._secrets = secrets
        self._quotas = quotas
        self._server = server

    def require(self) -> None:
        self._session.require(self._server.server)

    def drop(self) -> None:
        """Every org token, secret and quota as last heard."""
        self._state.drop()
        self._quotas.clear()

    def expire_if_past_grace(self) -> None:
        if self._session.past_grace() and (len(self._state) or len(self._secrets)):
            log.warning("organization server unreachable past the grace period (%.0f s): org secrets dropped",
                        self._session.grace)
            self.drop()

    def tokens(self, provider: str = "") -> list[OrgToken]:
        if self._session.state in (NOT_LOGGED_IN, LOCKED, REMOVED, KEY_REVOKED):
            return []
        self.expire_if_past_grace()
        return self._state.tokens(provider)

    def find(self, *, handle: str = "", name: str = "") -> OrgToken:
        self.require()
        self.expire_if_past_grace()
        session, servers = self._session, self._server.servers
        if session.state == CONNECTING:
            raise UnavailableError(f"still connecting to the organization server {self._server.server}: "
                                   "try again in a moment")
        if session.state == UNAVAILABLE:
            several = len(servers) > 1
            raise UnavailableError(f"the organization server{'s' if several else ''} {', '.join(servers)} "
                                   f"{'have' if several else 'has'} been unreachable for longer than the grace period "
                                   f"({session.grace:.0f} s): org tokens are unavailable until {'one' if several else 'it'} is back")
        token = self._state.lookup(handle=handle, name=name)
        if token is None:
            raise NotFoundError(f"no organization token {'with id ' + repr(handle) if handle else 'named ' + repr(name)}: "
                                "see 'qpu-broker token list --type organization'")
        # Every use finds its token first (forward, sign, relay, sessions): an expired one goes no further.
        return self._secrets.check(token)

    def secret(self, token: OrgToken) -> Secret:
        return self._secrets.secret(token)

    def cache_key(self, token: OrgToken) -> str:
        return self._secrets.cache_key(token)

    def provider_reach(self, provider: str) -> Reach:
        return self._state.provider_reach(provider)

    def custom_providers(self) -> Mapping[str, CustomDefinition]:
        return self._state.custom_providers()

    async def reserve(self, token: OrgToken) -> str:
        return await self._quotas.reserve(token)
