"""exec and env sessions: an unmodified script reaches a provider through the daemon's loopback
endpoint, holding only a session placeholder; the real credential arrives at the (fake) provider.
Real daemon, real CLI, real child processes."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import DEADLINE, PROVIDERS, wait_for

from testsupport.path_encodings import REFUSED
from testsupport.sdk_fakes import session_sapi

# A script as an SDK would behave: its endpoint and key from the environment, nothing else.
SDK_SCRIPT = r"""
import json, os, sys, urllib.request
base, key = os.environ["DWAVE_METADATA_API_ENDPOINT"].replace("metadata/v1/", "sapi/"), os.environ["DWAVE_API_TOKEN"]
req = urllib.request.Request(base + "solvers/remote/?filter=none", headers={"X-Auth-Token": key})
with urllib.request.urlopen(req) as r:
    answer = json.load(r)
print(json.dumps({"env": dict(os.environ), "answer": answer, "base": base, "key": key}))
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _get_unless_refused(url: str, headers: dict[str, str]) -> int:
    """The status of a GET, or 0 when the connection was refused or reset before an answer."""
    try:
        return _get(url, headers)[0]
    except (ConnectionError, urllib.error.URLError):
        return 0


def _gone(base: str, key: str) -> bool:
    """The session's endpoint answers no more: refused, or reset while it closes (polled)."""
    try:
        _get(base + "x", {"X-Auth-Token": key})
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def test_exec_gives_placeholders_and_the_provider_gets_the_real_token(rig):
    d, hw, canary = rig
    r = d.cli("exec", "--", sys.executable, "-c", SDK_SCRIPT, "7")
    assert r.returncode == 7, r.stderr  # the command's exit status is ours
    out = json.loads(r.stdout)
    assert out["answer"]["path"] == "/sapi/solvers/remote/?filter=none"  # path and query as the SDK sent them
    assert out["env"]["NO_PROXY"].endswith("127.0.0.1,localhost")  # loopback never goes to a proxy
    assert hw.servers["dwave"].seen[-1].header("X-Auth-Token") == hw.secrets["dwave"]  # the real one arrived
    assert out["key"].startswith("qbs_") and len(out["key"]) >= 4 + 43
    assert canary not in json.dumps(out["env"])  # no secret of any provider in the command's environment
    assert out["base"].startswith("http://127.0.0.1:")
    # Luna and the other header providers with one stored token are served too.
    assert {"LUNA_BASE_URL", "LUNA_API_KEY", "IONQ_API_KEY", "QISKIT_IONQ_API_URL"} <= set(out["env"])
    # After the command, its placeholder is worth nothing: the endpoint is gone (refused, or reset
    # by whatever took the freed port since), and nothing more reaches the provider.
    seen = len(hw.servers["dwave"].seen)
    assert _gone(out["base"] + "solvers/remote/", out["key"])
    assert len(hw.servers["dwave"].seen) == seen
    assert canary not in d.log() and out["key"] not in d.log() and canary not in r.stderr


def test_a_wrong_or_missing_placeholder_is_refused_and_nothing_is_sent(rig):
    d, hw, canary = rig
    b = d.broker()
    with b.hold_session() as session:
        base = session_sapi(session.env)
        before = len(hw.servers["dwave"].seen)
        for headers in ({}, {"X-Auth-Token": "qbs_" + "A" * 43}, {"X-Auth-Token": session.env["DWAVE_API_TOKEN"] + "x"},
                        {"Authorization": session.env["DWAVE_API_TOKEN"]}):
            status, body = _get(base + "solvers/remote/", headers)
            assert status == 401 and body["detail"].startswith("qpu-broker:"), (headers, status, body)
            assert canary not in json.dumps(body)
        assert len(hw.servers["dwave"].seen) == before
        # Any local process can send refused requests as fast as it likes: one log line a minute, not one each.
        for _ in range(20):
            assert _get(base + "solvers/remote/", {})[0] == 401
        assert d.log().count("without this session's credential was refused") == 1, d.log()
        status, body = _get(base + "solvers/remote/", {"X-Auth-Token": session.env["DWAVE_API_TOKEN"]})
        assert status == 200 and body["ok"]
        # The destination rules of Forward hold here too: a token deleted meanwhile is a clear 404.
        b.qpu_token.delete("my-dwave")
        status, body = _get(base + "solvers/remote/", {"X-Auth-Token": session.env["DWAVE_API_TOKEN"]})
        assert status == 404 and body["detail"].startswith("qpu-broker: ") and "'my-dwave'" in body["detail"], body
        assert canary not in json.dumps(body) and session.env["DWAVE_API_TOKEN"] not in d.log()


def test_exec_passes_signals_through_and_picks_tokens_by_name(rig):
    d, hw, _ = rig
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    r = d.cli("exec", "--", sys.executable, "-c", kill_self)
    assert r.returncode == -signal.SIGTERM  # killed by the same signal as its command
    # Two personal tokens for one provider: that provider is left out unless one is named.
    d.broker().qpu_token.create("second-dwave", "dwave", hw.secrets["dwave"])
    show = "import os; print(os.environ.get('DWAVE_API_TOKEN', 'none'))"
    r = d.cli("exec", "--", sys.executable, "-c", show)
    assert r.returncode == 0 and r.stdout.strip() == "none"
    assert "not in this session" not in r.stderr  # not asked for: no note on every run
    r = d.cli("exec", "--token", "ibm=my-ibm", "--", sys.executable, "-c", show)
    assert r.returncode == 0 and r.stdout.strip() == "none" and "not in this session" not in r.stderr, r.stderr
    # With nothing else to serve, the error lists the choices.
    for provider in PROVIDERS:
        if provider != "dwave":
            d.broker().qpu_token.delete(f"my-{provider}")
    r = d.cli("exec", "--", "true")
    assert r.returncode == 1
    assert "dwave: 2 personal tokens ('my-dwave', 'second-dwave'): pick one with --token dwave=NAME" in r.stderr
    r = d.cli("exec", "--token", "dwave=second-dwave", "--", sys.executable, "-c", SDK_SCRIPT)
    assert r.returncode == 0, r.stderr
    assert d.cli("exec", "--token", "dwave", "--", "true").returncode == 2  # usage: PROVIDER=NAME
    assert d.cli("exec", "--token", "dwave=nope", "--", "true").returncode == 1
    assert d.cli("exec").returncode == 2


def env_session(d) -> tuple[str, str]:
    """Open an `env` session: its D-Wave endpoint and placeholder."""
    r = d.cli("env")
    assert r.returncode == 0, r.stderr
    exports = dict(line[len("export "):].split("=", 1) for line in r.stdout.splitlines() if line.startswith("export "))
    return session_sapi(exports), exports["DWAVE_API_TOKEN"]


def test_env_sessions_last_until_ended_or_locked(rig):
    d, _hw, _ = rig
    base, key = env_session(d)
    assert _get(base + "x", {"X-Auth-Token": key})[0] == 200  # the CLI has exited; the session has not
    assert d.cli("env", "--end").stdout.strip() == "# ended 1 session"  # a shell that did not eval `env`: nothing to unset
    assert _gone(base, key)
    base, key = env_session(d)
    d.broker().lock()

    wait_for(lambda: _gone(base, key), "the env session to end on lock")


def test_a_killed_exec_ends_its_session(rig):
    d, _, _ = rig
    script = "import os, sys, time; print(os.environ['DWAVE_METADATA_API_ENDPOINT'], os.environ['DWAVE_API_TOKEN'], flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "qpu_broker", "exec", "--", sys.executable, "-c", script],
                            env=d.env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        base, key = proc.stdout.readline().split()
        assert _get(base + "x", {"X-Auth-Token": key})[0] == 200
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its command, without a chance to clean up
        proc.wait(timeout=10)

        wait_for(lambda: _gone(base, key), "the daemon to end the session of a killed exec")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_exec_serves_ionq_the_way_qiskit_ionq_calls_it(rig):
    d, hw, _ = rig
    # As qiskit-ionq's client does: base URL from QISKIT_IONQ_API_URL, "Authorization: apiKey KEY".
    script = ("import os, urllib.request; base, key = os.environ['QISKIT_IONQ_API_URL'], os.environ['QISKIT_IONQ_API_TOKEN'];"
              "r = urllib.request.urlopen(urllib.request.Request(base.rstrip('/') + '/backends', "
              "headers={'Authorization': 'apiKey ' + key})); print(r.status, r.read().decode())")
    r = d.cli("exec", "--", sys.executable, "-c", script)
    assert r.returncode == 0 and r.stdout.startswith("200 "), r.stderr
    assert json.loads(r.stdout[4:])["path"] == "/v0.4/backends"
    assert hw.servers["ionq"].seen[-1].header("Authorization") == "apiKey " + hw.secrets["ionq"]


def test_a_session_passes_coded_bodies_both_ways_as_they_are(rig):
    """No layer of a session decodes or re-encodes a body: a gzip upload reaches the provider as
    the same bytes under the same header, and a gzip answer reaches the command the same way."""
    import gzip

    from testsupport.fakes import Reply

    d, hw, _ = rig
    upload, answer = gzip.compress(b'{"target": "simulator"}'), gzip.compress(b'{"id": "job-1"}')
    hw.servers["ionq"].handler = lambda seen: Reply(200, answer, [("Content-Type", "application/json"),
                                                                  ("Content-Encoding", "gzip")])
    with d.broker().hold_session() as session:
        request = urllib.request.Request(session.env["IONQ_API_URL"] + "/jobs", data=upload, method="POST",
                                         headers={"Authorization": "apiKey " + session.env["IONQ_API_KEY"],
                                                  "Content-Type": "application/json", "Content-Encoding": "gzip",
                                                  "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as r:  # urllib decodes nothing
            assert (r.read(), r.headers["Content-Encoding"]) == (answer, "gzip")
    seen = hw.servers["ionq"].seen[-1]
    assert (seen.body, seen.header("Content-Encoding"), seen.header("Accept-Encoding")) == (upload, "gzip", "gzip")


def test_an_ibm_session_is_an_https_proxy_with_a_stand_in_bearer(rig):
    """The SDK's own IAM exchange, answered with a session stand-in; its API calls, through the
    session's TLS, with the real bearer upstream. As requests does it, from the variables alone."""
    d, hw, canary = rig
    script = r"""
import json, os, requests
key = os.environ["QISKIT_IBM_TOKEN"]
iam = requests.post("https://iam.cloud.ibm.com/identity/token", timeout=10,
                    data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key})
bearer = iam.json()["access_token"]
api = requests.get("https://us-east.quantum.cloud.ibm.com/api/v1/backends", timeout=10,
                   headers={"Authorization": "Bearer " + bearer, "Service-CRN": "crn:v1:fake"})
wrong = requests.post("https://iam.cloud.ibm.com/identity/token", timeout=10,
                      data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key + "x"})
forged = requests.get("https://quantum.cloud.ibm.com/api/v1/backends", timeout=10,
                      headers={"Authorization": "Bearer " + bearer[:-2] + "xx"})
print(json.dumps({"iam": iam.status_code, "bearer": bearer, "api": [api.status_code, api.json()],
                  "wrong": wrong.status_code, "forged": forged.status_code, "env": dict(os.environ)}))
"""
    r = d.cli("exec", "--token", "ibm=my-ibm", "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["iam"] == 200 and out["bearer"].count(".") == 2 and canary not in out["bearer"]
    assert out["api"] == [200, {"ok": True, "bearer": "ibm-bearer-1", "crn": "crn:v1:fake"}]  # the real one went up
    assert out["wrong"] == 400 and out["forged"] == 401
    assert hw.ibm.exchanges == 1  # the daemon's own exchange, with the real key
    env = out["env"]
    assert env["HTTPS_PROXY"].startswith("http://qpu-broker:qbs_") and env["QISKIT_IBM_TOKEN"].startswith("qbs_")
    assert canary not in json.dumps(env) and canary not in d.log() and env["QISKIT_IBM_TOKEN"] not in d.log()
    assert not pathlib.Path(env["REQUESTS_CA_BUNDLE"]).exists()  # the session's CA bundle went with it


def test_an_ibm_session_keeps_the_users_own_ca_bundle_and_adds_its_ca(rig):
    """A user behind a corporate proxy names a bundle that trusts it (REQUESTS_CA_BUNDLE,
    SSL_CERT_FILE). Under an IBM session both hosts verify: IBM's through the session's CA, and a
    host only the user's bundle trusts (here the test CA's loopback fake), with requests and ssl."""
    from testsupport.fakes import Reply

    d, hw, _ = rig
    users = str(hw.ca.ca_file)  # the one thing that trusts the fake host: not among the public roots
    hw.servers["fujitsu"].handler = lambda seen: Reply(200, b"corporate")
    script = r"""
import json, os, requests, ssl, sys, urllib.request
key = os.environ["QISKIT_IBM_TOKEN"]
iam = requests.post("https://iam.cloud.ibm.com/identity/token", timeout=10,
                    data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key})
own = requests.get(sys.argv[1], timeout=10)
with urllib.request.urlopen(urllib.request.Request(sys.argv[1]), timeout=10, context=ssl.create_default_context()) as r:
    pass
print(json.dumps({"iam": iam.status_code, "own": own.status_code, "urllib": r.status, "env": dict(os.environ)}))
"""
    env = {"REQUESTS_CA_BUNDLE": users, "SSL_CERT_FILE": users}
    r = d.cli("exec", "--token", "ibm=my-ibm", "--", sys.executable, "-c", script, hw.url("fujitsu", "/ok"), env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["iam"], out["own"], out["urllib"]) == (200, 200, 200)
    kept = out["env"]["REQUESTS_CA_BUNDLE"]
    assert kept != users and out["env"]["SSL_CERT_FILE"] == kept  # a bundle of both, gone with the session
    assert not pathlib.Path(kept).exists() and pathlib.Path(users).exists()


def test_the_ibm_proxy_wants_its_credential_and_tunnels_other_hosts_untouched(rig):
    import requests

    d, hw, canary = rig
    with d.broker().hold_session() as session:
        proxy = session.env["HTTPS_PROXY"]
        bundle = session.env["REQUESTS_CA_BUNDLE"]

        def get(url: str, proxy_url: str, **kw):
            s = requests.Session()
            s.trust_env = False  # exactly these proxies; the test's NO_PROXY covers 127.0.0.1
            return s.get(url, proxies={"https": proxy_url}, timeout=10, **kw)

        before = len(hw.servers["ibm"].seen)
        for bad in (proxy.replace("@", "x@"), proxy.replace("qpu-broker:qbs_", "qpu-broker:qbs_A"),
                    "http://" + proxy.split("@")[1]):
            with pytest.raises(requests.exceptions.ProxyError, match="407"):
                get("https://quantum.cloud.ibm.com/api/v1/backends", bad, verify=bundle)
        assert len(hw.servers["ibm"].seen) == before
        # Another host: a plain tunnel, its own certificate verified, nothing added to the request.
        r = get(hw.url("dwave", "/tunnelled"), proxy, verify=str(hw.ca.ca_file), headers={"X-Auth-Token": "mine"})
        assert r.status_code == 401 and hw.servers["dwave"].seen[-1].header("X-Auth-Token") == "mine"
        # The session CA vouches for IBM's names only, and only while the session lives.
        with pytest.raises(requests.exceptions.SSLError):
            get(hw.url("dwave", "/x"), proxy, verify=bundle)
    assert canary not in d.log()


def test_a_default_token_serves_a_provider_with_several(rig):
    d, hw, _ = rig
    d.broker().qpu_token.create("second-dwave", "dwave", hw.secrets["dwave"])
    show = "import os; print(os.environ.get('DWAVE_API_TOKEN', 'none'))"
    r = d.cli("exec", "--", sys.executable, "-c", show)
    assert r.stdout.strip() == "none", r.stderr
    r = d.cli("token", "default", "second-dwave")
    assert r.returncode == 0 and "dwave" in r.stdout and "second-dwave" in r.stdout, r.stderr
    r = d.cli("exec", "--", sys.executable, "-c", SDK_SCRIPT)
    assert r.returncode == 0 and "not in this session: dwave" not in r.stderr, r.stderr
    assert json.loads(d.cli("token", "default", "--json").stdout) == {"dwave": "second-dwave"}
    # Survives a restart (it is in the store, under the store's MAC), and goes with its token.
    d.stop()
    d.start()
    assert json.loads(d.cli("token", "default", "--json").stdout) == {"dwave": "second-dwave"}
    d.cli("token", "rm", "second-dwave")
    assert d.cli("exec", "--", sys.executable, "-c", show).stdout.strip() != "none"  # one left: that one
    assert json.loads(d.cli("token", "default", "--json").stdout) == {}
    assert d.cli("token", "default", "my-dwave").returncode == 0
    assert json.loads(d.cli("token", "default", "--clear", "dwave", "--json").stdout) == {}
    r = d.cli("token", "default", "my-dwave", "--clear", "dwave")
    assert r.returncode == 2 and "not both" in r.stderr
    r = d.cli("token", "default", "nope")
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_an_ibm_stand_in_reaches_only_the_calls_the_sdk_makes(rig):
    """Attack review: with the account's real bearer, IAM could mint a lasting API key and Global
    Search could tag resources. The session answers IAM itself and relays only the SDK's lookups."""
    d, hw, canary = rig
    script = r"""
import json, os, requests
key = os.environ["QISKIT_IBM_TOKEN"]
bearer = requests.post("https://iam.cloud.ibm.com/identity/token", timeout=10, data={
    "grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key}).json()["access_token"]
auth = {"Authorization": "Bearer " + bearer}
calls = [("POST", "https://iam.cloud.ibm.com/v1/apikeys"), ("POST", "https://iam.cloud.ibm.com/identity/token/"),
         ("GET", "https://iam.cloud.ibm.com/identity/token"),
         ("POST", "https://api.global-search-tagging.cloud.ibm.com/v3/tags/attach"),
         ("GET", "https://globalcatalog.cloud.ibm.com/api/v1/a/b"),
         ("POST", "https://api.global-search-tagging.cloud.ibm.com/v3/resources/search?limit=100"),
         ("GET", "https://globalcatalog.cloud.ibm.com/api/v1/plan-id"),
         ("DELETE", "https://us-east.quantum.cloud.ibm.com/api/v1/jobs/j1")]
print(json.dumps([requests.request(m, u, headers=auth, timeout=10, data={"apikey": key}).status_code
                  for m, u in calls]))
"""
    before = len(hw.servers["ibm"].seen)
    r = d.cli("exec", "--token", "ibm=my-ibm", "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [403] * 5 + [200] * 3
    paths = [s.path for s in hw.servers["ibm"].seen[before:]]
    assert paths == ["/identity/token", "/v3/resources/search?limit=100", "/api/v1/plan-id", "/api/v1/jobs/j1"]
    assert canary not in r.stdout + d.log()


def test_ibm_session_paths_are_judged_as_they_are_sent(rig):
    """A client that sends dot segments or encodings verbatim (requests folds them; http.client
    does not) gets nothing past the session's path rules: the path judged is the one sent, dot
    segments resolved, and any spelling a gateway could resolve otherwise (..%2F) refused."""
    import base64
    import http.client
    import ssl

    d, hw, _ = rig
    with d.broker().hold_session() as session:
        proxy = urllib.parse.urlsplit(session.env["HTTPS_PROXY"])
        ctx = ssl.create_default_context(cafile=session.env["REQUESTS_CA_BUNDLE"])
        auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        def call(host: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx, timeout=10)
            conn.set_tunnel(host, 443, headers={"Proxy-Authorization": f"Basic {auth}"})
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            out = response.status, response.read()
            conn.close()
            return out

        form = urllib.parse.urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey",
                                       "apikey": proxy.password}).encode()
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        status, answer = call("iam.cloud.ibm.com", "POST", "/identity/token", form, form_type)
        assert status == 200
        bearer = {"Authorization": "Bearer " + json.loads(answer)["access_token"], **form_type}
        before = len(hw.servers["ibm"].seen)
        for host, method, path in [("iam.cloud.ibm.com", "POST", "/identity/./token"),
                                   ("iam.cloud.ibm.com", "POST", "/identity//token"),
                                   ("iam.cloud.ibm.com", "POST", "/identity/%74oken"),
                                   ("api.global-search-tagging.cloud.ibm.com", "POST", "/v3/resources/search/../../tags"),
                                   ("api.global-search-tagging.cloud.ibm.com", "POST", "/v3/resources/search%2F..%2F..%2Ftags"),
                                   ("globalcatalog.cloud.ibm.com", "GET", "/api/v1/%2e%2e/x"),
                                   *(("quantum.cloud.ibm.com", "POST", path) for path in REFUSED)]:
            assert call(host, method, path, form, bearer)[0] == 403, (host, path)
        assert len(hw.servers["ibm"].seen) == before
        # Dot segments are resolved before the path is judged, and it is sent as it was judged.
        assert call("api.global-search-tagging.cloud.ibm.com", "POST", "/v3/resources/x/../search", b"{}", bearer)[0] == 200
        assert call("quantum.cloud.ibm.com", "GET", "/api/v1/./jobs", b"", bearer)[0] == 200
        sent = [s.path for s in hw.servers["ibm"].seen[before:] if s.path != "/identity/token"]  # the daemon's exchange
        assert sent == ["/v3/resources/search", "/api/v1/jobs"]


def test_a_killed_daemon_leaves_no_session_files_past_its_restart(rig):
    d, _, _ = rig
    with d.broker().hold_session() as session:
        bundle = pathlib.Path(session.env["REQUESTS_CA_BUNDLE"])
        assert bundle.exists()
        d.kill()
    d.start()
    assert not bundle.exists() and list(bundle.parent.glob("*.pem")) == []


def test_a_session_endpoint_refuses_bad_header_lines_without_a_traceback(rig):
    """Header lines a server could read two ways (an obs-fold ' Authorization', control
    characters, a name that is no token) are 400 at a session's endpoint, plain or inside the IBM
    proxy's TLS: nothing goes upstream, and the daemon's log gets no traceback and no header line
    (any local process can send these, and a line may hold the placeholder)."""
    import base64
    import socket
    import ssl

    def exchange(sock, request: bytes) -> bytes:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer

    d, hw, canary = rig
    bad_lines = (b" Authorization: Bearer line-canary", b"X-Note: line-canary\x01", b"X-Note: line-canary\x00",
                 b"X-Note: line-canary\x0b", b"X-Note: line-canary\x7f", b"X-Note: line\rcanary",
                 b"X Note: line-canary", b"X-Note : line-canary", b": line-canary")
    with d.broker().hold_session() as session:
        url = urllib.parse.urlsplit(session_sapi(session.env))
        key = session.env["DWAVE_API_TOKEN"]
        proxy = urllib.parse.urlsplit(session.env["HTTPS_PROXY"])
        ctx = ssl.create_default_context(cafile=session.env["REQUESTS_CA_BUNDLE"])
        auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode())
        before = {p: len(hw.servers[p].seen) for p in ("dwave", "ibm")}
        for bad in bad_lines:
            head = b"\r\nConnection: close\r\n" + bad + b"\r\n\r\n"
            with socket.create_connection((url.hostname, url.port), timeout=10) as s:
                answer = exchange(s, b"GET /sapi/solvers/remote/ HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + key.encode() + head)
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), (bad, answer[:200])
            with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as raw:
                raw.sendall(b"CONNECT quantum.cloud.ibm.com:443 HTTP/1.1\r\nProxy-Authorization: Basic " + auth + b"\r\n\r\n")
                assert raw.recv(65536).startswith(b"HTTP/1.1 200")
                with ctx.wrap_socket(raw, server_hostname="quantum.cloud.ibm.com") as s:
                    answer = exchange(s, b"GET /api/v1/jobs HTTP/1.1\r\nHost: quantum.cloud.ibm.com" + head)
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), (bad, answer[:200])
        assert {p: len(hw.servers[p].seen) for p in before} == before
    log = d.log()
    assert "Traceback" not in log and "line-canary" not in log and key not in log and canary not in log
    assert log.count("a malformed HTTP request was refused") == 1  # once a minute, whoever sends them


def test_env_end_prints_the_lines_that_clean_the_shell(rig):
    """`eval "$(qpu-broker env --end)"` leaves no session variable behind: an SDK then reads the user's
    own settings, not a closed port."""
    d, _hw, _ = rig
    qb = f"{shlex.quote(sys.executable)} -m qpu_broker"
    script = (f'eval "$({qb} env)" && printf "%s\\n" "$DWAVE_API_TOKEN" && eval "$({qb} env --end)" && '
              'env -0 && echo "NO_PROXY=$NO_PROXY"')
    r = subprocess.run(["bash", "-c", script], check=False, env=d.env, capture_output=True, text=True, timeout=DEADLINE * 2)
    assert r.returncode == 0, r.stderr
    placeholder, rest = r.stdout.split("\n", 1)
    assert placeholder.startswith("qbs_")
    after = dict(v.split("=", 1) for v in rest.split("\0")[:-1])
    assert placeholder not in rest and "127.0.0.1:" not in rest
    assert not {"DWAVE_API_TOKEN", "DWAVE_API_ENDPOINT", "IONQ_API_KEY", "LUNA_API_KEY", "QPU_BROKER_SESSION_VARS",
                "HTTPS_PROXY", "SSL_CERT_FILE", "AWS_SECRET_ACCESS_KEY"} & set(after), sorted(after)
    assert rest.split("\0")[-1] == "NO_PROXY=127.0.0.1,localhost\n"  # kept: the user's own entries stay in it
