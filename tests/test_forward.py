"""Forward and Sign through the daemon process, against loopback fakes over real HTTPS: the gRPC
streams, the CLI, the client's environment and the daemon's log. The forwarder's own decisions are
tested in process (test_forwarder_inproc.py)."""

from __future__ import annotations

import json
import re
import secrets

import pytest
from conftest import wait_for
from qpu_broker_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
)

from testsupport.bad_headers import BAD as BAD_HEADERS
from testsupport.bad_headers import CANARY as HEADER_CANARY
from testsupport.bad_headers import GOOD as GOOD_HEADERS
from testsupport.hardware import AWS_KEY_ID


def _tp(provider: str) -> TokenProvider:
    return TokenProvider(**{provider: QpuToken("personal", name=f"my-{provider}")})


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


def test_a_personal_token_presigns_only_as_long_as_config_allows(rig):
    from testsupport.presigned import presigned_through_sign

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
