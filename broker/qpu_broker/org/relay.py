"""Calls with relay tokens, assembled for the org server, which forwards and signs them (their
secrets never leave it). The forwarder's RelayHop."""

from __future__ import annotations

from collections.abc import Callable

from qpu_broker_client.errors import ResourceExhaustedError

from qpu_broker.common.org_limits import RELAY_BODY_MAX
from qpu_broker.forward.forwarder import ForwardCall, LunaFill, Reply, SignCall
from qpu_broker.org.quotas import OrgQuotas
from qpu_broker.org.records import RelayForward, RelayHeaders, RelaySign
from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.tokens.org_tokens import OrgToken


def _headers(token: OrgToken | None, call: ForwardCall | SignCall) -> RelayHeaders:
    return RelayHeaders(token.server_id if token else "", call.provider, call.method, call.url, tuple(call.headers),
                        call.region, call.service)


class OrgRelay:
    def __init__(self, server: OrgServerApi, quotas: OrgQuotas, require: Callable[[], None]) -> None:
        self._server = server
        self._quotas = quotas
        self._require = require  # raises when org calls cannot be made now (not logged in, locked, removed)

    async def relay_forward(self, token: OrgToken | None, call: ForwardCall, body: bytes,
                            luna: LunaFill | None = None) -> Reply:
        """`token`: the call's own relay token (None: a Luna call whose key is `luna.own_key`)."""
        self._require()
        tokens = [token, *(luna.relayed.values() if luna else ())]
        if len(body) > RELAY_BODY_MAX:
            names = [t.name for t in tokens if t is not None]
            raise ResourceExhaustedError(f"this request uses relay organization tokens ({', '.join(map(repr, names))}), "
                                         f"whose requests carry at most {RELAY_BODY_MAX} bytes of body through the org server")
        relay = RelayForward(_headers(token, call), body, call.timeout,
                             {field: t.server_id for field, t in luna.relayed.items()} if luna else {},
                             luna.own_key if luna else None)
        with self._quotas.counted_on_the_server(tokens):
            return await self._server.relay_forward(relay)

    async def relay_sign(self, token: OrgToken, call: SignCall) -> list[tuple[str, str]]:
        self._require()
        with self._quotas.counted_on_the_server([token]):
            return await self._server.relay_sign(RelaySign(_headers(token, call), call.body_sha256, call.body_bytes))
