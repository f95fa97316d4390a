"""Org tokens are relay by default, and the tutorial's org flow through Luna keeps working: a
Luna request whose qpu_tokens name relay org tokens goes to Luna through the org server, which
fills those entries with the secrets (Luna is the one party that receives them). The member's
daemon never holds them: its memory is read through /proc as root after each use."""

from __future__ import annotations

import json
import os
import secrets
import sys

import grpc
import httpx
import pytest
from conftest import wait_for
from luna_quantum.client.schemas.qpu_token.qpu_token import QpuToken as LunaQpuToken
from luna_quantum.client.schemas.qpu_token.qpu_token import QpuTokenSource as LunaSource
from luna_quantum.client.schemas.qpu_token.qpu_token import (
    TokenProvider as LunaTokenProvider,
)
from luna_quantum.client.schemas.qpu_token.token_provider import RestAPITokenProvider
from qpu_broker_client import QpuToken, QpuTokenType, TokenProvider
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from qpu_broker_client.transports.httpx_transport import BrokerTransport
from test_sdks_under_exec import LUNA_SCRIPT

from testsupport.fakes import FakeServer, Reply, Seen, json_reply
from testsupport.hardware import start_hardware, write_config
from testsupport.orgserver import OrgServer
from testsupport.sdk_fakes import LunaPlatform

ORG_IBM = "My Organization IBM Token"  # the tutorial's name
REDACTED = "[redacted by qpu-broker]"


class LunaOrgRig:
    """An org server whose org allows the Luna and provider fakes; an admin's daemon and a
    member's (bob), whose own config allows the fakes for their personal tokens."""

    def __init__(self, make_daemon, root):
        self.canary = f"canary{secrets.token_hex(8)}"
        self.hw = start_hardware(root / "hw", self.canary)
        self.org_ibm = f"{self.canary}-org-ibm"  # the org's IBM key: nobody but the server and Luna sees it
        self.server = OrgServer(root, self.hw.ca).start()
        for provider in ("luna", "ibm", "fujitsu"):
            r = self.server.cli("provider", "set", provider, "--host", self.hw.servers[provider].netloc,
                                "--ca-file", str(self.hw.ca.ca_file))
            assert r.returncode == 0, r.stderr
        self.admin = self._daemon(make_daemon, "admin", self.server.admin_code)
        self.member = self._daemon(make_daemon, "member", self.server.add_user("bob"))
        self.member.broker().qpu_token.create(name="my-luna", provider="luna", token=self.hw.secrets["luna"])
        self.seen: list[dict] = []
        self.luna_keys = {self.hw.secrets["luna"]}  # the member's own Luna key, and any the org adds
        self.hw.servers["luna"].handler = self._luna

    def _daemon(self, make_daemon, name, code):
        d = make_daemon(name)
        write_config(d.home, self.hw)
        d.start()
        d.broker().org_login(self.server.address, code, ca_pem=self.hw.ca.ca_file.read_bytes())
        wait_for(lambda: d.broker().org_status().state == "connected", "the org push stream")
        return d

    def _luna(self, seen: Seen) -> Reply:
        """Luna: checks its key, keeps the body, and echoes its input (as its 422s do)."""
        if seen.header("Luna-API-Key") not in self.luna_keys:
            return json_reply({"detail": "Invalid API key"}, 401)
        doc = json.loads(seen.body)
        self.seen.append(doc)
        return json_reply({"id": f"solution-{len(self.seen)}", "input": doc, "key": seen.header("Luna-API-Key")})

    def records(self, token: str) -> list[dict]:
        rows = [json.loads(x) for x in self.server.cli("usage", "--json").stdout.splitlines()]
        return [r for r in rows if r["member"] == "bob" and r["token_name"] == token]

    def never_in_the_members_daemon(self, *values: str) -> None:
        for value in values:
            assert value not in self.member.log()
            if os.geteuid() == 0:  # root reads its memory (the daemon is non-dumpable to anyone else)
                from test_memory import _copies

                assert _copies(self.member.proc.pid, value.encode()) == [], value

    def close(self):
        self.server.stop()
        self.hw.close()


@pytest.fixture
def luna_rig(make_daemon, short_tmp):
    rig = LunaOrgRig(make_daemon, short_tmp)
    yield rig
    rig.close()


def test_the_tutorials_org_flow_works_verbatim_with_a_default_relay_token(luna_rig):
    rig = luna_rig
    # The tutorial, as an administrator (no mode chosen: the default).
    ls = rig.admin.broker()
    organization_token = ls.qpu_token.create(
        name="My Organization IBM Token",
        provider="ibm",
        token=rig.org_ibm,
        token_type="organization"
    )
    organization_token = ls.qpu_token.get(qpu_token_id=organization_token.id, token_type="organization")
    assert str(organization_token) == f"id={organization_token.id!r} name='My Organization IBM Token' provider='ibm'"
    assert organization_token.mode == "relay"
    # A member sees it, and uses it through Luna as the tutorial's solution.create does.
    member = rig.member.broker()
    listed = wait_for(lambda: member.qpu_token.get_all()[QpuTokenType.ORGANIZATION], "the member's daemon to see it")
    assert [(t.name, t.mode) for t in listed] == [(ORG_IBM, "relay")]
    assert member.org_status().relay_tokens == (ORG_IBM,) and member.org_status().cached_tokens == ()
    body = {"optimization_id": "o1", "solver_name": "QAOA", "provider": "ibm",
            "solver_parameters": {"backend": "least_busy"}}
    job = member.forward("POST", rig.hw.url("luna", "/v1/solutions"), provider="luna", body=json.dumps(body).encode(),
                         qpu_tokens=TokenProvider(luna=QpuToken(source="personal", name="my-luna"),
                                                  ibm=QpuToken(source="organization", name="My Organization IBM Token")))
    assert job.status_code == 200, job.content
    # Luna is the one party that received the secret, inline, in its wire shape...
    assert rig.seen[-1]["qpu_tokens"] == {"ibm": {"source": "inline", "token": rig.org_ibm}}
    assert {k: v for k, v in rig.seen[-1].items() if k != "qpu_tokens"} == body
    # ...and what it echoed comes back without it; the member's own Luna key is taken out too.
    assert job.json()["input"]["qpu_tokens"]["ibm"]["token"] == REDACTED and job.json()["key"] == REDACTED
    assert rig.org_ibm not in job.content.decode() + repr(job.headers)
    # The org's record has the use, made by the server itself.
    [used] = wait_for(lambda: rig.records(ORG_IBM), "the server's record")
    assert (used["outcome"], used["status"], used["host"]) == ("answered", 200, rig.hw.servers["luna"].netloc)
    rig.never_in_the_members_daemon(rig.org_ibm)
    assert rig.org_ibm not in rig.server.log()
    # The tutorial's admin verbs on it.
    ls.qpu_token.delete(qpu_token_id=organization_token.id, token_type="organization")
    wait_for(lambda: member.qpu_token.get_all()[QpuTokenType.ORGANIZATION] == [], "the member's daemon to drop it")


def test_luna_1x_objects_and_transports_and_a_mix_of_every_kind_of_token(luna_rig, monkeypatch):
    """The server fills only the relay entries: the member's daemon fills its personal, inline and
    cached tokens as before, and each side takes what it put in out of Luna's answer."""
    rig = luna_rig
    admin = rig.admin.broker().qpu_token
    admin.create(name=ORG_IBM, provider="ibm", token=rig.org_ibm, token_type="organization")
    org_luna = f"{rig.canary}-org-luna"
    rig.luna_keys.add(org_luna)  # the org's Luna key: a relay token too
    admin.create(name="Org Luna", provider="luna", token=org_luna, token_type="group")
    admin.create(name="Org Q-CTRL", provider="qctrl", token=rig.hw.secrets["qctrl"], token_type="organization",
                 cached=True)
    member = rig.member.broker()
    member.qpu_token.create(name="my-dwave", provider="dwave", token=rig.hw.secrets["dwave"])
    wait_for(lambda: member.org_status().cached_tokens == ("Org Q-CTRL",)
             and len(member.org_status().relay_tokens) == 2, "the member's daemon to know the three")
    # luna-quantum 1.x builds the body from its own TokenProvider (group tokens by name); our httpx
    # transport sends it, with the caller's own fields beside.
    in_body = LunaTokenProvider(ibm=LunaQpuToken(source=LunaSource.GROUP, name=ORG_IBM),
                                qctrl=LunaQpuToken(source=LunaSource.GROUP, name="Org Q-CTRL"))
    body = {"solver_name": "SA", "qpu_tokens": RestAPITokenProvider.from_sdk_token_provider(in_body).model_dump(mode="json")}
    body["qpu_tokens"]["mine"] = {"kept": True}
    fields = TokenProvider(luna=QpuToken("organization", name="Org Luna"), dwave=QpuToken("personal", name="my-dwave"),
                           ionq=QpuToken("inline", token="callers-own-inline"))
    with httpx.Client(transport=BrokerTransport("luna", fields, broker=rig.member.broker())) as http:
        answer = http.post(rig.hw.url("luna", "/v1/solve-jobs"), json=body)
    assert answer.status_code == 200, answer.content
    sent = rig.seen[-1]["qpu_tokens"]
    assert sent["ibm"] == {"source": "inline", "token": rig.org_ibm}  # filled by the org server
    assert sent["qctrl"] == {"source": "inline", "token": rig.hw.secrets["qctrl"]}  # by the member's daemon
    assert sent["dwave"]["token"] == rig.hw.secrets["dwave"] and sent["ionq"]["token"] == "callers-own-inline"
    assert sent["mine"] == {"kept": True} and sent["aws"] is None  # what is no reference stays as it was
    shown = answer.text + repr(answer.headers)
    for secret in (rig.org_ibm, org_luna, rig.hw.secrets["qctrl"], rig.hw.secrets["dwave"]):
        assert secret not in shown
    assert shown.count(REDACTED) == 4 and "callers-own-inline" in shown  # what the caller sent is theirs
    # Each org token's use is in the org's record: the relay ones by the server, the cached one by the daemon.
    for name in (ORG_IBM, "Org Luna", "Org Q-CTRL"):
        assert [r["outcome"] for r in wait_for(lambda n=name: rig.records(n), f"the record of {name}")] == ["answered"]
    # luna-quantum's own TokenProvider as qpu_tokens, the member's own Luna key from LUNA_API_KEY as its
    # users set it (inline: the org server passes it on for this call).
    monkeypatch.setenv("LUNA_API_KEY", rig.hw.secrets["luna"])
    reply = member.forward("POST", rig.hw.url("luna", "/v1/solve-jobs"), provider="luna", body=b'{"solver_name": "SA"}',
                           qpu_tokens=LunaTokenProvider(ibm=LunaQpuToken(source=LunaSource.GROUP, name=ORG_IBM)))
    assert reply.status_code == 200 and rig.seen[-1]["qpu_tokens"]["ibm"]["token"] == rig.org_ibm
    assert rig.org_ibm not in reply.content.decode()
    rig.never_in_the_members_daemon(rig.org_ibm, org_luna)


def test_an_exec_session_runs_luna_quantum_with_an_org_relay_token(luna_rig, short_tmp):
    rig = luna_rig
    rig.admin.broker().qpu_token.create(name=ORG_IBM, provider="ibm", token=rig.org_ibm, token_type="organization")
    wait_for(lambda: ORG_IBM in rig.member.broker().org_status().relay_tokens, "the member's daemon to know it")
    luna = LunaPlatform(lambda: rig.hw.secrets["luna"])
    rig.hw.servers["luna"].handler = luna
    home = short_tmp / "empty-home"
    home.mkdir(mode=0o700)
    report = "\nimport json as _j, os as _o\nprint('ENV=' + _j.dumps(dict(_o.environ)))\n"
    r = rig.member.cli("exec", "--token", "luna=my-luna", "--org-token", f"ibm={ORG_IBM}", "--", sys.executable,
                       "-c", LUNA_SCRIPT + report, env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    out = [line for line in r.stdout.splitlines() if not line.startswith("ENV=")]
    assert out == ["status: DONE result: {'counts': {'00': 512, '11': 512}}"], r.stdout + r.stderr
    child_env = json.loads(next(line[4:] for line in r.stdout.splitlines() if line.startswith("ENV=")))
    assert child_env["LUNA_IBM_TOKEN"].startswith("qbs_")  # the SDK copied a placeholder into its body
    sent = luna.circuits[0]["qpu_tokens"]
    assert sent["ibm"] == {"source": "inline", "token": rig.org_ibm}, sent
    RestAPITokenProvider.model_validate(sent)  # Luna's own model (extra="forbid") takes it
    assert rig.org_ibm not in r.stdout + r.stderr
    assert wait_for(lambda: rig.records(ORG_IBM), "the server's record")[0]["outcome"] == "answered"
    rig.never_in_the_members_daemon(rig.org_ibm)


def test_a_members_own_client_gets_the_luna_hop_to_fill_only_relay_tokens_it_may_use(luna_rig):
    """RelayForward's Luna fields from a member's own gRPC client: the server fills only entries it
    was asked to, with relay tokens the member may use, for Luna, where the org's Luna settings allow."""
    rig = luna_rig
    admin = rig.admin.broker().qpu_token
    admin.create(name=ORG_IBM, provider="ibm", token=rig.org_ibm, token_type="organization")
    admin.create(name="Org Fujitsu", provider="fujitsu", token=rig.hw.secrets["fujitsu"], token_type="organization",
                 cached=True)
    stub, md = rig.server.client(rig.server.code_for("bob"))
    ids = {t.name: t.id for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens}
    url = rig.hw.url("luna", "/v1/solve-jobs")
    catcher = FakeServer(lambda seen: Reply(200, b"caught"), rig.hw.ca)  # an https host the org never allowed
    try:
        def relay(code, *, provider="luna", fills=None, key=b"member-luna-key", token_id="", body=None, to=url):
            request = org_pb2.RelayForwardRequest(
                token_id=token_id, provider=provider, method="POST", url=to, luna_api_key=key,
                luna_qpu_tokens=fills if fills is not None else {"ibm": ids[ORG_IBM]},
                body=json.dumps(body or {"qpu_tokens": {}}).encode())
            with pytest.raises(grpc.RpcError) as caught:
                stub.RelayForward(request, metadata=md)
            assert caught.value.code() is code, caught.value.details()
            assert rig.org_ibm not in caught.value.details()
            return caught.value.details()

        assert "names a stored token" in relay(grpc.StatusCode.INVALID_ARGUMENT, body={
            "qpu_tokens": {"fujitsu": {"source": "organization", "name": "Org Fujitsu"}}})
        assert "not a relay token" in relay(grpc.StatusCode.FAILED_PRECONDITION, fills={"fujitsu": ids["Org Fujitsu"]})
        assert "for Luna requests only" in relay(grpc.StatusCode.INVALID_ARGUMENT, provider="ibm")
        relay(grpc.StatusCode.INVALID_ARGUMENT, fills={"luna": ids[ORG_IBM]})
        relay(grpc.StatusCode.INVALID_ARGUMENT, fills={"aws_access_key": ids[ORG_IBM]})
        relay(grpc.StatusCode.INVALID_ARGUMENT, key=b"")  # neither a relay token nor a key of one's own
        relay(grpc.StatusCode.NOT_FOUND, fills={"ibm": "0" * 24})
        relay(grpc.StatusCode.PERMISSION_DENIED, to=catcher.url("/v1/solve-jobs"))
        assert rig.seen == [] and catcher.seen == []
        assert [r["outcome"] for r in rig.records(ORG_IBM)] == ["refused-destination"]
    finally:
        catcher.close()
