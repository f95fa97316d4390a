#!/usr/bin/env python3
"""A/B of daemon builds, the way levers are kept or reverted: h2load over the Unix socket,
the builds taking turns in each round, in one run.

    python3 bench/ab.py TREE[@LOGLEVEL] TREE[@LOGLEVEL] ... [--rounds 4] [--seconds 4]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`); @warning runs that one with
`--log-level warning` (default: the default config).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

from clients import sign_request
from harness import cleanup
from run import _cpu_seconds, grpc_body, h2load

from testsupport.daemon import Daemon

CALLS = (("floor", "grpc.health.v1.Health/Check", (2, 16)), ("sign", "qpubroker.v1.RequestService/Sign", (2, 16)),
         ("sign, 1 client", "qpubroker.v1.RequestService/Sign", (1, 1)))


def daemon(spec: str, tmp: pathlib.Path) -> Daemon:
    """The tests' daemon helper, running TREE's code (its PYTHONPATH), with a stored AWS token."""
    tree, _, level = spec.partition("@")
    d = Daemon(pathlib.Path(tempfile.mkdtemp(prefix="qbab-", dir=tmp)) / "home",
               {"PYTHONPATH": f"{tree}/broker:{tree}/client"})
    d.start(*(("--log-level", level) if level else ()))
    d.broker().qpu_token.create(name="bench", provider="aws", token="AKIAIOSFODNN7EXAMPLE:" + "s" * 40)
    return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbab-", dir="/tmp"))
    (tmp / "floor.bin").write_bytes(b"\0\0\0\0\0")
    (tmp / "sign.bin").write_bytes(grpc_body(sign_request("bench")))
    daemons = {spec: daemon(spec, tmp) for spec in args.trees}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for r in range(args.rounds):
            for name, method, shape in CALLS:
                for spec in (args.trees if r % 2 == 0 else args.trees[::-1]):
                    d = daemons[spec]
                    before = _cpu_seconds(d.proc.pid)
                    out = h2load(str(d.paths.socket), method, tmp / f"{name.split(',')[0]}.bin", *shape, args.seconds, tmp / "h2.log")
                    out["cpu_us"] = (_cpu_seconds(d.proc.pid) - before) * 1e6 / max(1.0, out["rps"] * (args.seconds + 1))
                    results.setdefault((name, spec), []).append(out)
    finally:
        for d in daemons.values():
            cleanup(d)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| call | build | p50 µs | p99 µs | req/s | server CPU µs/call | req/s per round |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for (name, spec), runs in results.items():
        print(f"| {name} | {spec} | {statistics.median(x['p50_us'] for x in runs):.0f} | "
              f"{statistics.median(x['p99_us'] for x in runs):.0f} | "
              f"{statistics.median(x['rps'] for x in runs):.0f} | {statistics.median(x['cpu_us'] for x in runs):.0f} | "
              f"{', '.join(str(round(x['rps'])) for x in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
