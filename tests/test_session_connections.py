"""Connections to exec session endpoints: any local user can open them, so they are capped, a
stranger's (never proven with the placeholder) give way to the session's own SDK, and heads,
bodies and idle keep-alives have deadlines. Real daemon, real session, a stranger as another
uid; the deadlines made short through `[sessions]` in config.toml."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
import urllib.parse

import pytest
from conftest import wait_for
from qpu_broker.common.config import load_config
from qpu_broker.forward.session_gate import (
    PER_ENDPOINT,
    TOTAL,
    UNPROVEN_PER_ENDPOINT,
    ConnectionGate,
)
from qpu_broker_client.errors import InvalidArgumentError

from testsupport.sdk_fakes import session_sapi

STRANGER = 4242  # an unused uid: another local user

# Another user: opens connections to the given ports, sends each the start of a request and no
# more, says how many it holds, then reports how many the daemon closed and how long that took.
HALF_HEADS = r"""
import encodings.idna, json, os, select, socket, sys, time  # all loaded before the uid changes
uid, ports, per_port, total, first, wait = json.loads(sys.argv[1])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
held = []
for port in ports:
    for _ in range(per_port):
        if len(held) < total:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                s.sendall(first.encode())
            except OSError:
                pass  # closed at once: still one it opened
            held.append(s)
start = time.monotonic()
print(len(held), flush=True)
open_, deadline = list(held), start + wait
while open_ and time.monotonic() < deadline:
    for s in select.select(open_, [], [], 0.1)[0]:
        try:
            gone = s.recv(4096) == b""
        except OSError:
            gone = True
        if gone:
            open_.remove(s)
print(json.dumps({"held": len(held), "closed": len(held) - len(open_), "seconds": time.monotonic() - start}))
"""


def _short_deadlines(d, seconds: float) -> None:
    with open(d.home / "config.toml", "a") as f:
        f.write(f"[sessions]\nhead_seconds = {seconds}\nbody_idle_seconds = {seconds}\n")
    d.broker().reload()


def _stranger(ports: list[int], per_port: int, first: bytes, wait: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HALF_HEADS, json.dumps([STRANGER, ports, per_port, TOTAL, first.decode(), wait])],
                            stdout=subprocess.PIPE, text=True)


def _closed_by_server(sock: socket.socket) -> bool:
    """The daemon closed `sock` (polled: False while it is open and silent)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(65536) == b""  # what is left of an answer first, then the end
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except (OSError, ssl.SSLError):
        return True


def _sdk_get(base: str, key: str) -> tuple[int, socket.socket]:
    """The SDK's request on a keep-alive connection: its status, and the connection, left open."""
    url = urllib.parse.urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sock.sendall(f"GET {url.path}solvers/remote/ HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {key}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed without an answer ({answer!r})")
        answer += more
    return int(answer.split(b" ", 2)[1]), sock


def test_a_stranger_s_half_heads_neither_keep_the_sdk_out_nor_stay(rig):
    """Attack review: after one partial request head a connection stayed open for good, and 64
    of them filled an endpoint (256 every session). Another user opens as many as the daemon
    takes on every endpoint of a session; the session's SDK still gets in, and the stranger's
    connections are closed, the oldest at once to make room, the rest at the head deadline."""
    d, _, canary = rig
    _short_deadlines(d, 2.0)
    with d.broker().hold_session() as session:
        base, key = session_sapi(session.env), session.env["DWAVE_API_TOKEN"]
        ports = sorted({urllib.parse.urlsplit(e.url).port for e in session.endpoints},
                       key=lambda p: p != urllib.parse.urlsplit(base).port)  # D-Wave's first: it gets all it asks
        assert len(ports) * (PER_ENDPOINT + 8) > TOTAL  # enough to fill every place, had strangers kept them
        stranger = _stranger(ports, PER_ENDPOINT + 8, b"GET /sapi/ HTTP/1.1\r\nHost: x\r\n", wait=15)
        assert stranger.stdout.readline().strip() == str(TOTAL)  # all connected and half-sent
        status, kept = _sdk_get(base, key)  # at once: the stranger's connections are all still there
        assert status == 200
        report = json.loads(stranger.communicate(timeout=30)[0])
        assert report["closed"] == report["held"] == TOTAL, report  # none stays: evicted, or cut at 2 s
        # The SDK's own keep-alive connection, idle after its answer, is closed at the deadline too.
        wait_for(lambda: _closed_by_server(kept), "the idle keep-alive connection to be closed")
        kept.close()
        assert _sdk_get(base, key)[0] == 200
    log = d.log()
    assert "aiohttp.access" not in log and "Traceback" not in log and canary not in log
    assert log.count("had not shown a session's credential") == 1  # once a minute, not per connection


def test_a_request_body_that_stops_is_cut_off(rig):
    """Slowloris: a head promising a body, a few bytes of it, then nothing. The AWS endpoint reads
    the body before it can check the signature over it, and the IBM proxy its token form, so a
    stranger's body holds a connection there unless the body has a deadline."""
    d, _, _ = rig
    _short_deadlines(d, 0.5)
    with d.broker().hold_session() as session:
        aws = urllib.parse.urlsplit(session.env["AWS_ENDPOINT_URL_BRAKET"])
        sock = socket.create_connection((aws.hostname, aws.port), timeout=10)
        sock.sendall(b"POST /quantum-task HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":")
        wait_for(lambda: _closed_by_server(sock), "the stalled body's connection to be closed")
        sock.close()
        # Gone mid-body: no answer, and nothing in the log (aiohttp would log a traceback).
        sock = socket.create_connection((aws.hostname, aws.port), timeout=10)
        sock.sendall(b"POST /quantum-task HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        sock.close()
        status, kept = _sdk_get(session_sapi(session.env), session.env["DWAVE_API_TOKEN"])
        assert status == 200
        kept.close()
    assert "Traceback" not in d.log()


def _through_proxy(session, host: str) -> tuple[ssl.SSLSocket, str]:
    """A TLS connection to `host` through the session's proxy, as an SDK opens one."""
    proxy = urllib.parse.urlsplit(session.env["HTTPS_PROXY"])
    auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    raw = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=session.env["REQUESTS_CA_BUNDLE"])
    return ctx.wrap_socket(raw, server_hostname=host), proxy.password


def test_the_ibm_proxy_closes_intercepted_connections_when_idle(rig):
    """Attack review: the IBM proxy kept every intercepted connection until its session ended.
    Inside the session's TLS the same deadlines hold: idle after an answer, a half head, a
    stalled body."""
    d, _, _ = rig
    _short_deadlines(d, 0.5)
    with d.broker().hold_session() as session:
        tls, key = _through_proxy(session, "iam.cloud.ibm.com")
        form = urllib.parse.urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key})
        tls.sendall(f"POST /identity/token HTTP/1.1\r\nHost: iam.cloud.ibm.com\r\nContent-Type: "
                    f"application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n{form}".encode())
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: _closed_by_server(tls), "the idle intercepted connection to be closed")
        tls.close()
        half, _ = _through_proxy(session, "quantum.cloud.ibm.com")
        half.sendall(b"GET /api/v1/backends HTTP/1.1\r\nHost: quantum.cloud.ibm.com\r\n")
        stalled, _ = _through_proxy(session, "iam.cloud.ibm.com")
        stalled.sendall(b"POST /identity/token HTTP/1.1\r\nHost: iam.cloud.ibm.com\r\nContent-Type: "
                        b"application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\ngrant_type=")
        for sock, what in ((half, "a half head"), (stalled, "a stalled body")):
            wait_for(lambda s=sock: _closed_by_server(s), f"the intercepted connection with {what} to be closed")
            sock.close()
    assert "Traceback" not in d.log()


class _Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def _admit(gate: ConnectionGate, key: str, *, proven: bool = False) -> _Transport:
    """A connection to `key` the gate let in (its transport, to see it closed)."""
    ticket = gate.admit(key)
    assert ticket is not None, f"a connection to {key} refused"
    transport = _Transport()
    ticket.attach(transport)
    if proven:
        ticket.prove()
    return transport


def test_strangers_push_out_only_strangers():
    """In-process: the oldest unproven connection makes room, at the unproven budget, the
    endpoint's cap and the total; a proven one is never pushed out."""
    gate = ConnectionGate(per_endpoint=4, total=6, unproven=2)
    mine = [_admit(gate, "a", proven=True) for _ in range(2)]
    first, second = _admit(gate, "a"), _admit(gate, "a")
    third = _admit(gate, "a")  # the unproven budget (2) and the endpoint's cap (4): the oldest goes
    assert first.aborted and not second.aborted and not third.aborted
    fourth = _admit(gate, "a")
    assert second.aborted and not any(t.aborted for t in (*mine, third, fourth))
    others = [_admit(gate, "b", proven=True), _admit(gate, "c")]  # 6 in all now
    newest = _admit(gate, "d")  # the total: the oldest unproven anywhere goes
    assert third.aborted and not newest.aborted and not any(t.aborted for t in (*mine, *others, fourth))
    gate = ConnectionGate(per_endpoint=1, total=1, unproven=1)
    old, new = _admit(gate, "a"), _admit(gate, "a")  # the endpoint's only place changes hands...
    gate.close("a")
    assert old.aborted and new.aborted  # ...and the gate still knows the new holder


def test_only_proven_connections_can_fill_the_places():
    gate = ConnectionGate(per_endpoint=2, total=3, unproven=2)
    held = [_admit(gate, "a", proven=True), _admit(gate, "a", proven=True), _admit(gate, "b", proven=True)]
    assert gate.admit("a") is None and gate.admit("c") is None  # the session's own command filled them
    gate.close("a")  # its session ended: its connections go, their places are free
    assert held[0].aborted and held[1].aborted and not held[2].aborted
    assert gate.admit("c") is not None and gate.admit("c") is not None
    # A ticket evicted before its connection was made closes that connection when it comes.
    ticket = gate.admit("e")
    assert ticket is not None
    ticket.close()
    late = _Transport()
    ticket.attach(late)
    assert late.aborted


def test_an_sdk_burst_fits_the_unproven_budget():
    """requests may open 10 connections to a host at once, each unproven until its first
    request: none may push out another of the burst."""
    gate = ConnectionGate()
    burst = [_admit(gate, "k") for _ in range(10)]
    assert UNPROVEN_PER_ENDPOINT >= 10 and not any(t.aborted for t in burst)


def test_the_deadlines_are_bounded_in_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[sessions]\nhead_seconds = 2.5\nbody_idle_seconds = 30\n")
    config = load_config(path)
    assert (config.session_head_seconds, config.session_body_idle_seconds) == (2.5, 30)
    path.write_text("[sessions]\nhead_seconds = 0\n")
    with pytest.raises(InvalidArgumentError, match=r"sessions\.head_seconds must be a number of seconds from 0\.1 to 300"):
        load_config(path)
