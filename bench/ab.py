#!/usr/bin/env python3
"""A/B of daemon builds, the way levers are kept or reverted: h2load over the Unix socket,
the builds taking turns in each round, in one run.

    python3 bench/ab.py TREE[@LOGLEVEL] TREE[@LOGLEVEL] ... [--rounds 4] [--seconds 4]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`); @warning runs that one with
`[agent] log_level = "warning"` (default: the default config).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

from run import _cpu_seconds, grpc_body, h2load

CALLS = (("floor", "grpc.health.v1.Health/Check", (2, 16)), ("sign", "qpubroker.v1.RequestService/Sign", (2, 16)),
         ("sign, 1 client", "qpubroker.v1.RequestService/Sign", (1, 1)))


def daemon(spec: str, tmp: pathlib.Path) -> tuple[subprocess.Popen, str]:
    tree, _, level = spec.partition("@")
    home = pathlib.Path(tempfile.mkdtemp(prefix="qbab-", dir=tmp)) / "home"
    home.mkdir(mode=0o700)
    if level:
        (home / "config.toml").write_text(f'[agent]\nlog_level = "{level}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QPU_BROKER_")}
    env.update(QPU_BROKER_HOME=str(home), QPU_BROKER_NO_AUTOSTART="1", PYTHONPATH=f"{tree}/broker:{tree}/client")
    cli = [sys.executable, "-m", "qpu_broker"]
    proc = subprocess.Popen([*cli, "daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while subprocess.run([*cli, "status"], check=False, env=env, capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec}: the daemon did not answer")
        time.sleep(0.05)
    subprocess.run([*cli, "token", "add", "bench", "--provider", "aws"], env=env, check=True, capture_output=True,
                   input=b"AKIAIOSFODNN7EXAMPLE:" + b"s" * 40)
    return proc, str(home / "run" / "broker.sock")


def main() -> int:
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2, tokens_pb2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbab-", dir="/tmp"))
    sign = requests_pb2.SignRequest(
        method="POST", url="https://braket.us-east-1.amazonaws.com/quantum-task", body=b'{"shots": 100}',
        headers=[requests_pb2.Header(name="Content-Type", value="application/json")],
        tokens=requests_pb2.TokenProvider(aws=requests_pb2.TokenRef(kind=tokens_pb2.TOKEN_KIND_PERSONAL, name="bench")))
    (tmp / "floor.bin").write_bytes(b"\0\0\0\0\0")
    (tmp / "sign.bin").write_bytes(grpc_body(sign))
    daemons = {spec: daemon(spec, tmp) for spec in args.trees}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for r in range(args.rounds):
            for name, method, shape in CALLS:
                for spec in (args.trees if r % 2 == 0 else args.trees[::-1]):
                    proc, sock = daemons[spec]
                    before = _cpu_seconds(proc.pid)
                    out = h2load(sock, method, tmp / f"{name.split(',')[0]}.bin", *shape, args.seconds, tmp / "h2.log")
                    out["cpu_us"] = (_cpu_seconds(proc.pid) - before) * 1e6 / max(1.0, out["rps"] * (args.seconds + 1))
                    results.setdefault((name, spec), []).append(out)
    finally:
        for proc, _ in daemons.values():
            proc.terminate()
    print("| call | build | p50 µs | req/s | server CPU µs/call | req/s per round |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (name, spec), runs in results.items():
        print(f"| {name} | {spec} | {statistics.median(x['p50_us'] for x in runs):.0f} | "
              f"{statistics.median(x['rps'] for x in runs):.0f} | {statistics.median(x['cpu_us'] for x in runs):.0f} | "
              f"{', '.join(str(round(x['rps'])) for x in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
