"""Forward and Sign in process (testsupport/inproc.py): the daemon's forwarder and resolver over
its vault, no daemon process, sending over the real pooled aiohttp to the loopback fakes.

What the forwarder decides (where a credential may go, which auth it adds, which headers it
drops, what it signs, what it records) is tested here; test_forward.py keeps what only the
process shows (the gRPC streams, the CLI, the client's environment, the daemon's log).
"""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from qpu_broker_client import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from qpu_broker_client.providers import PROVIDERS
from qpu_broker_client.usage import ANSWERED, REFUSED_DESTINATION, SIGNED

from testsupport.hardware import AWS_KEY_ID
from testsupport.inproc import InProcess, inline, personal

SMUGGLED = [("Authorization", "Bearer smuggled"), ("X-Auth-Token", "smuggled"), ("X-Api-Key", "smuggled"),
            ("Luna-API-Key", "smuggled")]
# The header each provider's fake checks, and how the secret sits in it (hardware.start_hardware).
AUTH = {"dwave": ("X-Auth-Token", "{}"), "fujitsu": ("X-Api-Key", "{}"), "ionq": ("Authorization", "apiKey {}")}


def _mine(provider: str) -> dict:
    return {provider: personal(f"my-{provider}")}


def _scope(provider: str) -> dict:
    return {"region": "us-east-1", "service": "braket"} if provider == "aws" else {}


# -- moved from test_forward.py: the same names and assertions, without a daemon ------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_forward_adds_the_right_auth_and_drops_smuggled_headers(inproc_rig, provider):
    parts, hw, _ = inproc_rig
    body = json.dumps({"job": provider}).encode()
    r = parts.forward("POST", hw.url(provider), provider, _mine(provider), body=body,
                      headers=SMUGGLED + [("Content-Type", "application/json")], **_scope(provider))
    assert r.status == 200, r.body
    assert r.json()["ok"] is True and r.header("content-type") == "application/json"
    seen = hw.servers[provider].seen[-1]
    assert seen.body == body
    for name, value in seen.headers:
        assert value != "Bearer smuggled" and value != "smuggled", (name, value)
    if provider == "ibm":
        assert hw.ibm.exchanges == 1
    assert hw.catcher.seen == []


def test_every_refusal_for_every_provider_sends_nothing(inproc_rig):
    parts, hw, _ = inproc_rig
    catch = hw.catcher.netloc
    for provider in PROVIDERS:
        official = {"ibm": "quantum.cloud.ibm.com", "dwave": "cloud.dwavesys.com", "aws": "braket.us-east-1.amazonaws.com",
                    "qctrl": "federation-service.q-ctrl.com", "fujitsu": "api.aispf.global.fujitsu.com",
                    "fujitsu_quantum": "api.quantum.global.fujitsu.com",
                    "ionq": "api.ionq.co", "luna": "api.aqarios.com"}[provider]
        refused = [
            f"https://{catch}/x",  # an IP literal not in this provider's config
            f"http://{hw.servers[provider].netloc}/x",  # plain http to a configured https host
            f"https://user@{hw.servers[provider].netloc}/x",  # userinfo
            f"https://{official}.{catch.split(':')[0]}.nip.io/x",  # look-alike suffix
            f"https://{official}:8443/x",  # official name, other port
            f"https://{official}./x",  # trailing dot
            f"https://xn--{official}/x",
            f"https://evil.example/{official}",
            f"ftp://{official}/x",
        ]
        for url in refused:
            with pytest.raises(PermissionDeniedError) as err:
                parts.forward("GET", url, provider, _mine(provider), region="us-east-1", service="braket")
            assert provider in str(err.value)
    assert hw.catcher.seen == []
    assert all(not s.seen for s in hw.servers.values())


def test_plain_http_only_where_configured(inproc_rig):
    parts, hw, _ = inproc_rig
    assert parts.forward("GET", hw.plain.url("/sapi"), "dwave", _mine("dwave")).status == 200
    with pytest.raises(PermissionDeniedError, match="plain http"):
        parts.forward("GET", hw.plain.url("/sapi"), "ionq", _mine("ionq"))


def test_redirects_are_returned_not_followed(inproc_rig):
    parts, hw, _ = inproc_rig
    target = hw.catcher.url("/stolen")
    r = parts.forward("GET", hw.url("dwave", f"/redirect?to={target}"), "dwave", _mine("dwave"))
    assert r.status == 302 and r.header("location") == target
    assert hw.catcher.seen == []


def test_aws_split_form_and_sign(inproc_rig):
    parts, hw, _ = inproc_rig
    key_id, secret = hw.secrets["aws"].split(":")
    split = {"aws_access_key": inline(key_id), "aws_secret_access_key": inline(secret)}
    r = parts.forward("POST", hw.url("aws", "/quantum-task"), "aws", split, body=b'{"shots": 100}',
                      region="us-east-1", service="braket")
    assert r.status == 200 and r.json()["service"] == "braket"
    # Sign: the client sends the request itself with the headers the daemon returns.
    import httpx

    url = hw.url("aws", "/devices?max=10&next=a%20b")
    added = parts.sign("GET", url, _mine("aws"), headers=[("Accept", "application/json")],
                       region="eu-west-2", service="braket")
    assert set(added) >= {"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256"}
    assert secret not in json.dumps(added)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(hw.ca.ca_file))) as client:
        direct = client.get(url, headers={"Accept": "application/json", **added})
    assert direct.status_code == 200, direct.text
    assert hw.aws.mismatches == []


def test_sign_and_forward_take_only_http_method_tokens(inproc_rig):
    parts, hw, _ = inproc_rig
    aws = {"region": "us-east-1", "service": "braket"}
    for method in ("GET\n/other\n", "G ET", "PO\u017fT", "", "X" * 33):
        if method:  # an empty method is Sign's default GET
            with pytest.raises(InvalidArgumentError, match="not an HTTP method"):
                parts.sign(method, hw.url("aws"), _mine("aws"), **aws)
        with pytest.raises(InvalidArgumentError, match="HTTP method"):
            parts.forward(method or " ", hw.url("aws"), "aws", _mine("aws"), **aws)
    with pytest.raises(InvalidArgumentError, match="line break"):
        parts.sign("GET", hw.url("aws"), _mine("aws"), headers=[("X-Note", "a\r\nHost: evil.example")], **aws)
    assert parts.sign("propfind", hw.url("aws"), _mine("aws"), **aws)
    assert hw.servers["aws"].seen == []


def test_sign_is_refused_for_bearer_and_header_schemes(inproc_rig):
    parts, hw, _ = inproc_rig
    for provider in (p for p in PROVIDERS if p != "aws"):
        with pytest.raises(FailedPreconditionError, match="use Forward"):
            parts.sign("GET", hw.url(provider), _mine(provider), provider=provider)
    with pytest.raises(FailedPreconditionError, match="use Forward"):
        parts.sign("GET", "https://api.ionq.co/v0.3/jobs", _mine("ionq"))


def test_luna_fills_qpu_tokens_inline_on_its_own_hop(inproc_rig):
    parts, hw, _ = inproc_rig
    key_id, secret = hw.secrets["aws"].split(":")
    # Luna's wire shape (luna-quantum's RestAPITokenProvider): AWS nested under "aws".
    hw.luna_expect.update({
        "ibm": {"source": "inline", "token": hw.secrets["ibm"]},
        "aws": {"aws_access_key": {"source": "inline", "token": key_id},
                "aws_secret_access_key": {"source": "inline", "token": secret},
                "aws_session_token": {"source": "inline", "token": None}},  # Luna's model wants all three
    })
    body = json.dumps({"solver_name": "QAOA", "qpu_tokens": {"ibm": {"source": "personal", "name": "my-ibm"}}}).encode()
    r = parts.forward("POST", hw.url("luna", "/v1/solutions"), "luna", {**_mine("luna"), **_mine("aws")}, body=body)
    assert r.status == 200, r.body
    # Tokens the SDK itself put in the body, in Luna's shape, are kept (resolved, still nested),
    # and an entry that is no reference (the SDK's null for a provider it has none for) stays.
    hw.luna_expect.clear()
    hw.luna_expect.update({
        "aws": {"aws_access_key": {"source": "inline", "token": key_id},
                "aws_secret_access_key": {"source": "inline", "token": secret},
                "aws_session_token": {"source": "inline", "token": "session-from-the-sdk"}},
        "dwave": {"source": "inline", "token": hw.secrets["dwave"]},
        "qctrl": None,
    })
    body = json.dumps({"qpu_tokens": {
        "aws": {"aws_access_key": {"source": "inline", "token": key_id},
                "aws_secret_access_key": {"source": "inline", "token": secret},
                "aws_session_token": {"source": "inline", "token": "session-from-the-sdk"}},
        "dwave": {"source": "personal", "name": "my-dwave"},
        "qctrl": None}}).encode()
    r = parts.forward("POST", hw.url("luna", "/v1/solutions"), "luna", _mine("luna"), body=body)
    assert r.status == 200, r.body


def test_ibm_cold_burst_makes_one_exchange_and_rotation_drops_it(inproc_rig):
    parts, hw, _ = inproc_rig

    async def one():
        reply = await parts.forwarder.forward(_call(hw.url("ibm", "/api/v1/backends"), "ibm"), _no_body())
        return reply.status

    async def burst():  # at once on the loop, as the daemon's servicer calls come
        return await asyncio.gather(*(one() for _ in range(50)))

    assert parts.run(burst()) == [200] * 50
    assert hw.ibm.exchanges == 1

    hw.secrets["ibm"] = hw.secrets["ibm"] + "-rotated"
    parts.run(parts.vault.personal.update(parts.vault.personal.find("personal", name="my-ibm"), name=None,
                                          secret=hw.secrets["ibm"].encode()))
    assert parts.run(one()) == 200 and hw.ibm.exchanges == 2


def test_qctrl_exchange_is_cached(inproc_rig):
    parts, hw, _ = inproc_rig
    for _ in range(3):
        assert parts.forward("GET", hw.url("qctrl", "/api"), "qctrl", _mine("qctrl")).status == 200
    assert hw.qctrl.exchanges == 1


def test_upstream_failures_name_the_host(short_tmp):
    import socket
    import threading

    from testsupport.fakes import FakeServer, Reply, make_ca

    ca = make_ca(short_tmp / "ca")
    release = threading.Event()
    slow = FakeServer(lambda seen: (release.wait(30), Reply())[1], ca)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(
        f'[forward]\nmax_body_bytes = 1000\n[providers.ionq]\nhosts = ["{slow.netloc}", "127.0.0.1:{dead_port}"]\n'
        f'ca_file = "{ca.ca_file}"\n')
    parts = InProcess(home)
    tp = {"ionq": inline("k")}
    try:
        with pytest.raises(UnavailableError, match=f"127.0.0.1:{dead_port}"):
            parts.forward("GET", f"https://127.0.0.1:{dead_port}/", "ionq", tp)
        with pytest.raises(DeadlineExceededError, match=slow.netloc):
            parts.forward("GET", slow.url("/"), "ionq", tp, timeout=0.5)
        release.set()
        with pytest.raises(ResourceExhaustedError, match="1000 bytes"):
            parts.forward("POST", slow.url("/"), "ionq", tp, body=b"x" * 1001)
        assert len(slow.seen) == 1  # the oversized body never left the daemon
    finally:
        release.set()
        parts.close()
        slow.close()


def test_locked_means_no_use_even_of_a_hot_token(inproc_rig):
    parts, hw, _ = inproc_rig
    braket = "https://braket.us-east-1.amazonaws.com/devices"
    for _ in range(3):  # hot: opened once, then reused
        assert parts.forward("GET", hw.url("dwave"), "dwave", _mine("dwave")).status == 200
        parts.sign("GET", braket, _mine("aws"))
    seen = len(hw.servers["dwave"].seen)
    parts.vault.agent.lock()
    with pytest.raises(LockedError):
        parts.forward("GET", hw.url("dwave"), "dwave", _mine("dwave"))
    with pytest.raises(LockedError):
        parts.sign("GET", braket, _mine("aws"))
    assert len(hw.servers["dwave"].seen) == seen
    parts.run(parts.vault.agent.unlock(b""))
    assert parts.forward("GET", hw.url("dwave"), "dwave", _mine("dwave")).status == 200


def test_rotation_takes_effect_for_hot_tokens(inproc_rig):
    parts, hw, _ = inproc_rig
    tokens = parts.vault.personal
    assert parts.forward("GET", hw.url("ionq"), "ionq", _mine("ionq")).status == 200
    old = hw.secrets["ionq"]
    hw.secrets["ionq"] = old + "-new"
    assert parts.forward("GET", hw.url("ionq"), "ionq", _mine("ionq")).status == 401
    parts.run(tokens.update(tokens.find("personal", name="my-ionq"), name=None, secret=hw.secrets["ionq"].encode()))
    assert parts.forward("GET", hw.url("ionq"), "ionq", _mine("ionq")).status == 200
    parts.run(tokens.delete(tokens.find("personal", name="my-ionq")))

    with pytest.raises(NotFoundError):
        parts.forward("GET", hw.url("ionq"), "ionq", _mine("ionq"))


def test_exchange_endpoint_obeys_the_same_destination_rules(short_tmp):
    from testsupport.fakes import FakeServer, IbmFake, make_ca

    ca = make_ca(short_tmp / "ca")
    api = FakeServer(IbmFake(lambda: "ibm-key"), ca)
    catcher = FakeServer(IbmFake(lambda: "ibm-key"), ca)
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    # The token endpoint names a host that is not one of IBM's: the API key must not go there.
    (home / "config.toml").write_text(
        f'[providers.ibm]\nhosts = ["{api.netloc}"]\nca_file = "{ca.ca_file}"\n'
        f'token_url = "{catcher.url("/identity/token")}"\n')
    parts = InProcess(home)
    try:
        with pytest.raises(PermissionDeniedError, match=catcher.netloc):
            parts.forward("GET", api.url("/api/v1/jobs"), "ibm", {"ibm": inline("ibm-key")})
        assert catcher.seen == [] and api.seen == []
    finally:
        parts.close()
        api.close()
        catcher.close()


def _full_width(text: str) -> str:
    """ASCII letters and digits as their full-width forms: one host to yarl, another to urlsplit."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in text)


def test_the_url_checked_is_the_url_sent_and_signed(inproc_rig):
    parts, hw, _ = inproc_rig
    ionq = hw.servers["ionq"]
    host, port = ionq.netloc.rsplit(":", 1)
    # Full-width digits name the configured host once normalised, as aiohttp sends it: the
    # check sees that same host, so the call is allowed and arrives there.
    before = len(ionq.seen)
    r = parts.forward("GET", f"https://{_full_width(host)}:{port}/v0.3/jobs", "ionq", _mine("ionq"))
    assert r.status == 200 and len(ionq.seen) == before + 1
    # The same trick on a host nobody configured is refused as that host, and nothing leaves.
    catch_host, catch_port = hw.catcher.netloc.rsplit(":", 1)
    with pytest.raises(PermissionDeniedError, match=f"{catch_host}:{catch_port}"):
        parts.forward("GET", f"https://{_full_width(catch_host)}:{catch_port}/x", "ionq", _mine("ionq"))
    assert hw.catcher.seen == []
    # Sign: the client sends the request itself, so its URL is signed exactly as given, and
    # only in the ASCII form its HTTP client puts on the wire.
    aws_host, aws_port = hw.servers["aws"].netloc.rsplit(":", 1)
    with pytest.raises(InvalidArgumentError, match="must be ASCII"):
        parts.sign("GET", f"https://{_full_width(aws_host)}:{aws_port}/devices", _mine("aws"),
                   region="us-east-1", service="braket")


# -- the forwarder's own logic ----------------------------------------------------------------

def _call(url: str, provider: str):
    from qpu_broker.forward.forwarder import ForwardCall

    return ForwardCall(provider, "GET", url, [], _mine(provider))


async def _no_body():
    for chunk in ():
        yield chunk


@pytest.mark.parametrize("provider", sorted(AUTH))
def test_the_callers_credential_headers_go_and_the_stored_secret_takes_their_place_once(inproc_rig, provider):
    """Whatever auth the caller sent (any spelling of the provider's header, or a bare Authorization)
    is dropped; the provider's header is there once, with the stored secret, and the secret is not
    echoed back in the answer's headers."""
    parts, hw, canary = inproc_rig
    header, form = AUTH[provider]
    sent = [(header.lower(), "smuggled"), (header.upper(), "smuggled"), ("authorization", "Basic c211Z2dsZWQ=")]
    r = parts.forward("GET", hw.url(provider), provider, _mine(provider), headers=sent)
    assert r.status == 200, r.body
    seen = hw.servers[provider].seen[-1]
    auth = [v for k, v in seen.headers if k.lower() == header.lower()]
    assert auth == [form.format(hw.secrets[provider])]
    assert not [v for k, v in seen.headers if k.lower() == "authorization" and "smuggled" in v or v == "Basic c211Z2dsZWQ="]
    assert canary not in json.dumps(r.headers)


def test_aws_needs_both_halves_and_a_stored_set_whole(inproc_rig):
    parts, hw, _ = inproc_rig
    with pytest.raises(InvalidArgumentError, match="aws_secret_access_key is missing"):
        parts.forward("GET", hw.url("aws"), "aws", {"aws_access_key": inline(AWS_KEY_ID)}, region="us-east-1",
                      service="braket")
    with pytest.raises(InvalidArgumentError, match="holds the whole credential set: pass it as aws="):
        parts.forward("GET", hw.url("aws"), "aws", {"aws_access_key": personal("my-aws"),
                                                    "aws_secret_access_key": inline("x")},
                      region="us-east-1", service="braket")
    assert hw.servers["aws"].seen == []


def test_a_stored_tokens_use_and_refusal_are_in_the_audit_log_without_its_secret(inproc_rig):
    parts, hw, canary = inproc_rig
    assert parts.forward("GET", hw.url("ionq"), "ionq", _mine("ionq")).status == 200
    with pytest.raises(PermissionDeniedError):
        parts.forward("GET", hw.catcher.url("/x"), "ionq", _mine("ionq"))
    parts.sign("GET", "https://braket.us-east-1.amazonaws.com/devices", _mine("aws"))
    entries = [json.loads(line) for line in parts.paths.audit_log.read_text().splitlines()]
    used = [(e["token_name"], e["outcome"], e["host"]) for e in entries if e.get("event") == "token-used"]
    assert used == [("my-ionq", ANSWERED, hw.servers["ionq"].netloc),
                    ("my-ionq", REFUSED_DESTINATION, hw.catcher.netloc),
                    ("my-aws", SIGNED, "braket.us-east-1.amazonaws.com")], used
    assert canary not in parts.paths.audit_log.read_text()
