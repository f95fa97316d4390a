"""Custom providers the org defines (`org-server provider define`): org tokens of them, relay and
cached, through Forward and exec sessions, with the org's definition only (a member's config that
defines the same name changes nothing for them); a redefinition or removal reaches members within
2 s; tokens of an undefined provider are refused. Real org server and daemons, strict fakes on
loopback HTTPS, a secret canary."""

from __future__ import annotations

import json
import secrets
import sys

import pytest
from conftest import wait_for
from qpu_broker.common.custom_providers import parse_definition
from qpu_broker.common.reach import Owner
from qpu_broker.providers import Schemes
from qpu_broker_client import QpuToken, QpuTokenType, TokenProvider
from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)

from testsupport.fakes import FakeServer, json_reply, make_ca
from testsupport.orgserver import OrgServer

OFFICIAL = "api.acme-quantum.example"
ORG_TOKEN = TokenProvider(custom={"acme": QpuToken("organization", name="Org Acme")})
# The org's definition: the key in X-Acme-Key, after "Key ".
DEFINITION = f"""
official_hosts = ["{OFFICIAL}"]
auth = "header"
header = "X-Acme-Key"
template = "Key {{token}}"
[session_env]
ACME_URL = "{{url}}"
ACME_KEY = "{{credential}}"
"""
# What an exec session's command runs: the SDK's way, the key from ACME_KEY in its own header.
SCRIPT = """
import os, urllib.request
req = urllib.request.Request(os.environ["ACME_URL"] + "/v1/jobs", headers={"X-Acme-Key": "Key " + os.environ["ACME_KEY"]})
print(urllib.request.urlopen(req).read().decode())
"""


class StrictAcme:
    """The provider's API: the real key, in the header and form the org's definition names now
    (`expect`), or 401; it records the credential headers it was sent."""

    def __init__(self, secret: str) -> None:
        self.expect = ("X-Acme-Key", "Key " + secret)
        self.secret = secret

    def __call__(self, seen):
        header, value = self.expect
        if seen.header(header) != value:
            return json_reply({"error": f"no valid {header}"}, 401)
        return json_reply({"jobs": [{"id": "job-1", "status": "COMPLETED"}]})


class CustomOrgRig:
    def __init__(self, make_daemon, root) -> None:
        self.canary = f"canary{secrets.token_hex(8)}"
        self.ca = make_ca(root / "ca")
        self.api = StrictAcme(self.canary)
        self.fake = FakeServer(self.api, self.ca)  # the org's allowed stand-in for the official host
        self.catcher = FakeServer(lambda seen: json_reply({"caught": True}), self.ca)  # the member's config names it
        self.server = OrgServer(root, self.ca).start()
        self.definition = root / "acme.toml"
        self.define(DEFINITION)
        self.org_cli("provider", "set", "acme", "--host", self.fake.netloc, "--ca-file", str(self.ca.ca_file))
        self.admin = self._daemon(make_daemon, "admin", "")
        # The member's own config defines the same name: other official hosts, a host of theirs, another
        # header. It applies to their personal acme tokens only; an exec session's endpoint is theirs too.
        self.member = self._daemon(make_daemon, "member", f"""
[providers.custom.acme]
official_hosts = ["acme.member-mirror.example"]
auth = "header"
header = "X-Member-Key"
template = "{{token}}"
hosts = ["{self.catcher.netloc}", "{self.fake.netloc}"]
ca_file = {json.dumps(str(self.ca.ca_file))}
endpoint = "https://{self.fake.netloc}"
""")
        for d, code in ((self.admin, self.server.admin_code), (self.member, self.server.add_user("bob"))):
            d.broker().org_login(self.server.address, code, ca_pem=self.ca.ca_file.read_bytes())
            wait_for(lambda d=d: d.broker().org_status().state == "connected", "the org push stream")

    def _daemon(self, make_daemon, name, config):
        d = make_daemon(name)
        d.home.mkdir(mode=0o700, parents=True)
        (d.home / "config.toml").write_text(config)
        return d.start()

    def org_cli(self, *args: str) -> str:
        r = self.server.cli(*args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def define(self, text: str) -> None:
        self.definition.write_text(text)
        self.org_cli("provider", "define", "acme", "--file", str(self.definition))

    def forward(self, url: str):
        return self.member.broker().forward("GET", url, provider="acme", qpu_tokens=ORG_TOKEN)

    def close(self) -> None:
        self.server.stop()
        self.fake.close()
        self.catcher.close()


@pytest.fixture
def custom_org(make_daemon, short_tmp):
    r = CustomOrgRig(make_daemon, short_tmp)
    yield r
    r.close()


def _relayed(rig: CustomOrgRig, relay: bool) -> None:
    """Until the member's daemon holds the token, in that mode (not being among the relay tokens is
    no news before the token itself has arrived)."""
    def heard() -> bool:
        b = rig.member.broker()
        held = any(t.name == "Org Acme" for t in b.qpu_token.get_all()[QpuTokenType.ORGANIZATION])
        return held and ("Org Acme" in b.org_status().relay_tokens) == relay
    wait_for(heard, "the member's daemon to hear the token and its mode")


def test_org_tokens_of_an_org_defined_provider_use_the_orgs_definition_only(custom_org):
    rig = custom_org
    rig.admin.broker().qpu_token.create(name="Org Acme", provider="acme", token=rig.canary,
                                        token_type="organization")  # relay: the default
    _relayed(rig, True)
    for mode in ("relay", "cached"):
        if mode == "cached":
            rig.org_cli("token", "cache", "Org Acme", "on")
            _relayed(rig, False)
        r = rig.forward(rig.fake.url("/v1/jobs"))
        assert r.status_code == 200, (mode, r.content)
        # The org's header and template, never the member's (X-Member-Key), whatever their config says.
        sent = rig.fake.seen[-1].headers
        assert ("X-Acme-Key", f"Key {rig.canary}") in sent and not any(k == "X-Member-Key" for k, _ in sent), mode
        # The member's config adds its own host to acme: an org token never goes there.
        with pytest.raises(PermissionDeniedError, match=rf"{rig.catcher.netloc} is an IP address, not one of acme's "
                           r"hosts, and is refused for this organization token"):
            rig.forward(rig.catcher.url("/v1/jobs"))
        # Nor to the official hosts of the member's own definition.
        with pytest.raises(PermissionDeniedError, match=r"acme.member-mirror.example:443 is not one of acme's hosts: "
                           rf"this organization token goes only to {OFFICIAL}; an org admin can allow more"):
            rig.forward("https://acme.member-mirror.example/v1/jobs")
        assert rig.catcher.seen == [], mode
    # A personal acme token of the member's is theirs: their definition, their hosts.
    rig.member.broker().qpu_token.create(name="mine", provider="acme", token="member-own-key")
    mine = TokenProvider(custom={"acme": QpuToken("personal", name="mine")})
    assert rig.member.broker().forward("GET", rig.catcher.url("/x"), provider="acme", qpu_tokens=mine).status_code == 200
    assert ("X-Member-Key", "member-own-key") in rig.catcher.seen[-1].headers
    for text in (rig.member.log(), rig.admin.log(), rig.server.log()):
        assert rig.canary not in text


def test_an_exec_session_with_an_org_custom_token(custom_org):
    rig = custom_org
    rig.admin.broker().qpu_token.create(name="Org Acme", provider="acme", token=rig.canary,
                                        token_type="organization")
    _relayed(rig, True)
    r = rig.member.cli("exec", "--org-token", "acme=Org Acme", "--", sys.executable, "-c",
                       SCRIPT + "\nprint('KEY=' + os.environ['ACME_KEY'])")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["jobs"][0]["status"] == "COMPLETED"
    assert r.stdout.splitlines()[1].startswith("KEY=qbs_")  # the org definition's variables, a placeholder
    assert ("X-Acme-Key", f"Key {rig.canary}") in rig.fake.seen[-1].headers
    assert rig.canary not in r.stdout + r.stderr + rig.member.log()


def test_a_redefinition_or_removal_reaches_members_within_2s(custom_org):
    rig = custom_org
    rig.admin.broker().qpu_token.create(name="Org Acme", provider="acme", token=rig.canary,
                                        token_type="organization", cached=True)
    _relayed(rig, False)
    assert rig.forward(rig.fake.url("/v1/jobs")).status_code == 200
    # Another header and form: the member's daemon (cached) sends it so from the next calls on.
    rig.api.expect = ("Authorization", f"Bearer {rig.canary}")
    rig.define(DEFINITION.replace('auth = "header"\nheader = "X-Acme-Key"\ntemplate = "Key {token}"',
                                  'auth = "bearer"'))
    wait_for(lambda: rig.forward(rig.fake.url("/v1/jobs")).status_code == 200, "the new definition", timeout=2)
    # Removed: every use of its tokens is refused, with one line; the token stays listed.
    rig.org_cli("provider", "undefine", "acme")

    def refused():
        try:
            rig.forward(rig.fake.url("/v1/jobs"))
        except FailedPreconditionError as exc:
            return str(exc)
        return None
    message = wait_for(refused, "the removal", timeout=2)  # from the admin's command's end, as other org changes
    assert message == ("the organization defines no provider 'acme' (any more), so its acme tokens cannot be used: "
                       "ask an org admin (qpu-broker org-server provider define acme)")
    assert [t.name for t in rig.member.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]] == ["Org Acme"]
    # And no new token of it: the admin's daemon passes the server's one line on.
    with pytest.raises(InvalidArgumentError, match=r"^'acme' is no provider this organization defines: an org admin "
                       r"defines it first with 'qpu-broker org-server provider define acme --file acme.toml'"):
        rig.admin.broker().qpu_token.create(name="Org Acme 2", provider="acme", token="x", token_type="organization")
    r = rig.admin.cli("token", "add", "q", "--type", "organization", "--provider", "quantinuum", input="x")
    assert r.returncode != 0 and "'quantinuum' is no provider this organization defines" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_bad_definition_file_is_one_line_naming_the_key(org, tmp_path):
    bad = tmp_path / "q.toml"
    for text, said in (
        ('official_hosts = ["a.example"]\nauth = "basic"', "q.toml.auth must be one of header, bearer"),
        ('official_hosts = ["a.example"]\nhosts = ["127.0.0.1:9"]', "q.toml: hosts is not part of a definition"),
        ('auth = "bearer"', "q.toml.official_hosts must name the provider's hosts"),
        ('official_hosts = ["a.example"]\ncolour = 1', "q.toml: unknown key colour"),
    ):
        bad.write_text(text)
        r = org.cli("provider", "define", "q", "--file", str(bad))
        assert r.returncode != 0 and said in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad.write_text('official_hosts = ["a.example"]')
    r = org.cli("provider", "define", "ibm", "--file", str(bad))
    assert r.returncode != 0 and "'ibm' is a built-in provider" in r.stderr
    r = org.cli("provider", "set", "q", "--host", "q.example")  # where an undefined provider's tokens go: no such thing
    assert r.returncode != 0 and "defines no provider 'q': define it first" in r.stderr
    r = org.cli("provider", "undefine", "q")
    assert r.returncode != 0 and "defines no custom provider 'q'" in r.stderr


def test_a_custom_providers_scheme_is_its_credential_owners():
    mine = parse_definition("acme", {"official_hosts": ["mine.example"]}, "config")
    theirs = parse_definition("acme", {"official_hosts": ["org.example"]}, "org")
    org: dict = {"acme": theirs}
    schemes = Schemes([mine], lambda: org)
    assert schemes.get("acme", Owner.CONFIG).hosts == ("mine.example",)
    assert schemes.get("acme", Owner.ORG).hosts == ("org.example",)
    assert schemes.get("ibm", Owner.ORG) is schemes.get("ibm", Owner.CONFIG)  # built-ins: one for all
    org["acme"] = parse_definition("acme", {"official_hosts": ["moved.example"]}, "org")
    assert schemes.get("acme", Owner.ORG).hosts == ("moved.example",)
    del org["acme"]
    assert schemes.get("acme", Owner.ORG) is None and schemes.get("acme", Owner.CONFIG).hosts == ("mine.example",)
