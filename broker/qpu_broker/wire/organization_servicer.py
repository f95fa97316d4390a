"""OrganizationService: the org link's login and status; usage and quota calls passed to the org server."""

from __future__ import annotations

from qpu_broker_client.org_messages import quota_to_proto
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from qpu_broker_client.proto.qpubroker.v1 import organization_pb2, organization_pb2_grpc

from qpu_broker.org.link import OrgLink
from qpu_broker.org.session import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    KEY_REVOKED,
    LOCKED,
    NOT_LOGGED_IN,
    REMOVED,
    UNAVAILABLE,
)
from qpu_broker.wire.org_link import OrgClient
from qpu_broker.wire.proto_values import timestamp

_STATES = {
    NOT_LOGGED_IN: organization_pb2.OrgStatus.STATE_NOT_LOGGED_IN,
    CONNECTING: organization_pb2.OrgStatus.STATE_CONNECTING,
    CONNECTED: organization_pb2.OrgStatus.STATE_CONNECTED,
    DISCONNECTED: organization_pb2.OrgStatus.STATE_DISCONNECTED,
    UNAVAILABLE: organization_pb2.OrgStatus.STATE_UNAVAILABLE,
    LOCKED: organization_pb2.OrgStatus.STATE_LOCKED,
    REMOVED: organization_pb2.OrgStatus.STATE_REMOVED,
    KEY_REVOKED: organization_pb2.OrgStatus.STATE_KEY_REVOKED,
}


class OrganizationServicer(organization_pb2_grpc.OrganizationServiceServicer):
    def __init__(self, org: OrgLink, client: OrgClient) -> None:
        self._org = org
        self._client = client  # usage and quota reads and changes pass through as they are

    def _status(self) -> organization_pb2.OrgStatus:
        s = self._org.status()
        return organization_pb2.OrgStatus(
            state=_STATES[s.state], server=s.server, org=s.org, user=s.user, role=s.role, tokens=s.tokens,
            seconds_since_contact=s.seconds_since_contact, grace_seconds=s.grace_seconds, detail=s.detail,
            usage_waiting=s.usage_waiting, quotas=[quota_to_proto(q) for q in s.quotas], metered_tokens=s.metered_tokens,
            relay_tokens=s.relay_tokens, servers=s.servers, cached_tokens=s.cached_tokens, device_id=s.device_id,
            device_expires=timestamp(s.device_expires_us) if s.device_expires_us else None)

    async def Login(self, request, context):
        await self._org.login(list(request.servers) or [request.server], request.ca_pem, request.api_key)
        return self._status()

    async def Logout(self, request, context):
        await self._org.logout()
        return organization_pb2.LogoutResponse()

    async def Status(self, request, context):
        await self._org.refresh_quotas()
        return self._status()

    async def Usage(self, request, context):
        self._org.require()
        reply = await self._client.list_usage(org_pb2.ListUsageRequest(
            member=request.member, token=request.token, since=request.since if request.HasField("since") else None,
            after_seq=request.after_seq, limit=request.limit))
        return organization_pb2.OrgUsageResponse(records=reply.records, next_after_seq=reply.next_after_seq,
                                                  more=reply.more)

    async def Quotas(self, request, context):
        self._org.require()
        return await self._client.admin_quota("ListQuotas", request)

    async def SetQuota(self, request, context):
        self._org.require()
        return await self._client.admin_quota("SetQuota", request)

    async def RemoveQuota(self, request, context):
        self._org.require()
        return await self._client.admin_quota("RemoveQuota", request)
