"""Providers from config (`[providers.custom.NAME]`): a real SDK (general-superstaq) running an
unchanged script under `qpu-broker exec`, Forward with a header template and with OAuth client
credentials, the destination rules, and the config's errors. Real daemon, fakes on loopback HTTPS."""

from __future__ import annotations

import json
import pathlib
import secrets
import sys

import pytest
from qpu_broker.common.config import load_config
from qpu_broker_client import QpuToken, TokenProvider
from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)

from testsupport.custom_fakes import ClientCredentialsServer, SuperstaqApi
from testsupport.fakes import FakeServer, make_ca

# general-superstaq's own quick start (0.5.70): Service() reads SUPERSTAQ_API_KEY and
# SUPERSTAQ_REMOTE_HOST; a QUBO is submitted and its solutions read back.
SUPERSTAQ_SCRIPT = """
import general_superstaq as gss

service = gss.Service()
print("balance:", service.get_balance())
print("solutions:", service.submit_qubo({("a",): -1.0, ("b",): -1.0, ("a", "b"): 2.0}, method="bruteforce"))
"""
REPORT = "\nimport json as _j, os as _o\nprint('ENV=' + _j.dumps(dict(_o.environ)))\n"


def _config(ss: FakeServer, acme: FakeServer, ca_file: pathlib.Path) -> str:
    ca = json.dumps(str(ca_file))
    return f"""
[providers.custom.superstaq]
official_hosts = ["superstaq.infleqtion.com", "superstaq-prod.infleqtion.com"]
auth = "header"
header = "Authorization"
template = "{{token}}"
hosts = ["{ss.netloc}"]
ca_file = {ca}
endpoint = "https://{ss.netloc}"
[providers.custom.superstaq.session_env]
SUPERSTAQ_REMOTE_HOST = "{{url}}"
SUPERSTAQ_API_KEY = "{{credential}}"

[providers.custom.acme]
official_hosts = ["api.acme-quantum.example", "auth.acme-quantum.example"]
auth = "client_credentials"
official_token_url = "https://auth.acme-quantum.example/oauth/token"
hosts = ["{acme.netloc}"]
ca_file = {ca}
token_url = "https://{acme.netloc}/oauth/token"
"""


@pytest.fixture
def custom_rig(make_daemon, short_tmp):
    canary = f"canary{secrets.token_hex(8)}"
    ca = make_ca(short_tmp / "ca")
    keys = {"superstaq": f"{canary}-ss", "acme": (f"client-{canary}", f"{canary}-oauth-secret")}
    superstaq, oauth = SuperstaqApi(lambda: keys["superstaq"]), ClientCredentialsServer(lambda: keys["acme"])
    ss, acme = FakeServer(superstaq, ca), FakeServer(oauth, ca)
    d = make_daemon()
    d.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (d.home / "config.toml").write_text(_config(ss, acme, ca.ca_file))
    d.start()
    assert d.cli("token", "add", "my-ss", "--provider", "superstaq", input=keys["superstaq"]).returncode == 0
    d.broker().qpu_token.create(name="my-acme", provider="acme", token=":".join(keys["acme"]))
    yield d, canary, superstaq, oauth, ss, acme
    ss.close()
    acme.close()


def test_superstaq_sdk_runs_unchanged_under_exec(custom_rig, short_tmp):
    d, canary, superstaq, _, _, _ = custom_rig
    home = short_tmp / "empty-home"
    home.mkdir(mode=0o700)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local/share")}  # no key file of the SDK's anywhere
    r = d.cli("exec", "--token", "superstaq=my-ss", "--", sys.executable, "-c", SUPERSTAQ_SCRIPT + REPORT, env=env)
    assert r.returncode == 0, r.stderr
    out = [line for line in r.stdout.splitlines() if not line.startswith("ENV=")]
    child_env = json.loads(next(line[4:] for line in r.stdout.splitlines() if line.startswith("ENV=")))
    assert out == ["balance: 1,234.50 credits", "solutions: [{'a': 0, 'b': 1}, {'a': 1, 'b': 0}]"], out
    assert superstaq.qubos[0]["method"] == "bruteforce"  # the real key carried the submission
    assert child_env["SUPERSTAQ_API_KEY"].startswith("qbs_")
    assert child_env["SUPERSTAQ_REMOTE_HOST"].startswith("http://127.0.0.1:")
    for text in (json.dumps(child_env), r.stdout, r.stderr, d.log()):
        assert canary not in text


def test_forward_with_a_header_template_and_the_destination_rules(custom_rig):
    d, canary, _, _, ss, _ = custom_rig
    b = d.broker()
    tokens = TokenProvider(custom={"superstaq": QpuToken("personal", name="my-ss")})
    # The client's own Authorization is dropped; the daemon adds the template's.
    r = b.forward("GET", ss.url("/v0.2.0/balance"), provider="superstaq", qpu_tokens=tokens,
                  headers={"Authorization": "stolen?"})
    assert r.status_code == 200 and json.loads(r.content) == {"balance": 1234.5}
    assert [h for h in ss.seen[-1].headers if h[0].lower() == "authorization"] == [("Authorization", f"{canary}-ss")]
    with pytest.raises(PermissionDeniedError, match=r"evil.example:443 is not one of superstaq's hosts: superstaq "
                       r"credentials go only to superstaq.infleqtion.com, superstaq-prod.infleqtion.com; add it to "
                       r"\[providers.custom.superstaq\] hosts in your config"):
        b.forward("GET", "https://evil.example/v0.2.0/balance", provider="superstaq", qpu_tokens=tokens)
    with pytest.raises(PermissionDeniedError, match="plain http"):
        b.forward("GET", f"http://{ss.netloc}/v0.2.0/balance", provider="superstaq", qpu_tokens=tokens)
    with pytest.raises(FailedPreconditionError, match=r"TokenProvider\(custom=\{'superstaq'"):
        b.forward("GET", ss.url("/v0.2.0/balance"), provider="superstaq")
    # Another provider's token is not a superstaq one.
    with pytest.raises(InvalidArgumentError, match="'my-acme' is a acme token"):
        b.forward("GET", ss.url("/v0.2.0/balance"), provider="superstaq",
                  qpu_tokens=TokenProvider(custom={"superstaq": QpuToken("personal", name="my-acme")}))


def test_forward_with_oauth_client_credentials_exchanges_once(custom_rig):
    d, canary, _, oauth, _, acme = custom_rig
    b = d.broker()
    tokens = TokenProvider(custom={"acme": QpuToken("personal", name="my-acme")})
    for _ in range(2):
        r = b.forward("GET", acme.url("/v1/jobs"), provider="acme", qpu_tokens=tokens)
        assert r.status_code == 200 and json.loads(r.content)["jobs"][0]["status"] == "COMPLETED"
    assert oauth.exchanges == 1  # the bearer is cached, as IBM's is
    assert canary not in d.log()


def test_unknown_and_shadowing_providers_are_refused(custom_rig):
    d, *_ = custom_rig
    with pytest.raises(InvalidArgumentError, match=r"unknown provider 'quantinuum'.*\[providers.custom.quantinuum\]"):
        d.broker().qpu_token.create(name="q", provider="quantinuum", token="x")
    r = d.cli("token", "add", "q", "--provider", "quantinuum", input="x")
    assert r.returncode != 0 and "[providers.custom.quantinuum]" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("table", "message"), [
    ('[providers.custom.ibm]\nofficial_hosts = ["a.example"]', r"providers.custom.ibm: 'ibm' is a built-in provider"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\nauth = "basic"', r"providers.custom.q.auth must be one of"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\ntemplate = "Bearer"', r"template must hold \{token\}"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\ncolour = 1', r"providers.custom.q: unknown key colour"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example:8443"]', r"official_hosts: 'a.example:8443'"),
    ('[providers.custom.q]\nauth = "bearer"', r"official_hosts must name"),
    (('[providers.custom.q]\nofficial_hosts = ["a.example"]\nauth = "client_credentials"\n'
      'official_token_url = "https://elsewhere.example/token"'), r"official_token_url must be an https:// URL on one"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\n[providers.custom.q.session_env]\nK = "{secret}"',
     r"session_env.K names secret"),
    ('[providers.q]\nhosts = []', r"unknown provider \[providers.q\].*\[providers.custom.q\]"),
])
def test_a_bad_custom_table_is_one_error_naming_the_key(tmp_path, table, message):
    path = tmp_path / "config.toml"
    path.write_text(table + "\n")
    with pytest.raises(InvalidArgumentError, match=message):
        load_config(path)
