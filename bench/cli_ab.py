#!/usr/bin/env python3
"""A/B of CLI builds: `qpu-broker token list` from each TREE, beside `python -c "import grpc"`,
taking turns in every round, quiet and then beside a CPU hog (the way CLI levers are kept or
reverted; bench/run.py's cli section is the one-build view). Then, in-process, each phase of the
command on its own clock (ms, median and quartiles): a lever of a few ms is below the walls' noise.

    python3 bench/cli_ab.py TREE TREE ... [--runs 21]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`), run through its PYTHONPATH
with this install's console script; one daemon answers them all.
"""

from __future__ import annotations

import argparse
import compileall
import pathlib
import statistics
import subprocess
import sys

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

import harness
from qpu_broker_client import Broker
from run import cli_exe, cli_times, cpu_hog

GRPC = 'python -c "import grpc"'
# Where token list's time goes inside the process, each phase on its own clock: grpc, protobuf's
# runtime, our imports with the parser, argparse's parse, and the command (reach the socket, the
# channel, the call, the table printed to a buffer).
PHASES = ("import grpc", "protobuf's runtime", "our imports and the parser", "parse", "the command")
TIMED = """
import contextlib, io, os, sys, time
t = [time.perf_counter()]
import grpc
t.append(time.perf_counter())
import google.protobuf.descriptor_pool, google.protobuf.timestamp_pb2
t.append(time.perf_counter())
from qpu_broker.cli import main
parser = main.build_parser(["token", "list"])
import qpu_broker_client.broker
t.append(time.perf_counter())
args = parser.parse_args(["token", "list"])
t.append(time.perf_counter())
with contextlib.redirect_stdout(io.StringIO()):
    assert main._dispatch(parser, args) == 0
t.append(time.perf_counter())
print(*((b - a) * 1000 for a, b in zip(t, t[1:])))
sys.stdout.flush()
os._exit(0)
"""


def phases(trees: list[str], runs: int, env: dict[str, str]) -> dict[str, list[list[float]]]:
    """Each tree's phases (ms) in `runs` processes, the trees taking turns."""
    out: dict[str, list[list[float]]] = {t: [] for t in trees}
    for r in range(runs):
        for tree in trees[r % len(trees):] + trees[:r % len(trees)]:
            done = subprocess.run([sys.executable, "-c", TIMED], env={**env, "PYTHONPATH": f"{tree}/broker:{tree}/client"},
                                  capture_output=True, text=True, check=True)
            out[tree].append([float(x) for x in done.stdout.split()])
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
        inside = phases(args.trees, args.runs, d.env)
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
    print(f"\n| build | {' | '.join(PHASES)} |\n| --- |{' ---: |' * len(PHASES)}")
    for tree, rows in inside.items():  # medians, ms (quartiles)
        cells = []
        for i in range(len(PHASES)):
            q = statistics.quantiles([row[i] for row in rows], n=4)
            cells.append(f"{statistics.median(row[i] for row in rows):.1f} ({q[0]:.1f}-{q[2]:.1f})")
        print(f"| {tree} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
