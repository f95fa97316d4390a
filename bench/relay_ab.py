#!/usr/bin/env python3
"""A/B of org-server builds on relayed calls: h2load straight at the servers, the builds taking
turns in each round, in one run.

    python3 bench/relay_ab.py TREE TREE ... [--rounds 4] [--seconds 3] [--postgresql] [--replicas 2]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`). Each build serves its own org
(SQLite, or with --postgresql its own database on one PostgreSQL with its defaults, durable
commits; --replicas servers on it), with the same TLS and loopback HTTPS fake. Measured per build:
the standard empty RPC (Health/Check: the floor of a call through that server), RelaySign and
RelayForward one call at a time (p50 from h2load's per-request log), relayed
Forward at 16 in flight (four members, four each: the server's limits), and the servers' CPU per
call. Nothing is asserted; docs/performance.md records runs.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

from org_scale import Org, relay_bodies, relay_load
from run import _cpu_seconds, _h2load

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.postgres import Postgres

KINDS = ("empty RPC, 1 in flight", "sign, 1 in flight", "forward, 1 in flight", "forward, 16 in flight")


def _one(org: Org, body: pathlib.Path, method: str, seconds: float, log: pathlib.Path) -> dict[str, float]:
    """`method`: an OrgService method, or a full path (the empty RPC: the floor of a call)."""
    address = org.addresses()[0]
    path = method if method.startswith("/") else f"/qpubroker.org.v1.OrgService/{method}"
    return _h2load(["-c", "1", "-m", "1", "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "-H", f"authorization: Bearer {org.keys['m00000']}", f"https://{address}{path}"], seconds, log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=pathlib.Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgresql", action="store_true", help="each org on PostgreSQL (default: SQLite)")
    parser.add_argument("--replicas", type=int, default=1, help="servers per org (PostgreSQL only)")
    args = parser.parse_args()
    if args.replicas > 1 and not args.postgresql:
        parser.error("replicas need --postgresql")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbrab-", dir="/tmp"))
    ca = make_ca(tmp / "ca")
    fake = FakeServer(header_check("Authorization", lambda: "apiKey bench-ionq-key"), ca)
    pg = Postgres(fast=False, max_connections=100).start() if args.postgresql else None
    empty = tmp / "empty.bin"
    empty.write_bytes(b"\0\0\0\0\0")  # a gRPC frame of an empty HealthCheckRequest
    orgs: dict[pathlib.Path, tuple[Org, dict[str, pathlib.Path]]] = {}
    results: dict[tuple[str, pathlib.Path], list[dict[str, float]]] = {}
    try:
        for n, tree in enumerate(args.trees):
            work = tmp / f"t{n}"
            work.mkdir()
            org = Org(work, tree, ca, pg.create_database(f"ab{n}") if pg else "", 20, 1)
            org.allow(fake)
            org.serve(args.replicas)
            orgs[tree] = org, relay_bodies(org, fake, work)
        for r in range(args.rounds):
            for kind in KINDS:
                for tree in (args.trees if r % 2 == 0 else args.trees[::-1]):
                    org, bodies = orgs[tree]
                    pids = [proc.pid for proc, _ in org.servers]
                    before = sum(_cpu_seconds(p) for p in pids)
                    if kind.startswith("empty"):
                        out = _one(org, empty, "/grpc.health.v1.Health/Check", args.seconds, tmp / "h2.log")
                    elif kind.startswith("sign"):
                        out = _one(org, bodies["sign"], "RelaySign", args.seconds, tmp / "h2.log")
                    elif kind.startswith("forward, 1 "):
                        out = _one(org, bodies["forward"], "RelayForward", args.seconds, tmp / "h2.log")
                    else:
                        out = {"p50_us": 0.0, "rps": relay_load(org, bodies["forward"], args.seconds)}
                    out["cpu_us"] = (sum(_cpu_seconds(p) for p in pids) - before) * 1e6 / max(1.0, out["rps"] * (args.seconds + 1))
                    results.setdefault((kind, tree), []).append(out)
    finally:
        for org, _ in orgs.values():
            org.stop()
        fake.close()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    store = f"PostgreSQL, {args.replicas} replica(s)" if args.postgresql else "SQLite"
    print(f"{store}; {args.rounds} rounds of {args.seconds:g} s, medians\n")
    print("| call | build | p50 µs | req/s | server CPU µs/call | req/s per round |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (kind, tree), runs in results.items():
        p50 = statistics.median(x["p50_us"] for x in runs)
        print(f"| {kind} | {tree} | {p50:.0f} | {statistics.median(x['rps'] for x in runs):.0f} | "
              f"{statistics.median(x['cpu_us'] for x in runs):.0f} | {', '.join(str(round(x['rps'])) for x in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
