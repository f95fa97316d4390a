"""Relay tokens: the secret never leaves the org server. Members' daemons send Forward and Sign
for them to the server, which applies the org's destination rules, the quota and the usage
record, adds the provider's auth, and takes the secret out of what comes back."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import ssl
import sys
import threading

import grpc
import pytest
from conftest import PROVIDERS, wait_for
from qpu_broker_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    ResourceExhaustedError,
    TokenProvider,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from test_org_reach import OrgRig

from testsupport.bad_headers import BAD as BAD_HEADERS
from testsupport.bad_headers import CANARY as HEADER_CANARY
from testsupport.bad_headers import GOOD as GOOD_HEADERS
from testsupport.fakes import AwsFake, FakeServer, json_reply
from testsupport.orgserver import ORG
from testsupport.path_encodings import REFUSED


def _relay(rig, name: str, member) -> None:
    r = rig.server.cli("token", "relay", name, "on")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: name in member.broker().org_status().relay_tokens, f"the member's daemon to know {name!r} is relayed")


def _provider_set(rig, *args: str) -> None:
    """`org-server provider set ...`, then wait until the running server has read it (it polls its store)."""
    seen = rig.server.log().count("organization settings changed")
    r = rig.server.cli("provider", "set", *args)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: rig.server.log().count("organization settings changed") > seen, "the server to read it")


def _records(rig) -> list[dict]:
    return _records_of(rig.server)


def test_a_relay_tokens_secret_never_reaches_a_member_by_any_rpc(member_rig):
    # A relay token from the start (the default): no member's daemon ever fetches its secret.
    member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                               token_type="organization")
    wait_for(lambda: "Org IonQ" in member_rig.member.broker().org_status().relay_tokens, "the member's daemon")
    assert member_rig.forward(member_rig.member).status_code == 200
    # The member's own key and their own gRPC client: every read the server has.
    stub, md = member_rig.member_client()
    [token] = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens
    assert token.relay
    for ids in ([], [token.id]):
        reply = stub.FetchSecrets(org_pb2.FetchSecretsRequest(ids=ids), metadata=md)
        assert reply.secrets == [] and member_rig.secret.encode() not in reply.SerializeToString()
    for call, request in (("GetToken", org_pb2.GetTokenRequest(id=token.id)),):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, call)(request, metadata=md)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    snapshot = next(stub.Watch(org_pb2.WatchRequest(), metadata=md))
    assert member_rig.secret.encode() not in snapshot.SerializeToString()
    # The member's daemon never held it: not in its memory (root reads /proc/PID/mem), not in its log.
    if os.geteuid() == 0:
        from test_memory import _copies

        assert _copies(member_rig.member.proc.pid, member_rig.secret.encode()) == []
    assert member_rig.secret not in member_rig.member.log()
    assert member_rig.secret not in member_rig.server.log()  # nor in the server's, which used it
    # The server made the call and recorded it, once, as bob's.
    rows = wait_for(lambda: [r for r in _records(member_rig) if r["member"] == "bob"], "the server's record")
    assert [(r["outcome"], r["status"], r["path"]) for r in rows] == [("answered", 200, "/v0.3/jobs")]


def test_relay_applies_the_orgs_destinations_quota_and_scrubs_echoes(member_rig):
    echo = FakeServer(lambda seen: json_reply({"headers": dict(seen.headers), "body": seen.body.decode()}), member_rig.ca)
    try:
        _provider_set(member_rig, "ionq", "--host", member_rig.fake.netloc, "--host", echo.netloc,
                      "--ca-file", str(member_rig.ca.ca_file))
        member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                                   token_type="organization")
        _relay(member_rig, "Org IonQ", member_rig.member)
        member = member_rig.member.broker()
        echoed = member.forward("POST", echo.url("/v0.3/jobs"), provider="ionq", qpu_tokens=ORG, body=b'{"x": 1}')
        assert echoed.status_code == 200 and member_rig.secret not in echoed.content.decode()
        assert "[redacted by qpu-broker]" in echoed.json()["headers"]["Authorization"]
        stub, md = member_rig.member_client()
        token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id
        # A member's own client asking the server to send it elsewhere: the org's rules hold there.
        with pytest.raises(grpc.RpcError) as caught:
            stub.RelayForward(org_pb2.RelayForwardRequest(token_id=token_id, provider="ionq", method="GET",
                                                          url="https://catcher.example.com/steal"), metadata=md)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(PermissionDeniedError):
            member.forward("GET", "https://catcher.example.com/steal", provider="ionq", qpu_tokens=ORG)
        r = member_rig.server.cli("quota", "set", "--member", "bob", "--requests", "1", "--per", "1d")
        assert r.returncode == 0, r.stderr
        # The relay counts on the server: no daemon cooperation needed (the raw RPC is refused too).
        with pytest.raises(grpc.RpcError) as caught:
            for _ in range(2):
                stub.RelayForward(org_pb2.RelayForwardRequest(token_id=token_id, provider="ionq", method="GET",
                                                              url=member_rig.fake.url("/v0.3/jobs")), metadata=md)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "bob's requests" in caught.value.details()
        with pytest.raises(ResourceExhaustedError):
            member_rig.forward(member_rig.member)
        outcomes = [r["outcome"] for r in _records(member_rig) if r["member"] == "bob"]
        assert outcomes.count("refused-destination") == 2 and outcomes.count("refused-quota") == 2
    finally:
        echo.close()


def test_relay_works_for_header_exchange_and_sigv4_schemes(make_daemon, short_tmp):
    rig = OrgRig(make_daemon, short_tmp, cached=False)
    try:
        wait_for(lambda: len(rig.member.broker().org_status().relay_tokens) == len(PROVIDERS), "every token relayed")
        for provider in PROVIDERS:  # header schemes, the key exchanges (IBM, Q-CTRL) and SigV4
            reply = rig.forward(provider, rig.hw.url(provider))
            assert reply.status_code == 200, (provider, reply.status_code, reply.content[:200])
            assert rig.hw.secrets[provider].split(":")[-1] not in reply.content.decode()
        signed = rig.member.broker().sign("POST", rig.hw.servers["aws"].url("/quantum-task"), body=b"{}",
                                          qpu_tokens=TokenProvider(aws=QpuToken("organization", name="org-aws")),
                                          region="us-east-1", service="braket")
        assert signed["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        assert rig.hw.secrets["aws"].split(":")[1] not in json.dumps(signed)
        for provider in PROVIDERS:
            assert rig.hw.secrets[provider].split(":")[-1] not in rig.member.log()
        kinds = {(r["provider"], r["kind"]) for r in _records(rig) if r["member"] == "bob"}
        assert {("ibm", "forward"), ("aws", "forward"), ("aws", "sign"), ("qctrl", "forward")} <= kinds
    finally:
        rig.close()


def test_relay_scrubs_aws_secret_parts_keeps_session_tokens_and_works_in_exec(member_rig):
    aws_secret = "relay-aws-secret-" + "k" * 24
    session_token = "relay-session-token-" + "t" * 40
    echo = FakeServer(lambda seen: json_reply({"headers": dict(seen.headers)}), member_rig.ca)
    try:
        for provider in ("aws", "ionq"):
            hosts = [member_rig.fake.netloc, echo.netloc] if provider == "ionq" else [echo.netloc]
            _provider_set(member_rig, provider, *[a for h in hosts for a in ("--host", h)], "--ca-file",
                          str(member_rig.ca.ca_file))
        admin = member_rig.admin.broker()
        admin.qpu_token.create(name="Org AWS", provider="aws", token=f"AKIAORGRELAY0000001:{aws_secret}:{session_token}",
                               token_type="organization", relay=True)
        admin.qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret, token_type="organization",
                               relay=True)
        wait_for(lambda: len(member_rig.member.broker().org_status().relay_tokens) == 2, "both relay tokens")
        aws = TokenProvider(aws=QpuToken("organization", name="Org AWS"))
        member = member_rig.member.broker()
        echoed = member.forward("GET", echo.url("/quantum-tasks"), provider="aws", qpu_tokens=aws,
                                region="us-east-1", service="braket")
        assert aws_secret not in echoed.content.decode() and session_token not in echoed.content.decode()
        assert echoed.json()["headers"]["X-Amz-Security-Token"] == "[redacted by qpu-broker]"
        # Sign would hand the session token to the member (the request carries it): Forward only.
        with pytest.raises(FailedPreconditionError, match="session token"):
            member.sign("GET", echo.url("/quantum-tasks"), qpu_tokens=aws, region="us-east-1", service="braket")
        # An exec session with a relay token: the session's calls go through the org server.
        (member_rig.member.home / "config.toml").write_text(
            f'[org]\ngrace_seconds = 900\n[providers.ionq]\nendpoint = "https://{member_rig.fake.netloc}"\n')
        assert member_rig.member.cli("reload").returncode == 0
        script = ("import os, ssl, urllib.request as u; r = u.Request(os.environ['IONQ_API_URL'] + '/jobs', "
                  "headers={'Authorization': 'apiKey ' + os.environ['IONQ_API_KEY']}); print(u.urlopen(r).status)")
        r = member_rig.member.cli("exec", "--org-token", "ionq=Org IonQ", "--", sys.executable, "-c", script)
        assert r.returncode == 0 and r.stdout.strip() == "200", r.stdout + r.stderr
    finally:
        echo.close()


def test_one_member_cannot_hold_more_than_four_relayed_calls(member_rig):
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def slow(seen):
        arrived.release()
        release.wait(30)
        return json_reply({"ok": True})

    slow_fake = member_rig.fake
    slow_fake.handler = slow  # the org allows this fake already (set before the server started)
    try:
        member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                                   token_type="organization", relay=True)
        stub, md = member_rig.member_client()
        token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id
        request = org_pb2.RelayForwardRequest(token_id=token_id, provider="ionq", method="GET", url=slow_fake.url("/x"))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            held = [pool.submit(stub.RelayForward, request, metadata=md) for _ in range(4)]
            for _ in range(4):
                assert arrived.acquire(timeout=30), [f.exception() for f in held if f.done()]
            with pytest.raises(grpc.RpcError) as caught:
                stub.RelayForward(request, metadata=md)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "4 relayed calls" in caught.value.details()
            release.set()
            assert [f.result().status for f in held] == [200] * 4
    finally:
        release.set()


def test_org_aws_tokens_never_presign_and_sign_only_braket(member_rig):
    """Issue 20, item 3: one Sign with X-Amz-* query authentication in the URL was a 7-day presigned
    URL (a bearer URL that outlives the member and that no quota or record sees). Relay and cached
    tokens alike now sign headers only, for Braket in a Braket region, and take only HTTP methods."""
    import httpx

    from testsupport.presigned import presigned_through_sign

    key_id, secret = "AKIAORGPRESIGN000001", "org-presign-secret-" + "s" * 21
    servers: dict[str, FakeServer] = {}
    aws = servers["aws"] = FakeServer(AwsFake(lambda: (key_id, secret, None), lambda: servers["aws"].url("")),
                                      member_rig.ca)
    try:
        _provider_set(member_rig, "aws", "--host", aws.netloc, "--ca-file", str(member_rig.ca.ca_file))
        names = ("Org AWS relay", "Org AWS cached")
        for name in names:
            member_rig.admin.broker().qpu_token.create(name=name, provider="aws", token=f"{key_id}:{secret}",
                                                       token_type="organization", cached=name.endswith("cached"))
        member = member_rig.member.broker()
        wait_for(lambda: len(member.qpu_token.get_all()[QpuTokenType.ORGANIZATION]) == 2
                 and names[0] in member.org_status().relay_tokens, "both org AWS tokens")
        url = aws.url("/quantum-tasks")
        for name in names:
            tokens = TokenProvider(aws=QpuToken("organization", name=name))

            def sign(target, tokens=tokens, region="us-east-1", service="braket"):
                return member.sign("GET", target, qpu_tokens=tokens, region=region, service=service)

            try:
                presigned = presigned_through_sign(sign, url, key_id, secret, "us-east-1", "braket", 604800)
            except PermissionDeniedError as exc:
                assert "an organization token never signs" in str(exc)
            else:
                pytest.fail(f"{name}: one Sign made a 7-day presigned URL: {presigned}")
            # A host the org allowed for Braket: not another AWS service, nor a region Braket is not in.
            for region, service in (("us-east-1", "iam"), ("us-east-1", "sts"), ("ap-south-1", "braket")):
                with pytest.raises(PermissionDeniedError, match="only as braket in a Braket region"):
                    sign(url, region=region, service=service)
            # What the org token is for still works: signed in headers, checked by botocore at the fake.
            with httpx.Client(verify=ssl.create_default_context(cafile=str(member_rig.ca.ca_file))) as client:
                assert client.get(url, headers=sign(url)).status_code == 200
        # A member's own client, past their daemon: the org server refuses just the same.
        stub, md = member_rig.member_client()
        token_id = next(t.id for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens if t.relay)
        empty = hashlib.sha256(b"").hexdigest()
        presign = url + ("?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + key_id +
                         "%2F20260101%2Fus-east-1%2Fbraket%2Faws4_request&X-Amz-Date=20260101T000000Z"
                         "&X-Amz-Expires=604800&X-Amz-SignedHeaders=host")
        for fields, code in (({"url": presign}, grpc.StatusCode.PERMISSION_DENIED),
                             ({"service": "iam"}, grpc.StatusCode.PERMISSION_DENIED),
                             ({"url": url + "?x-amz-expires=604800"}, grpc.StatusCode.INVALID_ARGUMENT),
                             ({"method": "GET\n/\n"}, grpc.StatusCode.INVALID_ARGUMENT),
                             ({"body_sha256": "UNSIGNED-PAYLOAD"}, grpc.StatusCode.INVALID_ARGUMENT)):
            request = org_pb2.RelaySignRequest(**{"token_id": token_id, "provider": "aws", "method": "GET", "url": url,
                                                  "body_sha256": empty, "region": "us-east-1", "service": "braket",
                                                  **fields})
            with pytest.raises(grpc.RpcError) as caught:
                stub.RelaySign(request, metadata=md)
            assert caught.value.code() is code, (fields, caught.value.details())
        with pytest.raises(grpc.RpcError) as caught:
            stub.RelayForward(org_pb2.RelayForwardRequest(token_id=token_id, provider="aws", method="G ET", url=url,
                                                          region="us-east-1", service="braket"), metadata=md)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Only the header-signed Sign was a use: nothing refused above reached the usage record.
        assert [r["outcome"] for r in _records(member_rig) if r["member"] == "bob" and r["token_id"] == token_id] == \
            ["signed"]
    finally:
        aws.close()


def test_an_org_ibm_bearer_cached_or_relayed_leaves_the_quantum_api_by_no_spelling_of_dot_dot(make_daemon, short_tmp):
    """Attack review: '/api/..%2Fv1/apikeys' passed the path rule, and a gateway that decodes before
    it resolves (nginx) makes it IAM's key minting, with the org's bearer. Every spelling of '..'
    and '/' is refused, by the member's daemon for a cached token and by the org server for a
    relay token (a member's own gRPC client included), before anything is sent or any key traded."""
    rig = OrgRig(make_daemon, short_tmp)  # cached tokens
    try:
        rig.admin.broker().qpu_token.create(name="org-ibm-relay", provider="ibm", token=rig.hw.secrets["ibm"],
                                            token_type="organization", relay=True)
        wait_for(lambda: "org-ibm-relay" in rig.member.broker().org_status().relay_tokens, "the relay token")
        member = rig.member.broker()
        stub, md = rig.server.client(rig.server.add_user("carol"))
        [relay_id] = [t.id for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens
                      if t.name == "org-ibm-relay"]
        ibm = rig.hw.servers["ibm"]
        for path in REFUSED:
            url = rig.hw.url("ibm", path)
            for name in ("org-ibm", "org-ibm-relay"):
                with pytest.raises(PermissionDeniedError, match="only with the calls"):
                    member.forward("POST", url, provider="ibm", qpu_tokens=TokenProvider(ibm=QpuToken("organization", name=name)))
            with pytest.raises(grpc.RpcError) as caught:
                stub.RelayForward(org_pb2.RelayForwardRequest(token_id=relay_id, provider="ibm", method="POST", url=url),
                                  metadata=md)
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, (path, caught.value.details())
        assert ibm.seen == [] and rig.hw.ibm.exchanges == 0  # nothing sent, no key traded
        for name in ("org-ibm", "org-ibm-relay"):  # the Quantum API itself still goes
            reply = member.forward("GET", rig.hw.url("ibm"), provider="ibm",
                                   qpu_tokens=TokenProvider(ibm=QpuToken("organization", name=name)))
            assert reply.status_code == 200
        assert [s.path for s in ibm.seen if s.path != "/identity/token"] == ["/api/v1/jobs"] * 2
        assert "Traceback" not in rig.member.log() + rig.server.log()
    finally:
        rig.close()


def test_bad_headers_are_refused_by_name_for_cached_and_relay_tokens_and_at_the_server(member_rig):
    """A header no server reads one way (' Authorization', CR, LF, NUL, other control
    characters) is INVALID_ARGUMENT naming it, never its value: from a member's daemon for a cached
    or a relay token, and from the org server itself for a member's own RelayForward and RelaySign;
    nothing is sent, and neither log gets a traceback."""
    rig = member_rig
    rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization")
    member = rig.member.broker()
    stub, md = rig.member_client()
    token_id = stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens[0].id
    for mode in ("cached", "relay"):
        if mode == "relay":
            _relay(rig, "Org IonQ", rig.member)
        for bad, named in BAD_HEADERS:
            headers = [GOOD_HEADERS[0], bad]
            with pytest.raises(InvalidArgumentError, match=re.escape(named)) as caught:
                member.forward("POST", rig.fake.url("/v0.3/jobs"), provider="ionq", headers=headers, qpu_tokens=ORG)
            assert HEADER_CANARY not in str(caught.value), (mode, bad)
    wire = [org_pb2.RelayHeader(name=k, value=v) for k, v in (GOOD_HEADERS[0],)]
    for bad, named in BAD_HEADERS:
        headers = [*wire, org_pb2.RelayHeader(name=bad[0], value=bad[1])]
        for call, request in (
                ("RelayForward", org_pb2.RelayForwardRequest(token_id=token_id, provider="ionq", method="POST",
                                                              url=rig.fake.url("/v0.3/jobs"), headers=headers)),
                ("RelaySign", org_pb2.RelaySignRequest(token_id=token_id, provider="ionq", method="POST",
                                                        url=rig.fake.url("/v0.3/jobs"), headers=headers))):
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, call)(request, metadata=md)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (call, bad, caught.value.details())
            assert named in caught.value.details() and HEADER_CANARY not in caught.value.details()
    assert rig.fake.seen == []
    for log in (rig.member.log(), rig.server.log()):
        assert "Traceback" not in log and HEADER_CANARY not in log and rig.secret not in log
    assert rig.forward(rig.member).status_code == 200  # the token itself still works


def test_org_tokens_are_relay_unless_an_admin_caches_them_and_every_listing_says_which(member_rig):
    """Issue 21: relay by default. Caching is an admin's choice, made at creation (--cached,
    cached=True, CreateTokenRequest.cached) or later (org-server token cache, UpdateToken's cached);
    older clients' relay field still means relay; every listing shows the mode."""
    rig = member_rig
    admin = rig.admin.broker().qpu_token
    assert admin.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization").mode == "relay"
    r = rig.admin.cli("token", "add", "Org Cached", "--provider", "ionq", "--type", "organization", "--cached", "--json",
                      input=rig.secret + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["mode"] == "cached", r.stderr
    member = rig.member.broker()
    wait_for(lambda: (member.org_status().relay_tokens, member.org_status().cached_tokens) == (("Org IonQ",), ("Org Cached",)),
             "the member's daemon to know both")
    assert rig.forward(rig.member).status_code == 200
    listed = json.loads(rig.member.cli("token", "list", "--json").stdout)["organization"]
    assert {t["name"]: t["mode"] for t in listed} == {"Org IonQ": "relay", "Org Cached": "cached"}
    table = [line.split()[:3] for line in rig.member.cli("token", "list").stdout.splitlines()]
    assert table[0][:2] == ["KIND", "MODE"] and ["organization", "relay", "Org"] in table and \
        ["organization", "cached", "Org"] in table
    status = rig.member.cli("org", "status").stdout
    assert "relay (their secrets stay on the org server): Org IonQ" in status
    assert "cached (their secrets are held by this daemon, in memory): Org Cached" in status
    assert json.loads(rig.member.cli("org", "status", "--json").stdout)["cached_tokens"] == ["Org Cached"]
    server_list = rig.server.cli("token", "list").stdout
    assert "Org IonQ  mode=relay" in server_list and "Org Cached  mode=cached" in server_list
    assert {t["name"]: t["mode"] for t in json.loads(rig.server.cli("token", "list", "--json").stdout)} == \
        {"Org IonQ": "relay", "Org Cached": "cached"}
    # Only the cached one's secret reaches a member, by any RPC.
    stub, md = rig.member_client()
    ids = {t.name: t.id for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens}
    assert [s.id for s in stub.FetchSecrets(org_pb2.FetchSecretsRequest(), metadata=md).secrets] == [ids["Org Cached"]]

    # Changing the mode says what it means; `token relay` is `token cache` the other way round.
    r = rig.server.cli("token", "cache", "Org IonQ", "on")
    assert r.returncode == 0 and "members' daemons will hold its secret" in r.stdout and "root" in r.stdout, r.stderr
    wait_for(lambda: "Org IonQ" in member.org_status().cached_tokens, "the member's daemon to cache it")
    r = rig.server.cli("token", "cache", "Org IonQ", "off")
    assert r.returncode == 0 and "rotate the provider key" in r.stdout, r.stderr
    wait_for(lambda: "Org IonQ" in member.org_status().relay_tokens, "the member's daemon to relay it again")
    r = rig.server.cli("token", "relay", "Org Cached", "on")
    assert r.returncode == 0 and "rotate the provider key" in r.stdout, r.stderr
    admin_stub, admin_md = rig.server.admin_client()
    cached = admin_stub.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(name="Org Cached"),
                                                               cached=True), metadata=admin_md)
    assert not cached.relay and cached.version == 3  # the CLI's change, then this one
    # An older client's CreateToken: relay=true is relay, as is nothing; relay and cached at once is refused.
    for name, fields in (("old relay", {"relay": True}), ("old default", {})):
        made = admin_stub.CreateToken(org_pb2.CreateTokenRequest(name=name, provider="ionq", secret=b"s", **fields),
                                      metadata=admin_md)
        assert made.relay, name
    with pytest.raises(grpc.RpcError) as caught:
        admin_stub.CreateToken(org_pb2.CreateTokenRequest(name="both", provider="ionq", secret=b"s", relay=True,
                                                          cached=True), metadata=admin_md)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "relay or cached" in caught.value.details()
    # The Python client: relay=False, the older spelling, is a cached token; a contradiction is refused.
    assert admin.create(name="legacy", provider="ionq", token="s", token_type="organization", relay=False).mode == "cached"
    with pytest.raises(InvalidArgumentError, match="relay or cached"):
        admin.create(name="x", provider="ionq", token="s", token_type="organization", cached=True, relay=True)
    with pytest.raises(InvalidArgumentError, match="modes of organization tokens"):
        admin.create(name="mine", provider="ionq", token="s", cached=True)
    r = rig.admin.cli("token", "add", "y", "--provider", "ionq", "--type", "organization", "--cached", "--relay",
                      input="s\n")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_an_answer_is_scrubbed_of_the_secret_that_went_out_even_if_an_admin_rotates_it_meanwhile(org):
    # An echoing provider that answers only once the test has rotated the token: the request
    # carried the old secret, and the store holds the new one when the answer comes back.
    arrived, rotated = threading.Event(), threading.Event()

    def echo_after_rotation(seen):
        arrived.set()
        rotated.wait(30)
        return json_reply({"headers": dict(seen.headers)})

    echo = FakeServer(echo_after_rotation, org.ca)
    try:
        r = org.cli("provider", "set", "ionq", "--host", echo.netloc, "--ca-file", str(org.ca.ca_file))
        assert r.returncode == 0, r.stderr
        admin, amd = org.admin_client()
        old, new = f"canaryold{os.urandom(8).hex()}", f"canarynew{os.urandom(8).hex()}"
        token = admin.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=old.encode()),
                                  metadata=amd)
        assert token.relay
        bob, bmd = org.client(org.add_user("bob"))
        request = org_pb2.RelayForwardRequest(token_id=token.id, provider="ionq", method="GET", url=echo.url("/v0.3/jobs"))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(bob.RelayForward, request, metadata=bmd, timeout=30)
            assert arrived.wait(30), call.exception() if call.done() else "the relayed call never arrived"
            admin.UpdateToken(org_pb2.UpdateTokenRequest(token=org_pb2.GetTokenRequest(id=token.id),
                                                         secret=new.encode()), metadata=amd)
            rotated.set()
            answer = call.result(timeout=30)
        assert answer.status == 200
        assert old not in answer.body.decode() and new not in answer.body.decode()
        assert json.loads(answer.body)["headers"]["Authorization"] == "apiKey [redacted by qpu-broker]"
    finally:
        rotated.set()
        echo.close()


def test_a_relayed_calls_timeout_must_be_a_number_of_seconds_the_server_allows(org):
    echo = FakeServer(lambda seen: json_reply({"ok": True}), org.ca)
    try:
        r = org.cli("provider", "set", "ionq", "--host", echo.netloc, "--ca-file", str(org.ca.ca_file))
        assert r.returncode == 0, r.stderr
        admin, amd = org.admin_client()
        token = admin.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=b"canaryx"),
                                  metadata=amd)
        bob, bmd = org.client(org.add_user("bob"))

        def relay(seconds):
            return bob.RelayForward(org_pb2.RelayForwardRequest(token_id=token.id, provider="ionq", method="GET",
                                                                url=echo.url("/v0.3/jobs"), timeout_seconds=seconds),
                                    metadata=bmd, timeout=30)

        for seconds in (float("nan"), -1.0, float("inf"), 1e300, 300.5):
            with pytest.raises(grpc.RpcError) as caught:
                relay(seconds)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (seconds, caught.value.details())
            assert "timeout_seconds" in caught.value.details() and "300" in caught.value.details()
        assert [relay(seconds).status for seconds in (0, 0.5, 300)] == [200] * 3
        assert "Traceback" not in org.log()
    finally:
        echo.close()


def test_relayed_calls_at_once_are_each_recorded_once_and_a_kill_leaves_those_in_flight_interrupted(org):
    """The server writes relayed calls' records off its event loop, committed in groups
    (orgserver/record_writer.py). Many calls at once from several members are each recorded
    once, answered, and counted by the quota exactly; a server killed (-9) while calls wait on the
    provider leaves each of them `interrupted`, never unrecorded: a record is committed before
    its request leaves."""
    hold, release, arrived = threading.Event(), threading.Event(), threading.Semaphore(0)

    def provider(seen):
        if hold.is_set():
            arrived.release()
            release.wait(30)
        return json_reply({"ok": True})

    fake = FakeServer(provider, org.ca)
    try:
        seen = org.log().count("organization settings changed")
        assert org.cli("provider", "set", "ionq", "--host", fake.netloc, "--ca-file", str(org.ca.ca_file)).returncode == 0
        wait_for(lambda: org.log().count("organization settings changed") > seen, "the server to read it")
        admin, md = org.admin_client()
        token = admin.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=b"relay-key",
                                                             relay=True), metadata=md)
        assert org.cli("quota", "set", "--token", "Org IonQ", "--requests", "1000", "--per", "1d").returncode == 0
        members = [org.client(code) for code in org.add_users(["m0", "m1", "m2", "m3"])]
        request = org_pb2.RelayForwardRequest(token_id=token.id, provider="ionq", method="GET", url=fake.url("/v0.3/jobs"))

        def call(i: int):
            stub, member_md = members[i % 4]
            return stub.RelayForward(request, metadata=member_md).status

        def calls(i: int) -> list[int]:  # four of these a member: their four calls in flight at most
            return [call(i) for _ in range(4)]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = [status for four in pool.map(calls, range(16)) for status in four]
            assert statuses == [200] * 64  # 16 in flight: the server's limit
            hold.set()
            in_flight = [pool.submit(call, i) for i in range(3)]
            for _ in range(3):
                assert arrived.acquire(timeout=30), [f.exception() for f in in_flight if f.done()]
            org.proc.send_signal(signal.SIGKILL)
            org.proc.wait()
            release.set()
            for f in in_flight:
                with pytest.raises(grpc.RpcError):
                    f.result()
        org.start()
        rows = _records_of(org)
        assert len({r["id"] for r in rows}) == len(rows) == 67
        assert sorted(r["outcome"] for r in rows) == ["answered"] * 64 + ["interrupted"] * 3
        assert {r["member"]: sum(1 for x in rows if x["member"] == r["member"]) for r in rows} == \
            {"m0": 17, "m1": 17, "m2": 17, "m3": 16}  # 16 each, and the three cut short
        assert "67 used, 933 left" in org.cli("quota", "list").stdout  # each counted before it left
    finally:
        release.set()
        fake.close()


def _records_of(server) -> list[dict]:
    return [json.loads(x) for x in server.cli("usage", "--json").stdout.splitlines()]
