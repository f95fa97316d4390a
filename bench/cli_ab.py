#!/usr/bin/env python3
"""A/B of CLI builds: `qpu-broker token list` from each TREE, beside `python -c "import grpc"`,
taking turns in every round, quiet and then beside a CPU hog (the way CLI levers are kept or
reverted; bench/run.py's cli section is the one-build view).

    python3 bench/cli_ab.py TREE TREE ... [--runs 21]

A TREE is a checkout (e.g. `git worktree add /tmp/before COMMIT`), run through its PYTHONPATH
with this install's console script; one daemon answers them all.
"""

from __future__ import annotations

import argparse
import compileall
import pathlib
import statistics
import sys

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]

import harness
from qpu_broker_client import Broker
from run import cli_exe, cli_times, cpu_hog

GRPC = 'python -c "import grpc"'


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
