#!/usr/bin/env python3
"""The org server's own work for one RelaySign or RelayForward, in process and without grpc: µs a
call, and optionally a cProfile of it (which inflates Python calls by about half).

    python3 bench/relay_inproc.py TREE sign|forward [--calls 3000] [--profile]

An org is made and its relay tokens created through a real server (bench/org_scale.py), which
stops; then the service, the record writer and the relay are built in this process from TREE's
code, and the method's handler (wrapped by the policy and auth once, as orgserver/wire/server.py
does, through wire/registration.py: TREE must have it) is
called with a stand-in context, its request parsed and its answer serialized each call. The upstream of a
forward is the bench's HTTPS fake, as in relay_ab.py. Nothing is asserted; docs/performance.md
records runs.
"""

from __future__ import annotations

import argparse
import cProfile
import pathlib
import pstats
import shutil
import sys
import tempfile
import time


class _Context:
    """What the handlers read of a grpc.aio.ServicerContext."""

    def __init__(self, metadata: tuple) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def set_trailing_metadata(self, metadata) -> None:
        pass

    async def abort(self, code, details) -> None:
        raise RuntimeError(f"{code}: {details}")


class _Registered:
    def __init__(self) -> None:
        self.handlers: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})


async def _calls(org, body: bytes, method: str, calls: int, profile: bool) -> None:
    from qpu_broker.orgserver.layout import OrgLayout
    from qpu_broker.orgserver.record_writer import RecordWriter
    from qpu_broker.orgserver.relay import Relay
    from qpu_broker.orgserver.service import OrgService
    from qpu_broker.orgserver.store import OrgStore
    from qpu_broker.orgserver.throttle import Throttle
    from qpu_broker.orgserver.wire.auth import OrgAuth
    from qpu_broker.orgserver.wire.servicer import OrgServicer, add_to_server
    from qpu_broker.wire.interceptors import with_policy
    from qpu_broker.wire.registration import WrappedServer

    layout = OrgLayout(org.data)
    store, key = layout.open(None)
    service = OrgService(store, key, names=("localhost",))
    kind, target = layout.database(None)
    writer = RecordWriter(lambda: OrgStore.open(kind, target, synchronous="normal"))
    writer.start()
    relay = Relay(service, writer)
    registered = _Registered()
    auth = OrgAuth(service, Throttle())
    add_to_server(OrgServicer(service, relay, auth.admit_relayed), WrappedServer(registered, auth.wrap, with_policy))
    handler = registered.handlers[f"/qpubroker.org.v1.OrgService/{method}"]
    context = _Context((("authorization", "Bearer " + org.keys["m00000"]),))

    async def one() -> bytes:
        return handler.response_serializer(await handler.unary_unary(handler.request_deserializer(body), context))

    for _ in range(200):  # warm: the kept reads, the upstream pool
        await one()
    profiler = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(calls):
        await one()
    if profiler:
        profiler.disable()
    print(f"{method}: {(time.perf_counter() - t0) / calls * 1e6:.1f} µs a call (in process, no grpc)")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    await relay.close()
    writer.close()
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=pathlib.Path)
    parser.add_argument("kind", choices=("sign", "forward"))
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    tree = args.tree.resolve()
    sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(tree), str(tree / "broker"), str(tree / "client")]
    import uvloop
    from org_scale import Org, relay_bodies

    from testsupport.fakes import FakeServer, header_check, make_ca

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbrin-", dir="/tmp"))
    ca = make_ca(tmp / "ca")
    fake = FakeServer(header_check("Authorization", lambda: "apiKey bench-ionq-key"), ca)
    try:
        (tmp / "w").mkdir()
        org = Org(tmp / "w", tree, ca, "", 20, 1)
        org.allow(fake)
        org.serve(1)
        bodies = relay_bodies(org, fake, tmp / "w")
        org.stop()
        body = bodies[args.kind].read_bytes()[5:]  # the message, without its gRPC frame header
        uvloop.run(_calls(org, body, "RelaySign" if args.kind == "sign" else "RelayForward", args.calls, args.profile))
    finally:
        fake.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
