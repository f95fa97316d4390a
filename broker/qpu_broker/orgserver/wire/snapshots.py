"""The org's tokens as members' daemons get them at connect: built once, shared by all.

A snapshot is built once per revision and metered set (which tokens a quota binds for a
member: most members share one), serialized once into bounded pages,
and the same bytes go to every stream that asks. A thousand daemons reconnecting at once
cost one build; no snapshot message grows with the number of tokens; and a stream holds a
reference to shared pages, not a copy of the org.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgTokenRecord
from qpu_broker.wire.proto_values import reach_to_proto

# A page ends at a thousand tokens or a MiB, whichever comes first (a token's own CA can make
# it large): far under gRPC's 4 MiB default, and little held per stream.
PAGE_TOKENS, PAGE_BYTES = 1000, 1 << 20

Metered = frozenset[str] | None  # the tokens a quota binds (None: every token)
ToProto = Callable[[OrgTokenRecord, Metered], org_pb2.OrgToken]


def serialized(message: bytes | org_pb2.WatchEvent) -> bytes:
    """Watch's response serializer: pages are bytes already, other events are messages."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class Snapshots:
    def __init__(self, service: OrgService, to_proto: ToProto, heartbeat: float) -> None:
        self._service = service
        self._to_proto = to_proto
        self._heartbeat = heartbeat
        self._built: dict[tuple[int, Metered], list[bytes]] = {}
        self._building: dict[tuple[int, Metered], asyncio.Future[list[bytes]]] = {}

    async def pages(self, metered: Metered) -> tuple[int, list[bytes]]:
        """(revision, pages) of the org as it is now."""
        revision = self._service.revision
        key = (revision, metered)
        if key not in self._built:
            for old in [k for k in self._built if k[0] != revision]:
                del self._built[old]  # an older revision: nobody is given it again
            if key not in self._building:
                self._building[key] = asyncio.get_running_loop().create_task(self._build(revision, metered))
            try:
                pages = await asyncio.shield(self._building[key])
            finally:
                self._building.pop(key, None)
            if self._service.revision == revision:
                self._built[key] = pages
            return revision, pages
        return revision, self._built[key]

    async def _build(self, revision: int, metered: Metered) -> list[bytes]:
        records, _ = self._service.list()  # read now, on the loop (the store's one connection)
        org_reach = {p: reach_to_proto(r) for p, r in self._service.org_reach().items()}
        store_id = self._service.store_id

        def build() -> list[bytes]:  # proto building and serializing: off the loop
            chunks: list[list[org_pb2.OrgToken]] = [[]]
            size = 0
            for record in records:
                token = self._to_proto(record, metered)
                if chunks[-1] and (len(chunks[-1]) == PAGE_TOKENS or size + token.ByteSize() > PAGE_BYTES):
                    chunks.append([])
                    size = 0
                chunks[-1].append(token)
                size += token.ByteSize()
            return [org_pb2.WatchEvent(
                kind=org_pb2.WatchEvent.KIND_SNAPSHOT, tokens=chunk, revision=revision, org_reach=org_reach,
                heartbeat_seconds=self._heartbeat, more=n < len(chunks) - 1, store_id=store_id).SerializeToString()
                for n, chunk in enumerate(chunks)]

        return await asyncio.to_thread(build)
