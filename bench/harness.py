"""Shared bench plumbing: a daemon in a temp dir, and timed client loops in worker processes."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from qpu_broker_client.autostart import answers
from qpu_broker_client.paths import resolve_paths


class BenchDaemon:
    def __init__(self, home: pathlib.Path | None = None) -> None:
        self.home = home or pathlib.Path(tempfile.mkdtemp(prefix="qbb-", dir="/tmp"))
        self.env = {**os.environ, "QPU_BROKER_HOME": str(self.home), "QPU_BROKER_NO_AUTOSTART": "1"}
        self.env.pop("QPU_BROKER_SOCKET", None)
        self.paths = resolve_paths(self.env)
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> float:
        """Start the daemon; returns seconds from spawn to its socket answering."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "qpu_broker", "daemon", "--log-level", "warning", *args],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not answers(self.paths):
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited at start")
            time.sleep(0.001)
        return time.perf_counter() - t0

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def _worker(args):  # runs in a spawned process
    kinds, slot, rounds, start_at = args
    calls = [factory(arg) for factory, arg in kinds]
    for call in calls:
        for _ in range(50):  # warm up connections and caches
            call()
    lat: list[list[float]] = [[] for _ in calls]
    # Every worker runs the same kind in the same time slot, and the kinds take
    # turns over several rounds, so machine noise falls on all of them alike.
    for r in range(rounds):
        for k, call in enumerate(calls):
            slot_start = start_at + (r * len(calls) + k) * slot
            while time.time() < slot_start:
                time.sleep(0.0002)
            slot_end = slot_start + slot
            while time.time() < slot_end:
                t0 = time.perf_counter()
                call()
                lat[k].append(time.perf_counter() - t0)
    return lat


def measure(kinds: list[tuple[Callable, object]], clients: int, seconds: float, rounds: int = 5) -> list[dict[str, float]]:
    """Run each `factory(arg)()` in a loop in `clients` processes at once, the kinds
    interleaved in `rounds` slots; `seconds` per kind in all."""
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 5.0 + 0.15 * clients
    slot = seconds / rounds
    with ctx.Pool(clients) as pool:
        results = pool.map(_worker, [(kinds, slot, rounds, start_at)] * clients)
    out = []
    for k in range(len(kinds)):
        lat = sorted(x for r in results for x in r[k])
        out.append({
            "p50_us": statistics.median(lat) * 1e6,
            "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
            "rps": len(lat) / seconds,
        })
    return out
