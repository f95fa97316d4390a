#!/usr/bin/env python3
"""Simulated members' Watch streams for bench/org_scale.py: one process holds many streams,
each on its own TLS channel (as each member's daemon has its own connection), and answers
the orchestrator's commands on stdin with one JSON line each on stdout.

    connect            open every stream at once; report when each has a whole snapshot
    drop               forget that streams are synced (they stay open, or retry on their own)
    wait               report when each stream is synced again (a snapshot, or caught up)
    deleted NAME       report when each stream heard that token NAME was deleted
    quit

Times are CLOCK_MONOTONIC seconds, the same clock in every process on the machine. A failed
stream is tried again after 0.1 s (doubling to 1 s), as a daemon does, and counted.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
import time

import grpc
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc

SNAPSHOT, CAUGHT_UP, DELETED = (org_pb2.WatchEvent.KIND_SNAPSHOT, org_pb2.WatchEvent.KIND_CAUGHT_UP,
                                org_pb2.WatchEvent.KIND_DELETED)


class Stream:
    def __init__(self, address: str, bearer: str, creds: grpc.ChannelCredentials) -> None:
        self.channel = grpc.aio.secure_channel(address, creds, options=[
            ("grpc.ssl_target_name_override", "localhost"), ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = org_pb2_grpc.OrgServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {bearer}"),)  # a device's access token
        self.revision, self.store_id = 0, ""
        self.synced = asyncio.Event()
        self.synced_at = 0.0
        self.failures = 0
        self.deleted: dict[str, float] = {}
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        backoff = 0.1
        while True:
            # From the last revision seen, as a daemon does (a server that cannot resume sends a snapshot).
            request = org_pb2.WatchRequest(after_revision=self.revision, store_id=self.store_id)
            try:
                async for event in self.stub.Watch(request, metadata=self.md):
                    if event.kind == SNAPSHOT and not event.more or event.kind == CAUGHT_UP:
                        self.revision, self.store_id = event.revision, event.store_id
                        backoff = 0.1
                        if not self.synced.is_set():
                            self.synced_at = time.monotonic()
                            self.synced.set()
                    elif event.kind == DELETED:
                        self.revision = max(self.revision, event.revision)
                        for t in event.tokens:
                            self.deleted[t.name] = time.monotonic()
                    elif event.revision:
                        self.revision = max(self.revision, event.revision)
            except grpc.aio.AioRpcError:
                self.failures += 1
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


async def main(config: dict, ca_pem: bytes) -> None:
    creds = grpc.ssl_channel_credentials(ca_pem)
    streams = [Stream(address, bearer, creds) for address, bearer in config["streams"]]
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": len(streams)}), flush=True)
    while line := (await reader.readline()).decode().strip():
        verb, _, arg = line.partition(" ")
        if verb == "connect":
            for s in streams:
                s.start()
        elif verb == "drop":
            for s in streams:
                s.synced.clear()
                s.failures = 0
            print(json.dumps({"dropped": len(streams)}), flush=True)
            continue
        if verb in ("connect", "wait"):
            await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in streams)), 900)
            print(json.dumps({"synced": [s.synced_at for s in streams], "failures": sum(s.failures for s in streams)}),
                  flush=True)
        elif verb == "deleted":
            deadline = time.monotonic() + 60
            while any(arg not in s.deleted for s in streams) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            print(json.dumps({"deleted": [s.deleted.get(arg, 0.0) for s in streams]}), flush=True)
        elif verb == "quit":
            break
    for s in streams:
        await s.stop()
        await s.channel.close()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    config = json.loads(pathlib.Path(sys.argv[1]).read_text())
    asyncio.run(main(config, pathlib.Path(config["ca"]).read_bytes()))
