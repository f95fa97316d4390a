"""Org token changes asked of the server as this member's device (the server decides who may):
a handle from this daemon is turned back into the server's id here."""

from __future__ import annotations

from qpu_broker_client.errors import NotFoundError

from qpu_broker.org.access import OrgAccess
from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.org.state import OrgState
from qpu_broker.tokens.org_tokens import OrgToken


class OrgTokenAdmin:
    def __init__(self, server: OrgServerApi, state: OrgState, access: OrgAccess) -> None:
        self._server = server
        self._state = state
        self._access = access

    def _server_id(self, token_id: str) -> str:
        if not token_id:
            return ""  # by name
        server_id = self._state.server_id(token_id)
        if server_id is None:
            raise NotFoundError(f"no organization token with id {token_id!r}")
        return server_id

    async def create(self, name: str, provider: str, secret: bytes, relay: bool = True,
                     expires_in: int = 0) -> OrgToken:
        """`expires_in`: its lifetime in seconds from now (0: never expires), kept by the server."""
        self._access.require()
        token = self._state.token(await self._server.create_token(name, provider, secret, relay, expires_in))
        self._state.remember(token)
        return token

    async def get(self, token_id: str, name: str) -> OrgToken:
        self._access.require()
        return self._state.token(await self._server.get_token(self._server_id(token_id), name))

    async def update(self, token_id: str, name: str, new_name: str | None, secret: bytes | None,
                     expires_in: int | None = None) -> OrgToken:
        self._access.require()
        return self._state.token(await self._server.update_token(self._server_id(token_id), name, new_name, secret,
                                                                  expires_in))

    async def delete(self, token_id: str, name: str) -> None:
        self._access.require()
        await self._server.delete_token(self._server_id(token_id), name)
