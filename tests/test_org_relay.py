"""Relay tokens: the secret never leaves the org server. Members' daemons send Forward and Sign
for them to the server, which applies the org's destination rules, the quota and the usage
record, adds the provider's auth, and takes the secret out of what comes back."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import threading

import grpc
import pytest
from conftest import PROVIDERS, wait_for
from orgserver import ORG
from qpu_broker_client import (
    FailedPreconditionError,
    PermissionDeniedError,
    QpuToken,
    ResourceExhaustedError,
    TokenProvider,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from test_org_reach import OrgRig

from testsupport.fakes import FakeServer, json_reply


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
    return [json.loads(x) for x in rig.server.cli("usage", "--json").stdout.splitlines()]


def test_a_relay_tokens_secret_never_reaches_a_member_by_any_rpc(member_rig):
    # A relay token from the start (token add --relay): no member's daemon ever fetches its secret.
    member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                               token_type="organization", relay=True)
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
    rig = OrgRig(make_daemon, short_tmp, relay=True)
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
