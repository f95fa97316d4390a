"""An org token goes only where its org says: a member's own config never widens it.

The member's config.toml is hostile: for every provider it adds a catcher host,
a plain-http catcher, its own CA and its own token endpoint. Each must receive
nothing from an org token, while the hosts, CA and token endpoint an org admin
set keep working.
"""

from __future__ import annotations

import json
import secrets

import pytest
from conftest import PROVIDERS, wait_for
from qpu_broker_client import (
    InvalidArgumentError,
    PermissionDeniedError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
    UnavailableError,
)

from testsupport.fakes import FakeServer, Reply, make_ca
from testsupport.hardware import start_hardware
from testsupport.orgserver import OrgServer

EXCHANGE_PATH = {"ibm": "/identity/token", "qctrl": "/", "fujitsu_quantum": "/"}


class OrgRig:
    def __init__(self, make_daemon, root, cached=True):
        self.canary = f"canary{secrets.token_hex(8)}"
        self.hw = start_hardware(root / "hw", self.canary)  # the provider fakes, on the org's CA
        member_ca = make_ca(root / "member-ca", "the member's own CA")
        caught = lambda seen: Reply(200, b"caught")
        self.catcher = FakeServer(caught, member_ca)  # only the member's config names it
        self.plain = FakeServer(caught)  # plain http, only in the member's config
        self.mitm = FakeServer(caught, member_ca)  # an org-allowed host, but with a cert only the member trusts
        self.server = OrgServer(root, self.hw.ca).start()
        for provider in PROVIDERS:
            args = ["provider", "set", provider, "--host", self.hw.servers[provider].netloc, "--host",
                    self.mitm.netloc, "--ca-file", str(self.hw.ca.ca_file)]
            if provider in EXCHANGE_PATH:
                args += ["--token-url", self.hw.servers[provider].url(EXCHANGE_PATH[provider])]
            r = self.server.cli(*args)
            assert r.returncode == 0, r.stderr
        self.admin = self._daemon(make_daemon, "admin", "")
        hostile = []
        for provider in PROVIDERS:
            hostile += [f"[providers.{provider}]", f"hosts = {json.dumps([self.catcher.netloc])}",
                        f"plain_http_hosts = {json.dumps([self.plain.netloc])}",
                        f"ca_file = {json.dumps(str(member_ca.ca_file))}"]
            if provider in EXCHANGE_PATH:
                hostile.append(f"token_url = {json.dumps(self.catcher.url(EXCHANGE_PATH[provider]))}")
        self.member = self._daemon(make_daemon, "member", "\n".join(hostile) + "\n")
        self._login(self.admin, self.server.admin_code)
        self._login(self.member, self.server.add_user("bob"))
        for provider in PROVIDERS:
            self.admin.broker().qpu_token.create(name=f"org-{provider}", provider=provider,
                                                 token=self.hw.secrets[provider], token_type="organization",
                                                 cached=cached)
        wait_for(lambda: len(self.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]) == len(PROVIDERS),
                 "the member's daemon to hold every org token")

    def _daemon(self, make_daemon, name, config):
        d = make_daemon(name)
        d.home.mkdir(mode=0o700, parents=True)
        (d.home / "config.toml").write_text(config)
        return d.start()

    def _login(self, d, key):
        # Through the client, not the CLI: the CLI's login has its own tests (test_org.py), and a
        # process start per login is most of a rig's set-up.
        d.broker().org_login(self.server.address, key, ca_pem=self.hw.ca.ca_file.read_bytes())
        wait_for(lambda: d.broker().org_status().state == "connected", "the org push stream")

    def forward(self, provider, url, **kw):
        tokens = TokenProvider(**{provider: QpuToken("organization", name=f"org-{provider}")})
        aws = {"region": "us-east-1", "service": "braket"} if provider == "aws" else {}
        return self.member.broker().forward("GET", url, provider=provider, qpu_tokens=tokens, **aws, **kw)

    def nothing_caught(self):
        assert self.catcher.seen == [] and self.plain.seen == [] and self.mitm.seen == []

    def no_canary_at_rest(self):
        """No org secret in clear in a log or a file, on the member's, the admin's or the server's side."""
        for log in (self.member.log(), self.admin.log(), self.server.log()):
            assert self.canary not in log
        for root in (self.member.home, self.admin.home, self.server.data):
            for path in root.rglob("*"):
                if path.is_file():
                    assert self.canary.encode() not in path.read_bytes(), path

    def close(self):
        self.server.stop()
        self.hw.close()
        for s in (self.catcher, self.plain, self.mitm):
            s.close()


@pytest.fixture
def org_rig(make_daemon, short_tmp):
    r = OrgRig(make_daemon, short_tmp)
    yield r
    r.close()


def test_member_config_never_widens_an_org_token(org_rig):
    r = org_rig
    for provider in PROVIDERS:
        # hosts / plain_http_hosts: the member's own hosts are refused, naming the org as who decides.
        for url in (r.catcher.url("/x"), r.plain.url("/x")):
            with pytest.raises(PermissionDeniedError, match="organization token") as err:
                r.forward(provider, url)
            assert "org admin" in str(err.value)
        # ca_file: a host the org allows, answered with a certificate only the member's CA signs
        # (the member intercepting an official host) fails TLS before any request is sent.
        with pytest.raises(UnavailableError):
            r.forward(provider, r.mitm.url("/api/x"))  # under /api/: an org IBM bearer goes nowhere else
        # token_url: the exchange goes to the org's endpoint, never the member's.
        assert r.forward(provider, r.hw.url(provider)).status_code == 200, provider
        r.nothing_caught()
    assert r.hw.ibm.exchanges == 1 and r.hw.qctrl.exchanges == 1 and r.hw.fqc.refreshes == 1
    # Sign (aws) obeys the same reach.
    aws = TokenProvider(aws=QpuToken("organization", name="org-aws"))
    with pytest.raises(PermissionDeniedError):
        r.member.broker().sign("GET", r.catcher.url("/x"), qpu_tokens=aws, region="us-east-1", service="braket")
    assert r.member.broker().sign("GET", r.hw.url("aws"), qpu_tokens=aws, region="us-east-1", service="braket")
    r.nothing_caught()
    r.no_canary_at_rest()


def test_org_secret_in_a_luna_body_goes_only_where_the_org_allows_luna(org_rig):
    r = org_rig
    b = r.member.broker()
    body = json.dumps({"qpu_tokens": {}}).encode()
    # The member's own Luna key (personal) may go to the member's own Luna host...
    b.qpu_token.create(name="my-luna", provider="luna", token="member-own-luna-key")
    mine = TokenProvider(luna=QpuToken("personal", name="my-luna"))
    assert b.forward("POST", r.catcher.url("/v1/solve"), provider="luna", body=body, qpu_tokens=mine).content == b"caught"
    assert len(r.catcher.seen) == 1
    # ...but not with an org IBM secret in the body: then the org's Luna settings decide.
    with_org = TokenProvider(luna=QpuToken("personal", name="my-luna"), ibm=QpuToken("organization", name="org-ibm"))
    with pytest.raises(PermissionDeniedError, match="organization token"):
        b.forward("POST", r.catcher.url("/v1/solve"), provider="luna", body=body, qpu_tokens=with_org)
    assert len(r.catcher.seen) == 1 and r.canary not in repr(r.catcher.seen)
    # Where the org allows Luna, the org secret goes inline, on that hop only.
    r.hw.luna_expect.update({"ibm": {"source": "inline", "token": r.hw.secrets["ibm"]}})
    org_luna = TokenProvider(luna=QpuToken("organization", name="org-luna"), ibm=QpuToken("organization", name="org-ibm"))
    ok = b.forward("POST", r.hw.url("luna"), provider="luna", body=body, qpu_tokens=org_luna)
    assert ok.status_code == 200, ok.content
    r.no_canary_at_rest()


def test_a_luna_answer_that_echoes_the_body_shows_no_stored_secret(org_rig):
    """Luna names its input in a 422: the secrets the daemon put in the body are taken out of the
    answer for every caller (a member never reads an org secret, nor anyone a stored one)."""
    r = org_rig
    def echoed(seen):  # the body in a 422's detail, a token in a header, and Luna's own key
        body = json.loads(seen.body)
        return Reply(422, json.dumps({"detail": [{"msg": f"bad key {seen.header('Luna-API-Key')}", "input": body}]}).encode(),
                     [("Content-Type", "application/json"), ("X-Echo", body["qpu_tokens"]["ibm"]["token"])])

    echo = FakeServer(echoed, r.hw.ca)
    try:
        res = r.server.cli("provider", "set", "luna", "--host", r.hw.servers["luna"].netloc, "--host", echo.netloc,
                           "--ca-file", str(r.hw.ca.ca_file))
        assert res.returncode == 0, res.stderr
        b = r.member.broker()
        b.qpu_token.create(name="my-dwave", provider="dwave", token="member-own-dwave-secret")
        body = json.dumps({"qpu_tokens": {"fujitsu": {"source": "organization", "name": "org-fujitsu"}},
                           "mine": "inline-kept"}).encode()
        tokens = TokenProvider(luna=QpuToken("organization", name="org-luna"),
                               ibm=QpuToken("organization", name="org-ibm"),
                               dwave=QpuToken("personal", name="my-dwave"),
                               ionq=QpuToken("inline", token="callers-own-inline"))

        def answer():
            return b.forward("POST", echo.url("/v1/solve"), provider="luna", body=body, qpu_tokens=tokens)

        got = wait_for(lambda: _or_none(answer), "the org's Luna hosts to arrive by push")
        assert got.status_code == 422
        sent = json.loads(echo.seen[-1].body)["qpu_tokens"]
        assert sent["ibm"]["token"] == r.hw.secrets["ibm"]  # the hop itself carried the secrets
        shown = got.content.decode() + repr(got.headers)
        for secret in (r.hw.secrets["ibm"], r.hw.secrets["fujitsu"], r.hw.secrets["luna"], "member-own-dwave-secret",
                       r.canary):
            assert secret not in shown
        assert shown.count("[redacted by qpu-broker]") == 5  # three in the body, Luna's key, the header
        assert "callers-own-inline" in shown and "inline-kept" in shown  # what the caller sent is theirs
        r.no_canary_at_rest()
        assert "member-own-dwave-secret" not in r.member.log()
    finally:
        echo.close()


def _or_none(call):
    try:
        return call()
    except PermissionDeniedError:
        return None


def _reaches(r, provider, url) -> bool:
    try:
        return r.forward(provider, url).status_code == 200
    except PermissionDeniedError:
        return False


def test_an_admins_token_hosts_and_org_settings_arrive_by_push(org_rig):
    r = org_rig
    extra = FakeServer(lambda seen: Reply(200, b"extra"), r.hw.ca)
    try:
        with pytest.raises(PermissionDeniedError):
            r.forward("ionq", extra.url("/x"))
        # Org-wide: set by the admin on the server's data dir, pushed to the running daemon.
        res = r.server.cli("provider", "set", "ionq", "--host", r.hw.servers["ionq"].netloc, "--host", extra.netloc,
                           "--ca-file", str(r.hw.ca.ca_file))
        assert res.returncode == 0, res.stderr

        wait_for(lambda: _reaches(r, "ionq", extra.url("/x")), "the org-wide setting to arrive by push")
        with pytest.raises(PermissionDeniedError):
            r.forward("dwave", extra.url("/x"))  # widened for ionq only
        # Per token: one dwave token may reach the extra host, the org's other tokens may not.
        res = r.server.cli("token", "set-reach", "org-dwave", "--host", extra.netloc, "--ca-file", str(r.hw.ca.ca_file))
        assert res.returncode == 0, res.stderr

        wait_for(lambda: _reaches(r, "dwave", extra.url("/x")), "the token's own hosts to arrive by push")
        with pytest.raises(PermissionDeniedError):
            r.forward("fujitsu", extra.url("/x"))
        listed = r.server.cli("token", "list", "--json")
        assert extra.netloc in listed.stdout and r.canary not in listed.stdout
        r.nothing_caught()
    finally:
        extra.close()


def test_nothing_derived_from_an_org_secret_outlives_the_membership(org_rig):
    """An exchanged bearer is cached per token, but never across a drop (removal, revoked key, logout)."""
    r = org_rig
    assert r.forward("ibm", r.hw.url("ibm")).status_code == 200
    assert r.forward("ibm", r.hw.url("ibm")).status_code == 200
    assert r.hw.ibm.exchanges == 1  # cached while the membership holds
    rotated = r.server.cli("user", "rotate-key", "bob")
    assert rotated.returncode == 0, rotated.stderr
    wait_for(lambda: r.member.broker().org_status().state == "key-revoked", "the revoked key to be noticed")
    r._login(r.member, rotated.stdout.strip())
    wait_for(lambda: len(r.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]) == len(PROVIDERS),
             "the org tokens again")
    assert r.forward("ibm", r.hw.url("ibm")).status_code == 200
    assert r.hw.ibm.exchanges == 2  # the old bearer was dropped with the old membership


def test_sign_signs_only_the_urls_host_and_scope(org_rig):
    r = org_rig
    aws = TokenProvider(aws=QpuToken("organization", name="org-aws"))
    b = r.member.broker()
    braket = "https://braket.us-east-1.amazonaws.com/?Action=CreateAccessKey&UserName=alice&Version=2010-05-08"
    for region, service in (("us-east-1", "iam"), ("eu-west-2", "braket")):
        with pytest.raises(InvalidArgumentError, match="is the AWS service braket in us-east-1"):
            b.sign("GET", braket, headers={"Host": "iam.amazonaws.com"}, qpu_tokens=aws, region=region, service=service)

    def pair():  # the same second, so the two signatures are comparable
        with_host = b.sign("GET", braket, headers={"Host": "iam.amazonaws.com"}, qpu_tokens=aws)
        without = b.sign("GET", braket, qpu_tokens=aws)
        return (with_host, without) if with_host["X-Amz-Date"] == without["X-Amz-Date"] else None

    with_host, without = wait_for(pair, "two signatures within one second")
    assert with_host["Authorization"] == without["Authorization"]  # the Host header was not signed


def test_an_ibm_bearer_never_reaches_iam_and_an_org_one_only_the_sdks_lookups(org_rig):
    """With IBM's bearer, IAM mints lasting API keys and Global Search tags: a member's org token
    must not buy either, and nobody's bearer goes to IAM but through the daemon's own exchange."""
    r = org_rig
    b = r.member.broker()
    b.qpu_token.create(name="my-ibm", provider="ibm", token="member-own-ibm-key")
    exchanges = r.hw.ibm.exchanges
    for kind, name in (("organization", "org-ibm"), ("personal", "my-ibm")):
        with pytest.raises(PermissionDeniedError, match="key exchange"):
            b.forward("POST", "https://iam.cloud.ibm.com/v1/apikeys", provider="ibm", body=b'{"name": "persist"}',
                      qpu_tokens=TokenProvider(ibm=QpuToken(kind, name=name)))
    org = TokenProvider(ibm=QpuToken("organization", name="org-ibm"))
    # The org's own token URL host (an admin had to allow it for the exchange): its IAM API too.
    for method, url in (("POST", r.hw.url("ibm", "/v1/apikeys")), ("POST", r.hw.url("ibm", "/api/../v1/apikeys")),
                        ("POST", "https://api.global-search-tagging.cloud.ibm.com/v3/tags/attach"),
                        ("POST", "https://api.global-search-tagging.cloud.ibm.com/v3/resources/search/../../tags"),
                        ("DELETE", "https://globalcatalog.cloud.ibm.com/api/v1/x")):
        with pytest.raises(PermissionDeniedError, match="only with the calls"):
            b.forward(method, url, provider="ibm", qpu_tokens=org)
    assert r.hw.ibm.exchanges == exchanges  # refused before any key was traded
    r.nothing_caught()
    r.no_canary_at_rest()
    assert "member-own-ibm-key" not in r.member.log()
