"""This daemon's device in its organization: enrolling it, and the access tokens it signs for.

At `org login` the daemon makes an Ed25519 key pair, sends the public half with the member's
enrollment code (Enroll), and keeps the private half sealed in its store (tokens/vault's
OrgLogin); the code is used up and kept nowhere. Every later call to the org server carries
a short-lived access token, which the device gets by signing (DeviceToken): one token shared
by every call, fetched again before 80 % of its life has passed, or at once when a server
says it expired (its clock may differ from ours).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from qpu_broker_client.secret import Secret

from qpu_broker.keys import device_key
from qpu_broker.tokens.vault import OrgLogin
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
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def login(self) -> OrgLogin:
        return self._login

    def take(self, token: str, expires: Timestamp) -> None:
        """A token the server gave (Enroll, DeviceToken): used until REFRESH_AT of its life."""
        life = max(0.0, micros(expires) / 1e6 - self._wall())
        self._token, self._refresh_at = token, self._monotonic() + REFRESH_AT * life

    def expire(self) -> None:
        """A server said the token expired: the next call gets a new one."""
        self._token = ""

    async def metadata(self, stub: org_pb2_grpc.OrgServiceStub) -> tuple[tuple[str, str], ...]:
        """`authorization` for a call; a new token first when the one held is old (or none is)."""
        if not self._token or self._monotonic() >= self._refresh_at:
            async with self._lock:  # one DeviceToken for all the calls waiting on it
                if not self._token or self._monotonic() >= self._refresh_at:
                    await self._refresh(stub)
        return (("authorization", "Bearer " + self._token),)

    async def _refresh(self, stub: org_pb2_grpc.OrgServiceStub) -> None:
        login = self._login
        at_us = int(self._wall() * 1_000_000)
        signature = device_key.sign(login.device_key.reveal(),
                                    device_key.token_request(login.device_id, at_us, login.store_id))
        reply = await stub.DeviceToken(org_pb2.DeviceTokenRequest(device_id=login.device_id, at=timestamp(at_us),
                                                                  signature=signature), timeout=CALL_TIMEOUT)
        self.take(reply.access_token, reply.access_expires)
