#!/usr/bin/env python3
"""The org server at scale: one SQLite server against two replicas on one PostgreSQL, in one run.

    python3 bench/org_scale.py                      # the full run (about 15 minutes on 2 cores)
    python3 bench/org_scale.py --quick              # a smoke run
    python3 bench/org_scale.py --before TREE        # also the same storm against an older checkout

Measures, for each store: the reconnect storm (members connecting at once to an org of
10,000 tokens, each on its own TLS connection, as daemons do) until every stream has the
whole snapshot, the server's peak memory, and failed attempts; the same members resuming
after a restart of every server; revocation fan-out to every member; relay Forward req/s
(h2load against RelayForward, one replica against two); usage records stored a second; and
one member syncing an org of 100,000 tokens. PostgreSQL runs with its defaults (durable
commits). The simulated members are bench/watch_streams.py processes (grpc.aio on uvloop).
Nothing is asserted; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT), str(ROOT / "broker"), str(ROOT / "client")]

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.postgres import Postgres

SETUP = r'''
import json, os, sys, pathlib
from qpu_broker.common.reach import Owner, Reach
import time
from qpu_broker.keys import device_key
from qpu_broker.orgserver.access_tokens import AccessTokens
from qpu_broker.orgserver.admin_record import ACTOR, local_operator
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.service import OrgService
ACTOR.set(local_operator())  # the changes below are the local operator's, in the admin record
data, database, members, tokens = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
layout = OrgLayout(data)
store, key = layout.create(database) if database else layout.create()
store.set_meta("org", "Bench")
service = OrgService(store, key)
made = service.add_users([("admin", "admin")] + [(f"m{i:05}", "member") for i in range(members)])
# Each member enrolls a device with their code, as their daemon would. A bench outlasts an access
# token (10 minutes) and h2load cannot ask for another, so each gets one for a day, signed with the
# server's key like any (white box: the bench made this org), for the name its clients use.
access, day = AccessTokens(key, ("localhost",)), int(time.time() * 1e6) + 86_400_000_000
keys = {}
for user, _, code in made:
    device = service.devices.enroll(code, device_key.public_key(device_key.new_private_key()), "bench").device
    keys[user.name] = access.mint(device.id, day, "localhost")
for i in range(tokens):
    service.create(f"t{i:06}", "ionq", b"bench-secret-" + str(i).encode(), Reach(owner=Owner.ORG), relay=False)
print(json.dumps(keys))
'''


def _env(tree: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}/broker:{tree}/client"}


def _peak_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Org:
    """An org's data dir and its serving processes (one, or replicas on PostgreSQL)."""

    def __init__(self, tmp: pathlib.Path, tree: pathlib.Path, ca, database: str, members: int, tokens: int) -> None:
        self.tmp, self.tree, self.ca = tmp, tree, ca
        self.data = tmp / "org"
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", SETUP, str(self.data), database, str(members), str(tokens)],
                             env=_env(tree), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        self.keys = json.loads(out.stdout)
        self.setup_seconds = time.monotonic() - t0
        self.servers: list[tuple[subprocess.Popen, int]] = []

    def allow(self, fake) -> None:
        """Org tokens may go to the fake: the org's admin allows it, org-wide."""
        subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "provider", "set", "ionq", "--data", str(self.data),
                        "--host", fake.netloc, "--ca-file", str(self.ca.ca_file)], env=_env(self.tree), check=True,
                       capture_output=True)

    def serve(self, count: int, ports: list[int] | None = None) -> float:
        """Start `count` servers (on `ports`, else any); returns seconds until all are ready."""
        t0 = time.monotonic()
        for n in range(count):
            self.starts += 1
            log = self._log(self.starts)
            port = ports[n] if ports else 0
            proc = subprocess.Popen([sys.executable, "-m", "qpu_broker", "org-server", "serve", "--data", str(self.data),
                                     "--listen", f"127.0.0.1:{port}", "--tls-cert", str(self.ca.cert_file), "--tls-key",
                                     str(self.ca.key_file)],
                                    env=_env(self.tree), stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
            deadline = time.monotonic() + 60
            while not (m := re.search(r"ready on 127\.0\.0\.1:(\d+)", log.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"org server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.01)
            self.servers.append((proc, int(m[1])))
        return time.monotonic() - t0

    starts = 0

    def kill(self) -> list[int]:
        """SIGKILL every server (a crash, or a machine lost); returns their ports."""
        ports = [port for _, port in self.servers]
        for proc, _ in self.servers:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.servers = []
        return ports

    def logs(self) -> list[pathlib.Path]:
        """Every server's log, those stopped too."""
        return [self._log(n) for n in range(1, self.starts + 1)]

    def _log(self, start: int) -> pathlib.Path:
        return self.tmp / f"serve-{start}.log"

    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for _, port in self.servers]

    def peak_mib(self) -> list[float]:
        return [_peak_mib(proc.pid) for proc, _ in self.servers]

    def stop(self) -> None:
        for proc, _ in self.servers:
            proc.terminate()
            proc.wait(30)
        self.servers = []


class Members:
    """Simulated members' streams in `procs` processes, spread over the servers in turn."""

    def __init__(self, org: Org, count: int, procs: int = 2) -> None:
        names = [f"m{i:05}" for i in range(count)]
        addresses = org.addresses()
        self.procs = []
        for p in range(procs):
            mine = [(addresses[i % len(addresses)], org.keys[n]) for i, n in enumerate(names) if i % procs == p]
            config = org.tmp / f"streams-{p}.json"
            config.write_text(json.dumps({"ca": str(org.ca.ca_file), "streams": mine}))
            proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "watch_streams.py"), str(config)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(ROOT))
            json.loads(proc.stdout.readline())
            self.procs.append(proc)

    def ask(self, command: str) -> list[dict]:
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        return [json.loads(proc.stdout.readline()) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                proc.kill()


def _spread(times: list[float], t0: float) -> str:
    rel = sorted(t - t0 for t in times)
    return f"{statistics.median(rel) * 1000:.0f} | {rel[int(len(rel) * 0.99) - 1 if len(rel) > 1 else 0] * 1000:.0f} | {rel[-1] * 1000:.0f}"


def _row(label: str, what: str, answers: list[dict], t0: float, org: Org) -> str:
    synced = [t for a in answers for t in a["synced"]]
    return (f"| {label} | {what} | {_spread(synced, t0)} | {' + '.join(f'{m:.0f}' for m in org.peak_mib())} | "
            f"{sum(a['failures'] for a in answers)} |")


def storm(org: Org, members: int, label: str, rows: list[str], more: bool) -> None:
    """Every member connects at once. Then (`more`): every server is killed and started again on
    its port, and every member's stream comes back on its own (resuming from its revision where
    the server can); and revocation fan-out."""
    streams = Members(org, members)
    try:
        t0 = time.monotonic()
        rows.append(_row(label, f"{members} connect at once", streams.ask("connect"), t0, org))
        print(rows[-1], flush=True)
        if not more:
            return
        streams.ask("drop")
        t0 = time.monotonic()
        started = org.serve(len(ports := org.kill()), ports)
        rows.append(_row(label, f"{members} come back after a kill -9 and restart (servers ready in "
                                f"{started * 1000:.0f} ms)", streams.ask("wait"), t0, org))
        print(rows[-1], flush=True)
        fanout(org, streams, label)
    finally:
        streams.close()


FANOUT_ROWS: list[str] = []


def fanout(org: Org, streams: Members, label: str, revocations: int = 5) -> None:
    import grpc
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc

    channel = grpc.secure_channel(org.addresses()[0], grpc.ssl_channel_credentials(org.ca.ca_file.read_bytes()),
                                  options=[("grpc.ssl_target_name_override", "localhost")])
    stub, md = org_pb2_grpc.OrgServiceStub(channel), (("authorization", f"Bearer {org.keys['admin']}"),)
    lat: list[float] = []
    for i in range(revocations):
        name = f"t{i:06}"
        t0 = time.monotonic()
        stub.DeleteToken(org_pb2.DeleteTokenRequest(token=org_pb2.GetTokenRequest(name=name)), metadata=md)
        lat += [t - t0 for a in streams.ask(f"deleted {name}") for t in a["deleted"]]
    lat.sort()
    FANOUT_ROWS.append(f"| {label} | {len(lat) // revocations} | {statistics.median(lat) * 1000:.0f} | "
                       f"{lat[int(len(lat) * 0.99)] * 1000:.0f} | {lat[-1] * 1000:.0f} |")
    print(FANOUT_ROWS[-1], flush=True)
    channel.close()


def _stub(org: Org, address: str, key: str):
    import grpc
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2_grpc

    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(org.ca.ca_file.read_bytes()),
                                  options=[("grpc.ssl_target_name_override", "localhost"),
                                           ("grpc.max_receive_message_length", 256 << 20)])
    return org_pb2_grpc.OrgServiceStub(channel), (("authorization", f"Bearer {key}"),), channel


def relay_bodies(org: Org, fake, work: pathlib.Path) -> dict[str, pathlib.Path]:
    """A relay IonQ token and a relay AWS token made by the org's admin; gRPC bodies of a RelayForward
    (a GET to the fake) and a RelaySign (a Braket POST) with them, for h2load."""
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
    from run import grpc_body

    stub, md, channel = _stub(org, org.addresses()[0], org.keys["admin"])
    made = len(list(work.glob("relay-*.bin")))
    ionq = stub.CreateToken(org_pb2.CreateTokenRequest(name=f"relay-{made}", provider="ionq", secret=b"bench-ionq-key",
                                                       relay=True), metadata=md)
    aws = stub.CreateToken(org_pb2.CreateTokenRequest(name=f"relay-aws-{made}", provider="aws", relay=True,
                                                      secret=b"AKIAIOSFODNN7EXAMPLE:" + b"s" * 40), metadata=md)
    channel.close()
    bodies = {"forward": work / f"relay-{made}-forward.bin", "sign": work / f"relay-{made}-sign.bin"}
    bodies["forward"].write_bytes(grpc_body(org_pb2.RelayForwardRequest(token_id=ionq.id, provider="ionq", method="GET",
                                                                        url=fake.url("/v0.3/jobs"))))
    bodies["sign"].write_bytes(grpc_body(org_pb2.RelaySignRequest(
        token_id=aws.id, provider="aws", method="POST", url="https://braket.us-east-1.amazonaws.com/quantum-task",
        body_sha256="44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", body_bytes=2)))
    return bodies


RELAY_SUMMARY = re.compile(r"OrgService/RelayForward (\w+) x(\d+)")


def relay_outcomes(logs: list[pathlib.Path]) -> str:
    """What relayed Forward calls ended with, by gRPC status, summed from the servers' rpc summary
    lines (wire/rpc_summary.py: at info, one a minute and one as a server stops, so read the logs
    after the servers stopped; each call's own line is at debug, which a bench does not run at).
    Calls in flight when h2load stops end CANCELLED, and h2load's warm-up second counts too.
    Raises when none was OK: a relay figure of refused calls measures nothing."""
    codes: collections.Counter = collections.Counter()
    for log in logs:
        for code, n in RELAY_SUMMARY.findall(log.read_text()):
            codes[code] += int(n)
    others = ", ".join(f"{n} {code}" for code, n in codes.most_common() if code != "OK")
    if not codes["OK"]:
        raise RuntimeError(f"no relayed Forward call was OK in the servers' rpc summaries ({others or 'none seen'}): "
                           + ", ".join(map(str, logs)))
    return f"{codes['OK']} OK of {codes.total()}{f' ({others})' if others else ''}"


def relay_load(org: Org, body: pathlib.Path, seconds: float) -> float:
    """h2load against RelayForward, 16 calls in flight in all (the server's limit), from four
    members (4 each, their limit), spread over the servers: req/s (how the calls ended:
    relay_outcomes, once the servers stopped)."""
    procs = []
    for i in range(4):
        address = org.addresses()[i % len(org.servers)]
        procs.append(subprocess.Popen(
            ["h2load", "-D", str(max(1, round(seconds))), "--warm-up-time=1", "-c", "4", "-m", "1", "-d", str(body),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             "-H", f"authorization: Bearer {org.keys[f'm{i:05}']}",
             f"https://{address}/qpubroker.org.v1.OrgService/RelayForward"], stdout=subprocess.PIPE, text=True))
    return sum(float(p.communicate()[0].split(" req/s")[0].rsplit(" ", 1)[1]) for p in procs)


def usage_writes(org: Org, label: str, batches: int = 40) -> str:
    """ReportUsage, 500 records a report (as daemons send them), from one member per server at once."""
    import concurrent.futures

    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

    def send(n: int) -> int:
        stub, md, channel = _stub(org, org.addresses()[n], org.keys[f"m{n + 10:05}"])
        for b in range(batches):
            stub.ReportUsage(org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(
                id=f"u{n}-{b}-{i}", token_id="t", token_name="bench", provider="ionq", kind="forward", method="GET",
                host="h", path="/p", status=200, outcome="answered", request_bytes=0, answer_bytes=100)
                for i in range(500)]), metadata=md)
        channel.close()
        return batches * 500

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(org.servers)) as pool:
        stored = sum(pool.map(send, range(len(org.servers))))
    return f"| {label} | {len(org.servers)} | {stored / (time.monotonic() - t0):.0f} |"


def large_org(tmp: pathlib.Path, ca, database: str, label: str, tokens: int) -> str:
    """One member syncing an org of `tokens` tokens: time to the whole snapshot, pages, peak RSS."""
    work = tmp / f"large-{label[:6]}"
    work.mkdir()
    org = Org(work, ROOT, ca, database, 1, tokens)
    try:
        org.serve(1)
        from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

        stub, md, channel = _stub(org, org.addresses()[0], org.keys["m00000"])
        t0 = time.monotonic()
        pages = held = 0
        for event in stub.Watch(org_pb2.WatchRequest(), metadata=md):
            pages += 1
            held += len(event.tokens)
            if not event.more:
                break
        synced = time.monotonic() - t0
        channel.close()
        return (f"| {label} | {tokens} | {org.setup_seconds:.0f} s | {synced * 1000:.0f} | {pages} | {held} | "
                f"{org.peak_mib()[0]:.0f} |")
    finally:
        org.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", type=pathlib.Path, help="an older checkout to run the same storm against")
    parser.add_argument("--members", type=int, action="append", help="storm sizes (default 100, 500, 1000)")
    args = parser.parse_args()
    sizes = args.members or ([50] if args.quick else [100, 500, 1000])
    tokens = 500 if args.quick else 10_000
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qbscale-", dir="/tmp"))
    ca = make_ca(tmp / "ca")
    pg = Postgres(fast=False, max_connections=100).start()
    rows: list[str] = []
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {tokens} org tokens")
        print("\n| store | storm | synced p50 ms | p99 ms | all ms | server peak RSS MiB | failed attempts |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
        configs = [("SQLite, one server", ROOT, "", 1), ("PostgreSQL, two replicas", ROOT, "pg", 2)]
        if args.before:
            configs.insert(0, (f"SQLite, one server, before ({args.before.name})", args.before, "", 1))
        for n, (label, tree, kind, replicas) in enumerate(configs):
            work = tmp / f"c{n}"
            work.mkdir()
            database = pg.create_database(f"bench{n}") if kind == "pg" else ""
            org = Org(work, tree, ca, database, max(sizes), tokens)
            try:
                for size in sizes:
                    org.serve(replicas)  # fresh servers per size: each peak RSS is this storm's
                    storm(org, size, label, rows, more=size == max(sizes))
                    org.stop()
            finally:
                org.stop()
        print("\n| store | members | fan-out p50 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print("\n".join(FANOUT_ROWS), flush=True)
        fake = FakeServer(header_check("Authorization", lambda: "apiKey bench-ionq-key"), ca)
        relay_rows, usage_rows = [], []
        try:
            for n, (label, kind, replicas) in enumerate([("SQLite", "", 1), ("PostgreSQL", "pg", 1),
                                                         ("PostgreSQL", "pg", 2)]):
                work = tmp / f"r{n}"
                work.mkdir()
                org = Org(work, ROOT, ca, pg.create_database(f"relay{n}") if kind else "", 20, 10)
                org.allow(fake)
                org.serve(replicas)
                try:
                    rps = relay_load(org, relay_bodies(org, fake, work)["forward"], 2.0 if args.quick else 8.0)
                    usage_rows.append(usage_writes(org, label, 4 if args.quick else 40))
                finally:
                    org.stop()
                relay_rows.append(f"| {label} | {replicas} | {rps:.0f} | {relay_outcomes(org.logs())} |")
        finally:
            fake.close()
        print("\n| store | replicas | relay Forward req/s (h2load, 16 in flight) | calls (its warm-up too) |")
        print("| --- | ---: | ---: | --- |")
        print("\n".join(relay_rows))
        print("\n| store | servers reported to at once | usage records stored/s |")
        print("| --- | ---: | ---: |")
        print("\n".join(usage_rows), flush=True)
        large = 5_000 if args.quick else 100_000
        print("\n| store | org tokens | set-up | one member synced ms | pages | tokens held | server peak RSS MiB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(large_org(tmp, ca, "", "SQLite", large), flush=True)
        print(large_org(tmp, ca, pg.create_database("large"), "PostgreSQL", large), flush=True)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
