"""Forward and Sign for every provider, against loopback fakes over real HTTPS."""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import ssl

import pytest
from conftest import wait_for
from hardware import AWS_KEY_ID
from qpu_broker_client import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    ResourceExhaustedError,
    TokenProvider,
    UnavailableError,
)
from qpu_broker_client.providers import PROVIDERS

from testsupport.bad_headers import BAD as BAD_HEADERS
from testsupport.bad_headers import CANARY as HEADER_CANARY
from testsupport.bad_headers import GOOD as GOOD_HEADERS

SMUGGLED = [("Authorization", "Bearer smuggled"), ("X-Auth-Token", "smuggled"), ("X-Api-Key", "smuggled"),
            ("Luna-API-Key", "smuggled")]


def _tp(provider: str) -> TokenProvider:
    return TokenProvider(**{provider: QpuToken("personal", name=f"my-{provider}")})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_forward_adds_the_right_auth_and_drops_smuggled_headers(rig, provider):
    d, hw, _ = rig
    b = d.broker()
    body = json.dumps({"job": provider}).encode()
    r = b.forward("POST", hw.url(provider), provider=provider, headers=SMUGGLED + [("Content-Type", "application/json")],
                  body=body, qpu_tokens=_tp(provider), region="us-east-1" if provider == "aws" else None,
                  service="braket" if provider == "aws" else None)
    assert r.status_code == 200, r.content
    assert r.json()["ok"] is True and r.headers["content-type"] == "application/json"
    seen = hw.servers[provider].seen[-1]
    assert seen.body == body
    for name, value in seen.headers:
        assert value != "Bearer smuggled" and value != "smuggled", (name, value)
    if provider == "ibm":
        assert hw.ibm.exchanges == 1
    assert hw.catcher.seen == []


def test_every_refusal_for_every_provider_sends_nothing(rig):
    d, hw, _ = rig
    b = d.broker()
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
                b.forward("GET", url, provider=provider, qpu_tokens=_tp(provider), region="us-east-1", service="braket")
            assert provider in str(err.value)
    assert hw.catcher.seen == []
    assert all(not s.seen for s in hw.servers.values())


def test_plain_http_only_where_configured(rig):
    d, hw, _ = rig
    r = d.broker().forward("GET", hw.plain.url("/sapi"), provider="dwave", qpu_tokens=_tp("dwave"))
    assert r.status_code == 200
    with pytest.raises(PermissionDeniedError, match="plain http"):
        d.broker().forward("GET", hw.plain.url("/sapi"), provider="ionq", qpu_tokens=_tp("ionq"))


def test_redirects_are_returned_not_followed(rig):
    d, hw, _ = rig
    target = hw.catcher.url("/stolen")
    r = d.broker().forward("GET", hw.url("dwave", f"/redirect?to={target}"), provider="dwave", qpu_tokens=_tp("dwave"))
    assert r.status_code == 302 and r.headers["location"] == target
    assert hw.catcher.seen == []


def test_environment_and_inline_tokens_are_used_but_never_kept(rig, monkeypatch):
    d, hw, canary = rig
    before = d.broker().qpu_token.get_all()
    monkeypatch.setenv("LUNA_DWAVE_TOKEN", hw.secrets["dwave"])
    assert d.broker().forward("GET", hw.url("dwave"), provider="dwave").status_code == 200
    # An explicit field wins over the variable.
    monkeypatch.setenv("LUNA_IONQ_TOKEN", "wrong-value")
    r = d.broker().forward("GET", hw.url("ionq"), provider="ionq",
                           qpu_tokens=TokenProvider(ionq=QpuToken("inline", token=hw.secrets["ionq"])))
    assert r.status_code == 200
    assert d.broker().forward("GET", hw.url("ionq"), provider="ionq").status_code == 401  # the variable's wrong value
    preview = d.broker().resolve("dwave")
    assert [(t.field, t.token_type) for t in preview] == [("dwave", QpuTokenType.INLINE)]
    assert canary not in repr(preview)
    stored = d.broker().resolve("dwave", TokenProvider(dwave=QpuToken("personal", name="my-dwave")))
    assert [(t.token_type, t.name) for t in stored] == [(QpuTokenType.PERSONAL, "my-dwave")] and stored[0].id
    assert d.broker().qpu_token.get_all() == before
    assert canary not in d.log()
    for path in d.home.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_missing_token_names_the_variable(rig, monkeypatch):
    d, hw, _ = rig
    with pytest.raises(FailedPreconditionError, match="LUNA_FUJITSU_TOKEN"):
        d.broker().forward("GET", hw.url("fujitsu"), provider="fujitsu")
    monkeypatch.setenv("LUNA_AWS_ACCESS_KEY", AWS_KEY_ID)
    from qpu_broker_client import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="LUNA_AWS_SECRET_ACCESS_KEY is not set"):
        d.broker().resolve("aws")


def test_aws_split_form_and_sign(rig):
    d, hw, _ = rig
    key_id, secret = hw.secrets["aws"].split(":")
    split = TokenProvider(aws_access_key=QpuToken("inline", token=key_id),
                          aws_secret_access_key=QpuToken("inline", token=secret))
    r = d.broker().forward("POST", hw.url("aws", "/quantum-task"), provider="aws", body=b'{"shots": 100}',
                           qpu_tokens=split, region="us-east-1", service="braket")
    assert r.status_code == 200 and r.json()["service"] == "braket"
    # Sign: the client sends the request itself with the headers the daemon returns.
    import httpx

    url = hw.url("aws", "/devices?max=10&next=a%20b")
    added = d.broker().sign("GET", url, headers={"Accept": "application/json"}, qpu_tokens=_tp("aws"),
                            region="eu-west-2", service="braket")
    assert set(added) >= {"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256"}
    assert secret not in json.dumps(added)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(hw.ca.ca_file))) as client:
        direct = client.get(url, headers={"Accept": "application/json", **added})
    assert direct.status_code == 200, direct.text
    assert hw.aws.mismatches == []


def test_a_personal_token_presigns_only_as_long_as_config_allows(rig):
    from presigned import presigned_through_sign

    d, hw, _ = rig
    key_id, secret = hw.secrets["aws"].split(":")
    url = hw.url("aws", "/devices")

    def sign(target):
        return d.broker().sign("GET", target, qpu_tokens=_tp("aws"), region="us-east-1", service="braket")

    # By default no presigned URL at all: the refusal names the config key that allows them.
    with pytest.raises(PermissionDeniedError, match=r"presign_max_seconds under \[providers.aws\].*none"):
        presigned_through_sign(sign, url, key_id, secret, "us-east-1", "braket", 60)
    config = d.home / "config.toml"
    config.write_text(config.read_text().replace("[providers.aws]\n", "[providers.aws]\npresign_max_seconds = 300\n"))
    assert d.cli("reload").returncode == 0
    # Up to the lifetime the user set, the URL is the one botocore presigns with the real secret.
    assert presigned_through_sign(sign, url, key_id, secret, "us-east-1", "braket", 300).startswith(url)
    with pytest.raises(PermissionDeniedError, match="valid 301 s.*at most 300 s"):
        presigned_through_sign(sign, url, key_id, secret, "us-east-1", "braket", 301)
    # Spellings AWS reads otherwise than a lenient gateway might, and query-auth parts as headers.
    with pytest.raises(InvalidArgumentError, match="x-amz-expires"):
        sign(f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&x-amz-expires=604800")
    with pytest.raises(InvalidArgumentError, match="not a header"):
        d.broker().sign("GET", url, headers={"X-Amz-Expires": "604800"}, qpu_tokens=_tp("aws"), region="us-east-1",
                        service="braket")
    assert hw.aws.mismatches == []


def test_presign_max_seconds_is_checked_as_config_is_read(tmp_path):
    from qpu_broker.common.config import load_config

    path = tmp_path / "config.toml"
    path.write_text("[providers.aws]\npresign_max_seconds = 3600\n")
    assert load_config(path).presign_max_seconds == 3600
    for value in ("604801", "-1", "true", "1.5", '"3600"'):
        path.write_text(f"[providers.aws]\npresign_max_seconds = {value}\n")
        with pytest.raises(InvalidArgumentError, match=r"providers.aws.presign_max_seconds must be .* to 604800"):
            load_config(path)
    path.write_text("[providers.ionq]\npresign_max_seconds = 60\n")
    with pytest.raises(InvalidArgumentError, match=r"for \[providers.aws\] only"):
        load_config(path)


def test_sign_and_forward_take_only_http_method_tokens(rig):
    d, hw, _ = rig
    b = d.broker()
    for method in ("GET\n/other\n", "G ET", "PO\u017fT", "", "X" * 33):
        if method:  # an empty method is Sign's default GET
            with pytest.raises(InvalidArgumentError, match="not an HTTP method"):
                b.sign(method, hw.url("aws"), qpu_tokens=_tp("aws"), region="us-east-1", service="braket")
        with pytest.raises(InvalidArgumentError, match="HTTP method"):
            b.forward(method or " ", hw.url("aws"), provider="aws", qpu_tokens=_tp("aws"), region="us-east-1",
                      service="braket")
    with pytest.raises(InvalidArgumentError, match="line break"):
        b.sign("GET", hw.url("aws"), headers={"X-Note": "a\r\nHost: evil.example"}, qpu_tokens=_tp("aws"),
               region="us-east-1", service="braket")
    assert b.sign("propfind", hw.url("aws"), qpu_tokens=_tp("aws"), region="us-east-1", service="braket")
    assert hw.servers["aws"].seen == []


def test_sign_is_refused_for_bearer_and_header_schemes(rig):
    d, hw, _ = rig
    for provider in (p for p in PROVIDERS if p != "aws"):
        with pytest.raises(FailedPreconditionError, match="use Forward"):
            d.broker().sign("GET", hw.url(provider), provider=provider, qpu_tokens=_tp(provider))
    with pytest.raises(FailedPreconditionError, match="use Forward"):
        d.broker().sign("GET", "https://api.ionq.co/v0.3/jobs", qpu_tokens=_tp("ionq"))


def test_luna_fills_qpu_tokens_inline_on_its_own_hop(rig):
    d, hw, _ = rig
    key_id, secret = hw.secrets["aws"].split(":")
    # Luna's wire shape (luna-quantum's RestAPITokenProvider): AWS nested under "aws".
    hw.luna_expect.update({
        "ibm": {"source": "inline", "token": hw.secrets["ibm"]},
        "aws": {"aws_access_key": {"source": "inline", "token": key_id},
                "aws_secret_access_key": {"source": "inline", "token": secret},
                "aws_session_token": {"source": "inline", "token": None}},  # Luna's model wants all three
    })
    body = json.dumps({"solver_name": "QAOA", "qpu_tokens": {"ibm": {"source": "personal", "name": "my-ibm"}}}).encode()
    r = d.broker().forward("POST", hw.url("luna", "/v1/solutions"), provider="luna", body=body,
                           qpu_tokens=TokenProvider(luna=QpuToken("personal", name="my-luna"),
                                                    aws=QpuToken("personal", name="my-aws")))
    assert r.status_code == 200, r.content
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
    r = d.broker().forward("POST", hw.url("luna", "/v1/solutions"), provider="luna", body=body,
                           qpu_tokens=TokenProvider(luna=QpuToken("personal", name="my-luna")))
    assert r.status_code == 200, r.content


def test_ibm_cold_burst_makes_one_exchange_and_rotation_drops_it(rig):
    d, hw, _ = rig
    b = d.broker()

    def one(_):
        return b.forward("GET", hw.url("ibm", "/api/v1/backends"), provider="ibm", qpu_tokens=_tp("ibm"),
                         headers={"Service-CRN": "crn:v1:test"}).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(one, range(50)))
    assert codes == [200] * 50
    assert hw.ibm.exchanges == 1

    hw.secrets["ibm"] = hw.secrets["ibm"] + "-rotated"
    b.qpu_token.update(qpu_token_name="my-ibm", token=hw.secrets["ibm"])
    assert one(0) == 200 and hw.ibm.exchanges == 2


def test_ibm_near_expiry_bearer_is_refreshed_before_use(rig):
    d, hw, _ = rig
    hw.ibm.lifetime = 1.0  # the daemon must refresh at ~0.8 s, before the fake expires it
    b = d.broker()

    def forward():
        r = b.forward("GET", hw.url("ibm", "/api/v1/jobs"), provider="ibm", qpu_tokens=_tp("ibm"))
        assert r.status_code == 200, r.content
        return hw.ibm.exchanges >= 3

    wait_for(forward, "two refreshes", timeout=15, interval=0.05)
    assert hw.ibm.expired_uses == 0


def test_qctrl_exchange_is_cached(rig):
    d, hw, _ = rig
    for _ in range(3):
        assert d.broker().forward("GET", hw.url("qctrl", "/api"), provider="qctrl", qpu_tokens=_tp("qctrl")).status_code == 200
    assert hw.qctrl.exchanges == 1


def test_upstream_failures_name_the_host(make_daemon, short_tmp):
    import socket
    import threading

    from testsupport.fakes import FakeServer, make_ca

    ca = make_ca(short_tmp / "ca")
    release = threading.Event()
    slow = FakeServer(lambda seen: (release.wait(30), __import__("fakes").Reply())[1], ca)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    d = make_daemon()
    d.home.mkdir(mode=0o700)
    (d.home / "config.toml").write_text(
        f'[forward]\nmax_body_bytes = 1000\n[providers.ionq]\nhosts = ["{slow.netloc}", "127.0.0.1:{dead_port}"]\n'
        f'ca_file = "{ca.ca_file}"\n')
    d.start()
    tp = TokenProvider(ionq=QpuToken("inline", token="k"))
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{dead_port}"):
        d.broker().forward("GET", f"https://127.0.0.1:{dead_port}/", provider="ionq", qpu_tokens=tp)
    with pytest.raises(DeadlineExceededError, match=slow.netloc):
        d.broker().forward("GET", slow.url("/"), provider="ionq", qpu_tokens=tp, timeout=0.5)
    release.set()
    with pytest.raises(ResourceExhaustedError, match="1000 bytes"):
        d.broker().forward("POST", slow.url("/"), provider="ionq", qpu_tokens=tp, body=b"x" * 1001)
    assert len(slow.seen) == 1  # the oversized body never left the daemon
    slow.close()


def test_cli_request_like_curl(rig, short_tmp):
    d, hw, _ = rig
    r = d.cli("request", "--provider", "fujitsu", "--token", "my-fujitsu", "-H", "X-Api-Key: smuggled",
              "-d", '{"qubo": [[1]]}', hw.url("fujitsu", "/da/v3/async/qubo/solve"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["echo"] == '{"qubo": [[1]]}'
    assert hw.servers["fujitsu"].seen[-1].method == "POST"
    payload = short_tmp / "body.json"
    payload.write_text('{"from": "file"}')
    r = d.cli("request", "-i", "-X", "PUT", "--data", f"@{payload}", "--provider", "fujitsu", "--token", "my-fujitsu",
              hw.url("fujitsu", "/x"))
    assert r.stdout.startswith("HTTP/1.1 200\n") and "content-type: application/json" in r.stdout.lower()
    assert '"echo": "{\\"from\\": \\"file\\"}"' in r.stdout
    r = d.cli("request", "--fail", "--provider", "fujitsu", hw.url("fujitsu"), env={"LUNA_FUJITSU_TOKEN": "wrong"})
    assert r.returncode == 22
    r = d.cli("request", "--provider", "ionq", "--token", "my-ionq", hw.catcher.url("/"))
    assert r.returncode == 1 and "not one of ionq's hosts" in r.stderr and hw.catcher.seen == []
    assert d.cli("request", "--provider", "ionq", "-H", "no-colon", hw.url("ionq")).returncode == 2
    # Secrets never travel in argv: the CLI has no flag that takes one.
    assert "--secret" not in d.cli("request", "--help").stdout


def test_a_64_mib_body_goes_through_both_ways(rig):
    import hashlib

    from testsupport.fakes import Reply

    d, hw, _ = rig
    body = secrets.token_bytes(1 << 20) * 64
    hw.servers["ionq"].handler = lambda seen: Reply(200, seen.body[::-1], [("Content-Type", "application/octet-stream")])
    r = d.broker().forward("PUT", hw.url("ionq", "/blob"), provider="ionq", qpu_tokens=_tp("ionq"), body=body, timeout=120)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body[::-1]).digest()
    assert hw.servers["ionq"].seen[-1].header("Content-Length") == str(64 << 20)


def test_locked_means_no_use_even_of_a_hot_token(rig):
    from qpu_broker_client import LockedError

    d, hw, _ = rig
    b = d.broker()
    for _ in range(3):  # hot: opened once, then reused
        assert b.forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=_tp("dwave")).status_code == 200
        b.sign("GET", "https://braket.us-east-1.amazonaws.com/devices", qpu_tokens=_tp("aws"))
    seen = len(hw.servers["dwave"].seen)
    b.lock()
    with pytest.raises(LockedError):
        b.forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=_tp("dwave"))
    with pytest.raises(LockedError):
        b.sign("GET", "https://braket.us-east-1.amazonaws.com/devices", qpu_tokens=_tp("aws"))
    assert len(hw.servers["dwave"].seen) == seen
    b.unlock()
    assert b.forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=_tp("dwave")).status_code == 200


def test_rotation_takes_effect_for_hot_tokens(rig):
    d, hw, _ = rig
    b = d.broker()
    assert b.forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=_tp("ionq")).status_code == 200
    old = hw.secrets["ionq"]
    hw.secrets["ionq"] = old + "-new"
    assert b.forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=_tp("ionq")).status_code == 401
    b.qpu_token.update(qpu_token_name="my-ionq", token=hw.secrets["ionq"])
    assert b.forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=_tp("ionq")).status_code == 200
    b.qpu_token.delete(qpu_token_name="my-ionq")
    from qpu_broker_client import NotFoundError

    with pytest.raises(NotFoundError):
        b.forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=_tp("ionq"))


def test_exchange_endpoint_obeys_the_same_destination_rules(make_daemon, short_tmp):
    from testsupport.fakes import FakeServer, IbmFake, make_ca

    ca = make_ca(short_tmp / "ca")
    api = FakeServer(IbmFake(lambda: "ibm-key"), ca)
    catcher = FakeServer(IbmFake(lambda: "ibm-key"), ca)
    d = make_daemon()
    d.home.mkdir(mode=0o700)
    # The token endpoint names a host that is not one of IBM's: the API key must not go there.
    (d.home / "config.toml").write_text(
        f'[providers.ibm]\nhosts = ["{api.netloc}"]\nca_file = "{ca.ca_file}"\n'
        f'token_url = "{catcher.url("/identity/token")}"\n')
    d.start()
    with pytest.raises(PermissionDeniedError, match=catcher.netloc):
        d.broker().forward("GET", api.url("/api/v1/jobs"), provider="ibm",
                           qpu_tokens=TokenProvider(ibm=QpuToken("inline", token="ibm-key")))
    assert catcher.seen == [] and api.seen == []
    api.close()
    catcher.close()


def test_a_small_request_with_a_large_answer_continues_in_a_stream(rig):
    import hashlib

    import grpc
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2, requests_pb2_grpc

    from testsupport.fakes import Reply

    d, hw, _ = rig
    answer = secrets.token_bytes(1 << 20) * 10  # over ForwardSmall's 4 MiB: the rest follows by ForwardRest
    hw.servers["ionq"].handler = lambda seen: Reply(200, answer, [("Content-Type", "application/octet-stream")])
    r = d.broker().forward("GET", hw.url("ionq", "/results"), provider="ionq", qpu_tokens=_tp("ionq"))
    assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(answer).digest()
    with grpc.insecure_channel(f"unix:{d.paths.socket}") as channel:
        stub = requests_pb2_grpc.RequestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ForwardRest(requests_pb2.ForwardRestRequest(continuation="no-such-thing")))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND and "expired" in err.value.details()


def _full_width(text: str) -> str:
    """ASCII letters and digits as their full-width forms: one host to yarl, another to urlsplit."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in text)


def test_the_url_checked_is_the_url_sent_and_signed(rig):
    d, hw, _ = rig
    b = d.broker()
    ionq = hw.servers["ionq"]
    host, port = ionq.netloc.rsplit(":", 1)
    # Full-width digits name the configured host once normalised, as aiohttp sends it: the
    # check sees that same host, so the call is allowed and arrives there.
    before = len(ionq.seen)
    r = b.forward("GET", f"https://{_full_width(host)}:{port}/v0.3/jobs", provider="ionq", qpu_tokens=_tp("ionq"))
    assert r.status_code == 200 and len(ionq.seen) == before + 1
    # The same trick on a host nobody configured is refused as that host, and nothing leaves.
    catch_host, catch_port = hw.catcher.netloc.rsplit(":", 1)
    with pytest.raises(PermissionDeniedError, match=f"{catch_host}:{catch_port}"):
        b.forward("GET", f"https://{_full_width(catch_host)}:{catch_port}/x", provider="ionq", qpu_tokens=_tp("ionq"))
    assert hw.catcher.seen == []
    # Sign: the client sends the request itself, so its URL is signed exactly as given, and
    # only in the ASCII form its HTTP client puts on the wire.
    from qpu_broker_client import InvalidArgumentError

    aws_host, aws_port = hw.servers["aws"].netloc.rsplit(":", 1)
    with pytest.raises(InvalidArgumentError, match="must be ASCII"):
        b.sign("GET", f"https://{_full_width(aws_host)}:{aws_port}/devices", qpu_tokens=_tp("aws"),
               region="us-east-1", service="braket")


@pytest.mark.parametrize(("headers", "coding"), [
    ([], "identity"),
    ([("Content-Encoding", "identity")], "identity"),
    ([("Content-Encoding", "identity"), ("content-encoding", "gzip")], "gzip"),
    ([("Content-Encoding", " GZIP ")], "gzip"),
    ([("Transfer-Encoding", "chunked")], "identity"),
    ([("Transfer-Encoding", "gzip, chunked")], "gzip"),
])
def test_a_body_read_to_check_or_rewrite_names_every_coding_it_went_through(headers, coding):
    """An answer scrubbed of secrets, or rewritten, must be plain: two Content-Encoding headers, or a
    coding in Transfer-Encoding, must not pass as identity (aiohttp decodes neither here)."""
    from qpu_broker.forward.forwarder import content_encoding

    assert content_encoding(headers) == coding


def test_a_header_servers_could_read_two_ways_is_refused_by_name(rig):
    """Attack review: a header name with a leading space passed the auth-header filter and went
    upstream as an obs-fold line; CR, LF or NUL gave INTERNAL with a traceback. Each is
    INVALID_ARGUMENT naming the header, never its value, for Forward and Sign, and nothing leaves."""
    d, hw, canary = rig
    b = d.broker()
    for bad, named in BAD_HEADERS:
        headers = [GOOD_HEADERS[0], bad]
        with pytest.raises(InvalidArgumentError, match=re.escape(named)) as forwarded:
            b.forward("POST", hw.url("ionq"), provider="ionq", headers=headers, body=b"{}", qpu_tokens=_tp("ionq"))
        with pytest.raises(InvalidArgumentError, match=re.escape(named)) as signed:
            b.sign("GET", hw.url("aws"), headers=headers, qpu_tokens=_tp("aws"), region="us-east-1", service="braket")
        for err in (forwarded, signed):
            assert HEADER_CANARY not in str(err.value) and "\n" not in str(err.value), bad
    assert all(not s.seen for s in hw.servers.values())
    assert "Traceback" not in d.log() and HEADER_CANARY not in d.log() and canary not in d.log()
    # What the grammar allows still goes, as it was given.
    r = b.forward("POST", hw.url("ionq"), provider="ionq", headers=GOOD_HEADERS, body=b"{}", qpu_tokens=_tp("ionq"))
    assert r.status_code == 200 and hw.servers["ionq"].seen[-1].header("X-Empty") == ""
