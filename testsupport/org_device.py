"""A member's device as their own gRPC client makes one (no daemon): what tests and benchmarks
use to reach the org server as a member, the way `qpu-broker org login` does."""

from __future__ import annotations

import dataclasses
import time

from qpu_broker.keys import device_key
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc

TIMEOUT = 30.0


@dataclasses.dataclass
class Device:
    """A device enrolled by a test's own gRPC client: its key, and access tokens it signs for."""

    id: str
    private_key: bytes
    store_id: str
    first_token: str
    last_at_us: int = 0

    @classmethod
    def enroll(cls, stub: org_pb2_grpc.OrgServiceStub, code: str) -> Device:
        private_key = device_key.new_private_key()
        made = stub.Enroll(org_pb2.EnrollRequest(code=code, public_key=device_key.public_key(private_key),
                                                 device_name="test client"), timeout=TIMEOUT)
        return cls(made.device_id, private_key, made.store_id, made.access_token)

    def token_request(self, at_us: int | None = None, audience: str = "localhost") -> org_pb2.DeviceTokenRequest:
        """Signed for the server name `audience` (tests reach the org server as localhost)."""
        if at_us is None:  # now, and strictly after the last one (the server takes each time once)
            at_us = self.last_at_us = max(int(time.time() * 1e6), self.last_at_us + 1)
        request = org_pb2.DeviceTokenRequest(device_id=self.id, audience=audience, signature=device_key.sign(
            self.private_key, device_key.token_request(self.id, at_us, self.store_id, audience)))
        request.at.FromMicroseconds(at_us)
        return request

    def access_token(self, stub: org_pb2_grpc.OrgServiceStub) -> str:
        return stub.DeviceToken(self.token_request(), timeout=TIMEOUT).access_token
