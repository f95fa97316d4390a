"""gRPC servicer of the org server: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.org_messages import (
    quota_to_proto,
    usage_from_proto,
    usage_to_proto,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret

from qpu_broker.forward.forwarder import ForwardCall, SignCall
from qpu_broker.orgserver.admin_record import AdminEntry, AdminQuery
from qpu_broker.orgserver.console.sessions import (
    LINK_SECONDS,
    URL_META,
    Sessions,
    sign_in_link,
)
from qpu_broker.orgserver.devices import Caller
from qpu_broker.orgserver.groups import Group
from qpu_broker.orgserver.quotas import is_metered
from qpu_broker.orgserver.relay import Relay
from qpu_broker.orgserver.service import Change, End, OrgService, Resnapshot, seen_as
from qpu_broker.orgserver.store import (
    CREATED,
    DELETED,
    UPDATED,
    USAGE_PAGE_MAX,
    Access,
    Device,
    OrgTokenRecord,
    UsageQuery,
)
from qpu_broker.orgserver.users import CodeTerms
from qpu_broker.orgserver.wire.auth import CALLER
from qpu_broker.orgserver.wire.relay_stream import Admit, RelayStream
from qpu_broker.orgserver.wire.snapshots import Metered, Snapshots, serialized
from qpu_broker.wire.proto_values import (
    header_pairs,
    micros,
    reach_from_proto,
    reach_to_proto,
    relay_mode,
    timestamp,
)

HEARTBEAT_SECONDS = 5.0
# A usage follower's membership is checked at least this often (a removed admin stops seeing records).
FOLLOW_RECHECK_SECONDS = 1.0
_EVENT = {CREATED: org_pb2.WatchEvent.KIND_CREATED, UPDATED: org_pb2.WatchEvent.KIND_UPDATED,
          DELETED: org_pb2.WatchEvent.KIND_DELETED}
_ROLE = {"admin": org_pb2.ROLE_ADMIN, "member": org_pb2.ROLE_MEMBER, "service": org_pb2.ROLE_SERVICE}
_ROLE_NAME = {org_pb2.ROLE_UNSPECIFIED: "member", org_pb2.ROLE_MEMBER: "member", org_pb2.ROLE_ADMIN: "admin",
              org_pb2.ROLE_SERVICE: "service"}


def _relay_headers(headers: list[tuple[str, str]]) -> list[org_pb2.RelayHeader]:
    return [org_pb2.RelayHeader(name=k, value=v) for k, v in headers]


def _access(msg: org_pb2.TokenAccess) -> list[str] | None:
    if not msg.only_groups and msg.groups:
        raise InvalidArgumentError("a token's access lists groups only with only_groups set (unset: every member)")
    return list(msg.groups) if msg.only_groups else None


def _access_to_proto(access: Access) -> org_pb2.TokenAccess:
    return org_pb2.TokenAccess(only_groups=access is not None, groups=list(access or ()))


def _group(g: Group) -> org_pb2.Group:
    return org_pb2.Group(name=g.name, members=g.members, created_at=timestamp(g.created_us))
def _terms(msg: org_pb2.CodeTerms) -> CodeTerms:
    default = CodeTerms()
    return CodeTerms(msg.uses or default.uses, min(msg.expires_in_seconds, 1 << 40) or default.expires_in_seconds,
                     min(msg.device_ttl_seconds, 1 << 40))


def _timestamp_or_none(us: int):
    return timestamp(us) if us else None


def _device(d: Device) -> org_pb2.Device:
    return org_pb2.Device(id=d.id, user=d.user, name=d.name, created_at=timestamp(d.created_us),
                          expires=_timestamp_or_none(d.expires_us), last_seen=_timestamp_or_none(d.last_seen_us))


def _admin_entry(e: AdminEntry) -> org_pb2.AdminEntry:
    return org_pb2.AdminEntry(seq=e.seq, at=timestamp(e.at_us), actor=e.actor, device_id=e.device, origin=e.origin,
                              action=e.action, subject=e.subject, detail=e.detail)


def _query(request: org_pb2.ListUsageRequest) -> UsageQuery:
    # Bounded to what SQLite's integers hold: a hostile value is an empty answer, not an internal error.
    return UsageQuery(request.member, request.token, min(micros(request.since), 1 << 62) if request.HasField("since") else 0,
                      min(request.after_seq, 1 << 62), request.limit or USAGE_PAGE_MAX)


class OrgServicer(org_pb2_grpc.OrgServiceServicer):
    def __init__(self, service: OrgService, relay: Relay, admit_relayed: Admit,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self._service = service
        self._relay = relay
        self._relay_stream = RelayStream(admit_relayed, self._relay_forward, self._relay_sign, service.ended)
        self._heartbeat = heartbeat
        self._snapshots = Snapshots(service, self._streamed, heartbeat)

    def _token(self, r: OrgTokenRecord, metered: Metered = frozenset(), *, merged: bool = True,
               admin: bool = True) -> org_pb2.OrgToken:
        """`merged`: with the effective `reach` (org-wide settings and the token's own). Watch leaves
        it out: the stream carries the org-wide settings once, in the snapshot, and the daemon
        merges, so an org CA is not sent again with every token to every member. `admin`: with
        its access (which groups may use it), which members are not told."""
        token = org_pb2.OrgToken(metered=is_metered(metered, r.id), relay=r.relay, id=r.id, name=r.name,
                                 provider=r.provider, created_at=timestamp(r.created_us),
                                 updated_at=timestamp(r.updated_us), allowed_hosts=list(r.own.hosts), version=r.version,
                                 own=reach_to_proto(r.own),
                                 expires_at=timestamp(r.expires_us) if r.expires_us else None)
        if merged:
            token.reach.CopyFrom(reach_to_proto(self._service.reach(r)))
        if admin:
            token.access.CopyFrom(_access_to_proto(r.groups))
        return token

    def _streamed(self, r: OrgTokenRecord, metered: Metered) -> org_pb2.OrgToken:
        return self._token(r, metered, merged=False, admin=False)

    def _change(self, change: Change, metered: Metered) -> org_pb2.WatchEvent:
        token = (self._streamed(change.token, metered) if change.token is not None
                 else org_pb2.OrgToken(id=change.token_id, name=change.name))
        return org_pb2.WatchEvent(kind=_EVENT[change.kind], tokens=[token], revision=change.revision)

    def _find(self, selector: org_pb2.GetTokenRequest) -> OrgTokenRecord:
        if selector.WhichOneof("by") is None:
            raise InvalidArgumentError("name an organization token by id or by name")
        return self._service.find(token_id=selector.id, name=selector.name)

    async def Enroll(self, request, context):
        made = self._service.devices.enroll(request.code, request.public_key, request.device_name)
        return org_pb2.EnrollResponse(
            device_id=made.device.id, org=self._service.org, user=made.user.name, role=_ROLE[made.user.role],
            access_token=made.access_token, access_expires=timestamp(made.access_expires_us),
            device_expires=_timestamp_or_none(made.device.expires_us), store_id=self._service.store_id)

    async def DeviceToken(self, request, context):
        token, expires = self._service.devices.access_token(request.device_id, micros(request.at), request.signature,
                                                                  request.audience)
        return org_pb2.DeviceTokenResponse(access_token=token, access_expires=timestamp(expires))

    async def WhoAmI(self, request, context):
        caller = CALLER.get()
        return org_pb2.WhoAmIResponse(org=self._service.org, user=caller.name, role=_ROLE[caller.role],
                                      device_id=caller.device_id,
                                      device_expires=_timestamp_or_none(caller.device_expires_us))

    async def CreateToken(self, request, context):
        own = reach_from_proto(request.own, f"organization token {request.name!r}", request.allowed_hosts)
        relay = relay_mode(request.relay, request.cached)
        return self._token(self._service.create(request.name, request.provider, request.secret, own, relay,
                                                _access(request.access), request.expires_in_seconds))

    async def GetToken(self, request, context):
        return self._token(self._find(request))

    async def UpdateToken(self, request, context):
        record = self._find(request.token)
        own = None
        where = f"organization token {record.name!r}"
        if request.set_own:
            own = reach_from_proto(request.own, where, request.allowed_hosts)
        elif request.set_allowed_hosts:  # the older form: the hosts only
            own = dataclasses.replace(record.own, hosts=reach_from_proto(org_pb2.Reach(), where,
                                                                          request.allowed_hosts).hosts)
        return self._token(self._service.update(
            record, name=request.name if request.HasField("name") else None,
            secret=request.secret if request.HasField("secret") else None, own=own,
            expires_in=request.expires_in_seconds if request.HasField("expires_in_seconds") else None,
            relay=not request.cached if request.HasField("cached") else None))

    async def DeleteToken(self, request, context):
        self._service.delete(self._find(request.token))
        return org_pb2.DeleteTokenResponse()

    async def ListTokens(self, request, context):
        user = CALLER.get()
        records, revision, next_page = self._service.list_page(user, request.page_token, request.page_size)
        metered = self._service.metered_ids(user.name)
        admin = user.role == "admin"
        return org_pb2.ListTokensResponse(tokens=[self._token(r, metered, admin=admin) for r in records],
                                          revision=revision, next_page_token=next_page)

    async def FetchSecrets(self, request, context):
        return org_pb2.FetchSecretsResponse(secrets=[
            org_pb2.OrgSecret(id=r.id, version=r.version, secret=s.reveal())
            for r, s in self._service.secrets(CALLER.get(), list(request.ids))])

    async def Watch(self, request, context):
        user = CALLER.get()
        sub = self._service.subscribe(user)  # before the snapshot or the resume: nothing falls between
        try:
            # Which tokens a quota binds for this member: read again with each snapshot (a quota
            # set or removed is an org-wide event, after which every stream gets a new one).
            metered = self._service.metered_ids(user.name)
            missed = None
            if request.after_revision and request.store_id == self._service.store_id:
                missed = self._service.changes_since(request.after_revision, sub)
            if missed is None:
                revision, pages = await self._snapshots.pages(metered, sub.view)
                async for page in pages:
                    yield page
            else:
                revision = self._service.revision
                for change in missed:
                    yield self._change(change, metered)
                yield org_pb2.WatchEvent(kind=org_pb2.WatchEvent.KIND_CAUGHT_UP, revision=revision,
                                         heartbeat_seconds=self._heartbeat, store_id=self._service.store_id)
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), self._until_next_check(user))
                except TimeoutError:
                    ended = self._expired(user)
                    if ended is not None:
                        raise ended from None
                    yield org_pb2.WatchEvent(kind=org_pb2.WatchEvent.KIND_HEARTBEAT)
                    continue
                if isinstance(item, End):
                    raise item.error  # mapped to its status (and mark) by the policy interceptor
                if isinstance(item, Resnapshot):
                    metered = self._service.metered_ids(user.name)
                    revision, pages = await self._snapshots.pages(metered, sub.view)
                    async for page in pages:
                        yield page
                    continue
                seen = seen_as(item, sub.view)  # only what this member may see, and what they lost
                if seen is not None and item.revision > revision:  # else already in what this stream was sent
                    yield self._change(seen, metered)
        finally:
            self._service.unsubscribe(sub)

    def _until_next_check(self, caller: Caller) -> float:
        """A heartbeat's wait, or less: a device that expires while its stream is open ends then."""
        if not caller.device_expires_us:
            return self._heartbeat
        return max(0.0, min(self._heartbeat, (caller.device_expires_us - self._service.now_us()) / 1e6))

    def _expired(self, caller: Caller) -> Exception | None:
        if caller.device_expires_us and caller.device_expires_us <= self._service.now_us():
            return self._service.no_longer_admitted(caller)
        return None

    async def AddUsers(self, request, context):
        made = self._service.add_users([(u.name, _ROLE_NAME.get(u.role, "?")) for u in request.users],
                                       _terms(request.terms))
        return org_pb2.AddUsersResponse(users=[
            org_pb2.OrgUser(name=u.name, role=_ROLE[u.role], created_at=timestamp(u.created_us), enrollment_code=text,
                            code_expires=_timestamp_or_none(code.expires_us))
            for u, code, text in made])

    async def ListUsers(self, request, context):
        return org_pb2.ListUsersResponse(users=[
            org_pb2.OrgUser(name=u.name, role=_ROLE[u.role], created_at=timestamp(u.created_us)) for u in self._service.users()])

    async def RemoveUsers(self, request, context):
        self._service.remove_users(list(request.names))
        return org_pb2.RemoveUsersResponse(removed=len(request.names))

    async def AddGroup(self, request, context):
        return _group(self._service.groups.add(request.name, list(request.members)))

    async def RemoveGroup(self, request, context):
        return org_pb2.RemoveGroupResponse(admins_only_tokens=self._service.groups.remove(request.name))

    async def ListGroups(self, request, context):
        return org_pb2.ListGroupsResponse(groups=[_group(g) for g in self._service.groups.list()])

    async def AddGroupMembers(self, request, context):
        return _group(self._service.groups.add_members(request.group, list(request.members)))

    async def RemoveGroupMembers(self, request, context):
        return _group(self._service.groups.remove_members(request.group, list(request.members)))

    async def SetTokenAccess(self, request, context):
        record = self._find(request.token)
        return self._token(self._service.groups.set_access(record, _access(request.access)))
    async def ListDevices(self, request, context):
        return org_pb2.ListDevicesResponse(devices=[_device(d) for d in self._service.devices.list(request.user)])

    async def RemoveDevice(self, request, context):
        self._service.remove_device(request.id)
        return org_pb2.RemoveDeviceResponse()

    async def NewEnrollmentCode(self, request, context):
        code, text = self._service.new_code(request.user, _terms(request.terms), withdraw_others=request.withdraw_others)
        return org_pb2.NewEnrollmentCodeResponse(code=text, expires=_timestamp_or_none(code.expires_us))

    async def ListAdminRecord(self, request, context):
        entries, more = self._service.record.entries(AdminQuery(
            min(max(micros(request.since), 0), 1 << 62) if request.HasField("since") else 0, request.actor, request.action,
            min(request.after_seq, 1 << 62), request.limit))
        return org_pb2.ListAdminRecordResponse(entries=[_admin_entry(e) for e in entries], more=more)

    async def ConsoleLink(self, request, context):
        """An admin's one-time sign-in link to the web console, for themself only (another admin's
        would let one sign in as the other); `console-login`'s, recorded as made."""
        store = self._service.store
        secret = Sessions(store).new_link(CALLER.get().name, self._service.record)
        return org_pb2.ConsoleLinkResponse(link=sign_in_link(store.meta(URL_META) or "", secret),
                                           expires=timestamp(self._service.now_us() + LINK_SECONDS * 1_000_000))

    async def Reserve(self, request, context):
        quotas, reservation = self._service.reserve(CALLER.get(), request.token_id)
        return org_pb2.ReserveResponse(quotas=[quota_to_proto(q) for q in quotas], reservation=reservation)

    async def ListQuotas(self, request, context):
        quotas = self._service.quota_status(CALLER.get(), request.member, request.all)
        return org_pb2.ListQuotasResponse(quotas=[quota_to_proto(q) for q in quotas])

    async def SetQuota(self, request, context):
        q = self._service.set_quota(
            member=request.member, token=request.token, unit=request.unit,
            limit=request.limit if request.HasField("limit") else None,
            start_us=micros(request.start) if request.HasField("start") else None,
            end_us=micros(request.end) if request.HasField("end") else None, update=request.update)
        return quota_to_proto(q)

    async def RemoveQuota(self, request, context):
        gone = self._service.remove_quota(member=request.member, token=request.token, unit=request.unit)
        return org_pb2.RemoveQuotaResponse(removed=quota_to_proto(gone))

    async def RelayForward(self, request, context):
        return await self._relay_forward(request)

    async def RelaySign(self, request, context):
        return await self._relay_sign(request)

    async def Relay(self, request_iterator, context):
        with self._service.relaying(CALLER.get()):
            await self._relay_stream.serve(request_iterator, context)
        return
        yield  # a stream's handler: each call writes its own answer as it finishes (relay_stream.py)

    async def _relay_forward(self, request: org_pb2.RelayForwardRequest) -> org_pb2.RelayForwardResponse:
        call = ForwardCall(check_provider(request.provider), request.method or "GET", request.url, header_pairs(request.headers),
                           {}, request.timeout_seconds, request.region, request.service)
        own_key = Secret(request.luna_api_key) if request.luna_api_key else None
        reply, body = await self._relay.forward(CALLER.get(), request.token_id, call, request.body,
                                                dict(request.luna_qpu_tokens), own_key)
        return org_pb2.RelayForwardResponse(status=reply.status, headers=_relay_headers(reply.headers), body=body,
                                            http_version=reply.http_version)

    async def _relay_sign(self, request: org_pb2.RelaySignRequest) -> org_pb2.RelaySignResponse:
        call = SignCall(request.provider, request.method, request.url, header_pairs(request.headers), request.body_sha256,
                        {}, request.region, request.service, request.body_bytes)
        added = await self._relay.sign(CALLER.get(), request.token_id, call)
        return org_pb2.RelaySignResponse(headers=_relay_headers(added))

    async def ReportUsage(self, request, context):
        stored = self._service.report_usage(CALLER.get(), [usage_from_proto(m) for m in request.records])
        return org_pb2.ReportUsageResponse(stored=stored, repeated_ids=len(request.records) - stored)

    async def ListUsage(self, request, context):
        page = self._service.usage(CALLER.get(), _query(request))
        return org_pb2.ListUsageResponse(records=[usage_to_proto(r) for r in page.records],
                                         next_after_seq=page.after_seq, more=page.more)

    async def FollowUsage(self, request, context):
        user, query = CALLER.get(), dataclasses.replace(_query(request), limit=USAGE_PAGE_MAX)
        with self._service.following(user):
            caught_up = False
            while True:
                ended = self._service.no_longer_admitted(user)  # membership holds on open streams too
                if ended is not None:
                    raise ended
                # Its first read and those catching up are paced by the member's read budget; each
                # examines a bounded number of rows, and others' calls take turns between them.
                page = await self._service.follow_usage(user, query, paced=not caught_up)
                for row in page.records:
                    yield usage_to_proto(row)
                query = dataclasses.replace(query, after_seq=page.after_seq)  # past what this read examined
                caught_up = not page.more
                if caught_up:
                    await self._service.usage_arrival(FOLLOW_RECHECK_SECONDS)


class _Registering:
    """Takes the generated method handlers, gives Watch a serializer that passes shared
    snapshot pages through as the bytes they are, and registers them with the server."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers, which registers both ways

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        watch = handlers["Watch"]
        handlers = {**handlers, "Watch": grpc.unary_stream_rpc_method_handler(
            watch.unary_stream, watch.request_deserializer, serialized)}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self._server.add_registered_method_handlers(service, handlers)


def add_to_server(servicer: OrgServicer, server: grpc.aio.Server) -> None:
    org_pb2_grpc.add_OrgServiceServicer_to_server(servicer, _Registering(server))
