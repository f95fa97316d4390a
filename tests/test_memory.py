"""What stays in the daemon's memory: scanned through /proc/PID/mem (root only: the daemon is
non-dumpable, so nobody else can read it at all). CI runs as root."""

from __future__ import annotations

import os
import pathlib
import re
import sqlite3

import pytest
from qpu_broker.keys import kek as keys
from qpu_broker_client import QpuToken, TokenProvider

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")


def _copies(pid: int, needle: bytes) -> list[tuple[str, bytes]]:
    """Every copy of `needle` in the process's readable memory: (mapping, the 48 bytes before it)."""
    found = []
    with open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)", line)
            if "r" not in m[3] or m[4] in ("[vvar]", "[vsyscall]"):
                continue
            try:
                mem.seek(int(m[1], 16))
                data = mem.read(int(m[2], 16) - int(m[1], 16))
            except OSError:
                continue
            at = data.find(needle)
            while at != -1:
                found.append((m[4] or "anon", data[max(0, at - 48):at]))
                at = data.find(needle, at + 1)
    return found


def _data_key(d) -> bytes:
    db = sqlite3.connect(d.paths.store)
    wrapped = bytes(db.execute("SELECT value FROM meta WHERE key = 'wrapped_key'").fetchone()[0])
    db.close()
    kek = keys.kek_from_material(keys.read_material(d.paths.key_file, "key file"), keys.KeySource.KEY_FILE)
    return keys.unwrap(kek, wrapped, keys.KeySource.KEY_FILE)


def test_after_lock_no_data_key_and_only_the_documented_freed_copies_of_a_secret(rig):
    d, hw, _ = rig
    b = d.broker()
    secret = hw.secrets["dwave"].encode()
    tokens = TokenProvider(dwave=QpuToken("personal", name="my-dwave"))
    for _ in range(20):
        assert b.forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=tokens).status_code == 200
    data_key = _data_key(d)
    assert len(_copies(d.proc.pid, data_key)) == 1  # the one mlock'ed buffer while unlocked
    b.lock()
    assert _copies(d.proc.pid, data_key) == []  # wiped, not merely dropped
    remaining = _copies(d.proc.pid, secret)
    # What the daemon's own code no longer holds, but freed memory and the loop thread's
    # C stack still do until reused (docs/design.md, "What stays in memory"):
    # - the last request head aiohttp serialised ("X-Auth-Token: <secret>"), in its
    #   stack buffer and in a freed heap buffer;
    # - the gRPC receive buffer of the call that stored the secret (a protobuf with the
    #   token's name and provider just before it);
    # - sometimes, the short-lived bytes object the last use opened: CPython's small-object
    #   allocator keeps a freed block as it was until the block is reused, so whether it is
    #   still there depends on what was allocated since (its header: size, unset hash).
    freed_bytes_header = len(secret).to_bytes(8, "little") + b"\xff" * 8
    for mapping, before in remaining:
        assert before.endswith((b"X-Auth-Token: ", freed_bytes_header)) or b"my-dwave" in before, (mapping, before)
    assert sum(before.endswith(freed_bytes_header) for _, before in remaining) <= 1, remaining
    assert len(remaining) <= 5, remaining


def test_a_lock_collects_garbage_cycles_the_frozen_start_up_heap_held():
    """common/heap.py freezes start-up's objects once the daemon is ready; the collection a lock
    makes (release_freed_memory) must still reach a cycle made before that, holding a secret,
    that is garbage now. Run in a process of its own: a freeze would hold the test worker's heap."""
    import subprocess
    import sys

    script = (
        "import gc, weakref\n"
        "from qpu_broker.common.heap import settle\n"
        "from qpu_broker.common.hardening import release_freed_memory\n"
        "class Holder: pass\n"
        "h = Holder(); h.self = h; h.secret = b'canary-' + b'x' * 32\n"
        "alive = weakref.ref(h)\n"
        "settle()\n"
        "del h\n"
        "release_freed_memory()\n"
        "print('kept' if alive() is not None else 'collected', gc.get_freeze_count() > 0)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["collected", "True"]  # gone, and the rest frozen again
