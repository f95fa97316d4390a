#!/usr/bin/env python3
"""The ceiling of grpc-python itself on this machine: an empty handler (the standard health
Check) on bare servers, no interceptor, no log line, measured with h2load over a Unix socket,
the server kinds taking turns over rounds. What the daemon's own code costs is the gap to it.

    python3 bench/grpc_ceiling.py [--rounds 3] [--seconds 4]
    python3 bench/grpc_ceiling.py --serve KIND SOCKET     (one server; used by the run)

KIND: uvloop (grpc.aio on uvloop, as the daemon runs), asyncio (grpc.aio on asyncio's loop),
sync (grpc's thread-pool server, 10 threads).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import pathlib
import statistics
import sys
import tempfile

KINDS = ("uvloop", "asyncio", "sync")
SHAPES = ((1, 1), (2, 16))


def serve(kind: str, sock: str) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    if kind == "sync":
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(10))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(f"unix:{sock}")
        server.start()
        server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        await server.wait_for_termination()

    if kind == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "SOCKET"))
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from run import h2load, start_bare_server

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbgc-", dir="/tmp"))
    (tmp / "empty.bin").write_bytes(b"\0\0\0\0\0")
    runs: dict[tuple[str, tuple[int, int]], list[float]] = {}
    for _ in range(args.rounds):
        for kind in KINDS:
            proc, sock = start_bare_server(tmp, kind)
            try:
                for shape in SHAPES:
                    r = h2load(sock, "grpc.health.v1.Health/Check", tmp / "empty.bin", *shape, args.seconds,
                               tmp / "h2.log")
                    runs.setdefault((kind, shape), []).append(r["rps"])
            finally:
                proc.terminate()
                proc.wait()
                pathlib.Path(sock).unlink(missing_ok=True)
    print(f"| server, empty handler | connections x streams | req/s median of {args.rounds} | rounds |")
    print("| --- | --- | ---: | --- |")
    for (kind, (c, m)), v in runs.items():
        print(f"| {kind} | {c} x {m} | {statistics.median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
