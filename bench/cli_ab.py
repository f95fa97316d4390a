#!/usr/bin/env python3
"""A/B of CLI builds: `qpu-broker token list` from each TREE, beside `python -c "import grpc"`,
taking turns in every round, quiet and then beside a CPU hog (the way CLI levers are kept or
reverted; bench/run.py's cli section is the one-build view). Then each build's own imports for the
command timed in-process, grpc and protobuf loaded first: a lever of a few ms is below the walls' noise.

    python3 bench/cli_ab.py TREE TREE ... [--runs 21]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`), run through its PYTHONPATH
with this install's console script; one daemon answers them all.
"""

from __future__ import annotations

import argparse
import compileall
import os
import pathlib
import statistics
import subprocess
import sys

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

import harness
from qpu_broker_client import Broker
from run import cli_exe, cli_times, cpu_hog

GRPC = 'python -c "import grpc"'
# What token list imports of ours, alone: grpc and protobuf's runtime loaded first, then the clock.
OURS = """
import time, grpc, google.protobuf.descriptor_pool, google.protobuf.timestamp_pb2
t = time.perf_counter()
from qpu_broker.cli import main
main.build_parser(["token", "list"])
import qpu_broker_client.broker
print((time.perf_counter() - t) * 1000)
"""


def our_imports(trees: list[str], runs: int) -> dict[str, list[float]]:
    """Each tree's own import cost for token list (ms), the trees taking turns."""
    out: dict[str, list[float]] = {t: [] for t in trees}
    for r in range(runs):
        for tree in trees[r % len(trees):] + trees[:r % len(trees)]:
            env = {**os.environ, "PYTHONPATH": f"{tree}/broker:{tree}/client"}
            out[tree].append(float(subprocess.run([sys.executable, "-c", OURS], env=env, capture_output=True,
                                                  text=True, check=True).stdout))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    for tree in args.trees:  # as pip does at install (testsupport/bytecode.py)
        for package in ("broker", "client"):
            compileall.compile_dir(pathlib.Path(tree) / package, quiet=1)
    d = harness.new_daemon()
    try:
        harness.start(d)
        Broker(str(d.paths.socket), autostart=False).qpu_token.create(name="t", provider="ibm", token="s")
        commands = {tree: ([*cli_exe(), "token", "list"], {**d.env, "PYTHONPATH": f"{tree}/broker:{tree}/client"})
                    for tree in args.trees}
        commands[GRPC] = ([sys.executable, "-c", "import grpc"], d.env)
        quiet = cli_times(commands, args.runs)
        with cpu_hog():
            busy = cli_times(commands, args.runs)
    finally:
        harness.cleanup(d)
    print(f"{args.runs} runs each, taking turns\n")
    print("| build | quiet ms median (min-max) | vs import grpc | busy ms median (min-max) | vs import grpc |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in quiet:  # each build's wall, then its CPU time ("NAME CPU"), against import grpc's
        anchor = f"{GRPC} CPU" if name.endswith(" CPU") else GRPC
        cells = []
        for walls in (quiet, busy):
            w = walls[name]
            cells += [f"{statistics.median(w) * 1000:.1f} ({min(w) * 1000:.0f}-{max(w) * 1000:.0f})",
                      f"{statistics.median(w) / statistics.median(walls[anchor]):.3f}x"]
        print(f"| {name} | {' | '.join(cells)} |")
    print("\n| build | its own imports for token list, ms median (quartiles) |\n| --- | ---: |")
    for tree, ms in our_imports(args.trees, args.runs).items():
        q = statistics.quantiles(ms, n=4)
        print(f"| {tree} | {statistics.median(ms):.1f} ({q[0]:.1f}-{q[2]:.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
