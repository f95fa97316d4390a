"""gRPC servicer of the org server: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.proto import org_pb2, org_pb2_grpc

from .auth import CALLER
from .service import CREATED, DELETED, OrgService
from .store import OrgTokenRecord

HEARTBEAT_SECONDS = 5.0
_EVENT = {CREATED: org_pb2.WatchEvent.KIND_CREATED, "updated": org_pb2.WatchEvent.KIND_UPDATED,
          DELETED: org_pb2.WatchEvent.KIND_DELETED}
_ROLE = {"admin": org_pb2.ROLE_ADMIN, "member": org_pb2.ROLE_MEMBER}


def _ts(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def token_proto(r: OrgTokenRecord) -> org_pb2.OrgToken:
    return org_pb2.OrgToken(id=r.id, name=r.name, provider=r.provider, created_at=_ts(r.created_us),
                            updated_at=_ts(r.updated_us), allowed_hosts=list(r.allowed_hosts), version=r.version)


class OrgServicer(org_pb2_grpc.OrgServiceServicer):
    def __init__(self, service: OrgService, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self._service = service
        self._heartbeat = heartbeat

    def _find(self, selector: org_pb2.GetTokenRequest) -> OrgTokenRecord:
        if selector.WhichOneof("by") is None:
            raise InvalidArgumentError("name an organization token by id or by name")
        return self._service.find(token_id=selector.id, name=selector.name)

    async def WhoAmI(self, request, context):  # noqa: N802
        user = CALLER.get()
        return org_pb2.WhoAmIResponse(org=self._service.org, user=user.name, role=_ROLE[user.role])

    async def CreateToken(self, request, context):  # noqa: N802
        return token_proto(self._service.create(request.name, request.provider, request.secret, list(request.allowed_hosts)))

    async def GetToken(self, request, context):  # noqa: N802
        return token_proto(self._find(request))

    async def UpdateToken(self, request, context):  # noqa: N802
        record = self._find(request.token)
        return token_proto(self._service.update(
            record, name=request.name if request.HasField("name") else None,
            secret=request.secret if request.HasField("secret") else None,
            allowed_hosts=list(request.allowed_hosts) if request.set_allowed_hosts else None))

    async def DeleteToken(self, request, context):  # noqa: N802
        self._service.delete(self._find(request.token))
        return org_pb2.DeleteTokenResponse()

    async def ListTokens(self, request, context):  # noqa: N802
        records, revision = self._service.list()
        return org_pb2.ListTokensResponse(tokens=[token_proto(r) for r in records], revision=revision)

    async def FetchSecrets(self, request, context):  # noqa: N802
        return org_pb2.FetchSecretsResponse(secrets=[
            org_pb2.OrgSecret(id=r.id, version=r.version, secret=s.reveal()) for r, s in self._service.secrets(list(request.ids))])

    async def Watch(self, request, context):  # noqa: N802
        queue = self._service.subscribe()
        try:
            records, revision = self._service.list()
            yield org_pb2.WatchEvent(kind=org_pb2.WatchEvent.KIND_SNAPSHOT, tokens=[token_proto(r) for r in records],
                                     revision=revision)
            while True:
                try:
                    change = await asyncio.wait_for(queue.get(), self._heartbeat)
                except asyncio.TimeoutError:
                    yield org_pb2.WatchEvent(kind=org_pb2.WatchEvent.KIND_HEARTBEAT)
                    continue
                yield org_pb2.WatchEvent(kind=_EVENT[change.kind], tokens=[token_proto(change.token)],
                                         revision=change.revision)
        finally:
            self._service.unsubscribe(queue)
