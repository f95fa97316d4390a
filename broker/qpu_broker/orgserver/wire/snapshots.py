"""The org's tokens as members' daemons get them at connect: built once, shared by all.

A snapshot is built once per revision, metered set (which tokens a quota binds for a
member: most members share one) and view (the groups a member is in that some token is
open to: members who see the same tokens share one), serialized once into bounded pages,
and the same bytes go to every stream that asks. A thousand daemons reconnecting at once
cost one build; no snapshot message grows with the number of tokens; and a stream holds a
reference to shared pages, not a copy of the org.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator

from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from qpu_broker.common.custom_providers import definition_json
from qpu_broker.orgserver.groups import View, visible
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgTokenRecord
from qpu_broker.wire.proto_values import reach_to_proto

# A page ends at a thousand tokens or a MiB, whichever comes first (a token's own CA can make
# it large): far under gRPC's 4 MiB default, and little held per stream.
PAGE_TOKENS, PAGE_BYTES = 1000, 1 << 20
# Snapshots shared per revision: members without a quota of their own and in the same groups
# share one, each member-specific quota or combination of groups makes another. Past these, a
# stream's pages are built as they go.
SHARED_SETS = 8

Metered = frozenset[str] | None  # the tokens a quota binds (None: every token)
Key = tuple[Metered, View]
ToProto = Callable[[OrgTokenRecord, Metered], org_pb2.OrgToken]


def serialized(message: bytes | org_pb2.WatchEvent) -> bytes:
    """Watch's response serializer: pages are bytes already, other events are messages."""
    return message if isinstance(message, bytes) else message.SerializeToString()


@dataclasses.dataclass(frozen=True)
class _Org:
    """The org at one revision, read once from the store for every snapshot built of it."""

    revision: int
    records: list[OrgTokenRecord]
    org_reach: dict[str, org_pb2.Reach]
    custom_providers: dict[str, str]  # name -> definition (JSON of its config keys)
    store_id: str
    groups: frozenset[str]  # those some token is open to: the rest of a member's groups change nothing


class Snapshots:
    def __init__(self, service: OrgService, to_proto: ToProto, heartbeat: float) -> None:
        self._service = service
        self._to_proto = to_proto
        self._heartbeat = heartbeat
        self._org: _Org | None = None
        self._built: dict[Key, list[bytes]] = {}  # of self._org's revision
        self._building: dict[Key, asyncio.Task[list[bytes]]] = {}

    def _at_revision(self) -> _Org:
        revision = self._service.revision
        if self._org is None or self._org.revision != revision:
            records, _ = self._service.list()  # read on the loop (the store's one connection)
            self._org = _Org(revision, records, {p: reach_to_proto(r) for p, r in self._service.org_reach().items()},
                             {n: definition_json(d) for n, d in self._service.custom_providers().items()},
                             self._service.store_id, frozenset(g for r in records for g in r.groups or ()))
            self._built, self._building = {}, {}  # an older revision: nobody is given it again
        return self._org

    async def pages(self, metered: Metered, view: View) -> tuple[int, AsyncIterator[bytes]]:
        """(revision, pages) of the org as it is now, as a member with `view` sees it. The first
        SHARED_SETS keys of a revision are built once and shared; a member with a key of their
        own past those gets theirs built a page at a time as it is sent (memory: one page per
        such stream)."""
        org = self._at_revision()
        key = metered, view if view is None else view & org.groups
        if key not in self._built and (key in self._building or len(self._building) + len(self._built) < SHARED_SETS):
            task = self._building.get(key)
            if task is None:
                task = self._building[key] = asyncio.get_running_loop().create_task(
                    asyncio.to_thread(lambda: list(self._build(org, key))))
            try:
                built = await asyncio.shield(task)
            except Exception:
                if self._building.get(key) is task:
                    del self._building[key]  # the next caller tries again
                raise
            if self._org is org:
                self._built[key] = built
                self._building.pop(key, None)
            return org.revision, _each(built)
        if key in self._built:
            return org.revision, _each(self._built[key])
        return org.revision, _one_at_a_time(self._build(org, key))

    def _build(self, org: _Org, key: Key) -> Iterator[bytes]:
        """The pages, serialized: a page ends at PAGE_TOKENS tokens or PAGE_BYTES."""
        metered, view = key
        chunk: list[org_pb2.OrgToken] = []
        size = 0
        for record in org.records:
            if not visible(record.groups, view):
                continue
            token = self._to_proto(record, metered)
            if chunk and (len(chunk) == PAGE_TOKENS or size + token.ByteSize() > PAGE_BYTES):
                yield self._page(org, chunk, more=True)
                chunk, size = [], 0
            chunk.append(token)
            size += token.ByteSize()
        yield self._page(org, chunk, more=False)

    def _page(self, org: _Org, chunk: list[org_pb2.OrgToken], more: bool) -> bytes:
        return org_pb2.WatchEvent(kind=org_pb2.WatchEvent.KIND_SNAPSHOT, tokens=chunk, revision=org.revision,
                                  org_reach=org.org_reach, custom_providers=org.custom_providers,
                                  heartbeat_seconds=self._heartbeat, more=more,
                                  store_id=org.store_id).SerializeToString()


async def _each(pages: list[bytes]) -> AsyncIterator[bytes]:
    for page in pages:
        yield page


async def _one_at_a_time(pages: Iterator[bytes]) -> AsyncIterator[bytes]:
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        yield page
