"""Shared bench plumbing: the tests' daemon helper in a temp dir, and timed client loops in worker processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import pathlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from testsupport.daemon import Daemon


def new_daemon(home: pathlib.Path | None = None) -> Daemon:
    """The tests' daemon helper (testsupport/daemon.py), in a temp dir of its own."""
    return Daemon(home or pathlib.Path(tempfile.mkdtemp(prefix="qbb-", dir="/tmp")) / "home")


def start(d: Daemon) -> float:
    """Start as users get it (default config: info logs, one line per call); returns seconds
    from spawn to its socket answering."""
    d.start(poll=0.001)
    return d.start_seconds


def cleanup(d: Daemon) -> None:
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
    shutil.rmtree(d.home, ignore_errors=True)
    d.log_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # new_daemon's temp dir, now empty (a caller's own is not: kept)
        d.home.parent.rmdir()


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
