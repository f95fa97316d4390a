"""This daemon's device in its organization: enrolling it, and the access tokens it signs for.

At `org login` the daemon makes an Ed25519 key pair, sends the public half with the member's
enrollment code (Enroll), and keeps the private half sealed in its store (tokens/org_login's
OrgLogin); the code is used up and kept nowhere. Every later call to the org server carries
a short-lived access token, which the device gets by signing (DeviceToken) for the server
name it connects to: one token shared by every call to that name, fetched again before 80 %
of its life has passed, at once when a server says it expired (its clock may differ from
ours), and before any call to a server of another name (a failover): a token is sent only to
the name it was made for, so a listed server of another name never holds one good elsewhere.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from qpu_broker_client.secret import Secret

from qpu_broker.keys import device_key
from qpu_broker.tokens.org_login import OrgLogin
from qpu_broker.wire.proto_values import micros, timestamp

REFRESH_AT = 0.8  # of an access token's life
CALL_TIMEOUT = 10.0


def enroll_request(code: bytes, private_key: bytes) -> org_pb2.EnrollRequest:
    return org_pb2.EnrollRequest(code=code.decode("ascii"), public_key=device_key.public_key(private_key),
                                 device_name=socket.gethostname())


def enrolled_login(servers: tuple[str, ...], login_id: str, ca_pem: bytes, private_key: bytes,
                   reply: org_pb2.EnrollResponse) -> OrgLogin:
    """The login to seal in the store: the device, never the code."""
    return OrgLogin(servers, login_id, ca_pem, reply.device_id, Secret(private_key), reply.store_id,
                    micros(reply.device_expires) if reply.HasField("device_expires") else 0)


class DeviceAccess:
    def __init__(self, login: OrgLogin, monotonic: Callable[[], float], wall: Callable[[], float] = time.time) -> None:
        if login.device_key is None:
            raise ValueError("a device login has its key")
        self._login = login
        self._monotonic, self._wall = monotonic, wall
        self._token = ""
        self._audience = ""  # the server name the token was made for
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def login(self) -> OrgLogin:
        return self._login

    def take(self, token: str, expires_us: int, server: str) -> None:
        """A token the server at `server` gave (Enroll, DeviceToken): used there until REFRESH_AT of its life."""
        life = max(0.0, expires_us / 1e6 - self._wall())
        self._token, self._refresh_at = token, self._monotonic() + REFRESH_AT * life
        self._audience = server_host(server)

    def expire(self) -> None:
        """A server said the token expired: the next call gets a new one."""
        self._token = ""

    def _stale(self, server: str) -> bool:
        return not self._token or self._monotonic() >= self._refresh_at or self._audience != server_host(server)

    async def metadata(self, stub: org_pb2_grpc.OrgServiceStub, server: str) -> tuple[tuple[str, str], ...]:
        """`authorization` for a call to `server`; a new token first when the one held is old, none
        is, or it was made for another server name."""
        if self._stale(server):
            async with self._lock:  # one DeviceToken for all the calls waiting on it
                if self._stale(server):
                    await self._refresh(stub, server)
        return (("authorization", "Bearer " + self._token),)

    async def _refresh(self, stub: org_pb2_grpc.OrgServiceStub, server: str) -> None:
        login, audience = self._login, server_host(server)
        # Strictly later than the last one (the server takes each signing time once): two in one µs wait one.
        at_us = max(int(self._wall() * 1_000_000), self._last_at_us + 1)
        self._last_at_us = at_us
        signature = device_key.sign(login.device_key.reveal(),
                                    device_key.token_request(login.device_id, at_us, login.store_id, audience))
        reply = await stub.DeviceToken(org_pb2.DeviceTokenRequest(device_id=login.device_id, at=timestamp(at_us),
                                                                  signature=signature, audience=audience),
                                       timeout=CALL_TIMEOUT)
        self.take(reply.access_token, micros(reply.access_expires), server)

    _last_at_us = 0


def server_host(server: str) -> str:
    """The host name of a `HOST:PORT` server entry: what the channel's TLS verification checks."""
    return device_key.audience(server.rpartition(":")[0] if ":" in server and not server.endswith("]") else server)
