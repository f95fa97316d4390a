"""Providers from config (`[providers.custom.NAME]`): real SDKs running unchanged scripts under
`qpu-broker exec` (general-superstaq at a loopback endpoint; pasqal-cloud through the HTTPS-proxy form,
its Auth0 password grant answered by the session), Forward with a header template and with OAuth
client credentials, the destination rules, and the config's errors. Real daemon, fakes on loopback HTTPS."""

from __future__ import annotations

import json
import pathlib
import secrets
import sys

import pytest
from qpu_broker.common.config import load_config
from qpu_broker.common.custom_providers import parse_definition
from qpu_broker_client import QpuToken, TokenProvider
from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)

from testsupport.custom_fakes import ClientCredentialsServer, SuperstaqApi
from testsupport.fakes import FakeServer, make_ca
from testsupport.pasqal_fake import (
    AUDIENCE,
    GRANT_TYPE,
    PUBLIC_CLIENT_ID,
    REALM,
    Auth0,
    PasqalApi,
    ResultStorage,
)

# general-superstaq's own quick start (0.5.70): Service() reads SUPERSTAQ_API_KEY and
# SUPERSTAQ_REMOTE_HOST; a QUBO is submitted and its solutions read back.
SUPERSTAQ_SCRIPT = """
import general_superstaq as gss

service = gss.Service()
print("balance:", service.get_balance())
print("solutions:", service.submit_qubo({("a",): -1.0, ("b",): -1.0, ("a", "b"): 2.0}, method="bruteforce"))
"""
# pasqal-cloud 0.24 as its docs use it: SDK(username, password, project_id) (the password from a
# variable of the user's choosing), a pulser sequence in a batch, waited for, each job's counts read.
PASQAL_PROJECT = "8d4f2e6a-0b1c-4d5e-9f00-123456789abc"
PASQAL_SCRIPT = f"""
import os
from pasqal_cloud import SDK
from pulser import Pulse, Register, Sequence
from pulser.devices import AnalogDevice

sdk = SDK(username="ada@lab.example", password=os.environ["PASQAL_PASSWORD"], project_id="{PASQAL_PROJECT}")
sequence = Sequence(Register.square(2, spacing=6, prefix="q"), AnalogDevice)
sequence.declare_channel("rydberg", "rydberg_global")
sequence.add(Pulse.ConstantPulse(200, 2.0, 0.0, 0.0), "rydberg")
sequence.measure("ground-rydberg")
batch = sdk.create_batch(sequence.to_abstract_repr(), jobs=[{{"runs": 100}}], device_type="EMU_FREE", wait=True)
print("batch:", batch.status)
for job in batch.ordered_jobs:
    print("job:", job.status, job.result)
"""
REPORT = "\nimport json as _j, os as _o\nprint('ENV=' + _j.dumps(dict(_o.environ)))\n"


def _exec(d, token: str, script: str, env: dict[str, str]):
    """`qpu-broker exec --token TOKEN -- python -c SCRIPT`: the run, its output lines, and its environment."""
    r = d.cli("exec", "--token", token, "--", sys.executable, "-c", script + REPORT, env=env)
    lines = r.stdout.splitlines()
    child_env = json.loads(next((line[4:] for line in lines if line.startswith("ENV=")), "{}"))
    return r, [line for line in lines if not line.startswith("ENV=")], child_env


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
session = "proxy"
hosts = ["{acme.netloc}"]
ca_file = {ca}
token_url = "https://{acme.netloc}/oauth/token"
[providers.custom.acme.session_env]
ACME_CLIENT_SECRET = "{{credential}}"
[providers.custom.acme.endpoints]
"api.acme-quantum.example" = "https://{acme.netloc}"
"auth.acme-quantum.example" = "https://{acme.netloc}"
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
    r, out, child_env = _exec(d, "superstaq=my-ss", SUPERSTAQ_SCRIPT, env)
    assert r.returncode == 0, r.stderr
    assert out == ["balance: 1,234.50 credits", "solutions: [{'a': 0, 'b': 1}, {'a': 1, 'b': 0}]"], out
    assert superstaq.qubos[0]["method"] == "bruteforce"  # the real key carried the submission
    assert child_env["SUPERSTAQ_API_KEY"].startswith("qbs_")
    assert child_env["SUPERSTAQ_REMOTE_HOST"].startswith("http://127.0.0.1:")
    for text in (json.dumps(child_env), r.stdout, r.stderr, d.log()):
        assert canary not in text


def _pasqal_config(api: FakeServer, auth0: FakeServer, ca_file: pathlib.Path) -> str:
    """docs/sdks/custom.md's Pasqal table, and where its hosts are served in this test."""
    return f"""
[providers.custom.pasqal]
official_hosts = ["apis.pasqal.cloud", "pasqal.eu.auth0.com"]
auth = "password"
official_token_url = "https://pasqal.eu.auth0.com/oauth/token"
grant_type = "{GRANT_TYPE}"
audience = "{AUDIENCE}"
session = "proxy"
hosts = ["{api.netloc}", "{auth0.netloc}"]
ca_file = {json.dumps(str(ca_file))}
token_url = "https://{auth0.netloc}/oauth/token"
[providers.custom.pasqal.token_form]
client_id = "{PUBLIC_CLIENT_ID}"
realm = "{REALM}"
[providers.custom.pasqal.session_env]
PASQAL_PASSWORD = "{{credential}}"
[providers.custom.pasqal.endpoints]
"apis.pasqal.cloud" = "https://{api.netloc}"
"pasqal.eu.auth0.com" = "https://{auth0.netloc}"
"""


def test_pasqal_cloud_runs_a_batch_through_the_session_proxy(make_daemon, short_tmp):
    canary = f"canary{secrets.token_hex(8)}"
    ca = make_ca(short_tmp / "ca")
    account = ("ada@lab.example", f"{canary}-password")
    storage = ResultStorage(lambda: s3.url("").rstrip("/"))
    auth0 = Auth0(lambda: account)
    api = PasqalApi(auth0, storage, PASQAL_PROJECT)
    servers = auth0_server, api_server, s3 = FakeServer(auth0, ca), FakeServer(api, ca), FakeServer(storage, ca)
    try:
        d = make_daemon()
        d.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (d.home / "config.toml").write_text(_pasqal_config(api_server, auth0_server, ca.ca_file))
        d.start()
        assert d.cli("token", "add", "my-pasqal", "--provider", "pasqal", input=":".join(account)).returncode == 0
        home = short_tmp / "empty-home"
        home.mkdir(mode=0o700)
        # The results link is on object storage, reached directly; the user's own CA bundle (standing in for
        # the public roots its real host has) is kept, the session's CA added to it.
        env = {"HOME": str(home), "REQUESTS_CA_BUNDLE": str(ca.ca_file)}
        r, out, child_env = _exec(d, "pasqal=my-pasqal", PASQAL_SCRIPT, env)
        assert r.returncode == 0, r.stderr
        assert out == ["batch: DONE", "job: DONE {'0000': 75, '1111': 25}"], (out, r.stderr)
        [stored] = api.batches.values()  # the API took the batch only with a bearer Auth0 issued
        assert (stored.request["jobs"], stored.request["device_type"]) == ([{"runs": 100}], "EMU_FREE")
        # Auth0 saw the real password once (the daemon's grant); the SDK's own grant was answered by the
        # session with a stand-in, which never left it, nor did the placeholder.
        assert auth0.grants == 1 and len(auth0_server.seen) == 1
        placeholder = child_env["PASQAL_PASSWORD"]
        assert placeholder.startswith("qbs_") and placeholder in child_env["HTTPS_PROXY"]
        sent = [repr(seen.headers) + seen.body.decode("latin-1") for f in servers for seen in f.seen]
        assert not any(placeholder in text for text in sent)
        for text in (json.dumps(child_env), r.stdout, r.stderr, d.log()):
            assert text and canary not in text
    finally:
        for server in servers:
            server.close()


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


# An SDK that makes the client-credentials grant itself (as MSAL and requests-oauthlib do), its hosts by name.
ACME_SCRIPT = """
import os, requests

token_url = "https://auth.acme-quantum.example/oauth/token"
grant = {"grant_type": "client_credentials", "client_id": "my-client", "client_secret": os.environ["ACME_CLIENT_SECRET"]}
guess = requests.post(token_url, data={**grant, "client_secret": "guess"})
print("guess:", guess.status_code, guess.json()["error"])
token = requests.post(token_url, data=grant).json()
print("granted:", token["token_type"], token["expires_in"])
jobs = requests.get("https://api.acme-quantum.example/v1/jobs", headers={"Authorization": "Bearer " + token["access_token"]})
print("jobs:", jobs.status_code, jobs.json()["jobs"][0]["status"])
"""


def test_an_sdks_own_client_credentials_grant_is_answered_by_the_proxy_session(custom_rig, short_tmp):
    d, canary, _, oauth, _, acme = custom_rig
    r, out, child_env = _exec(d, "acme=my-acme", ACME_SCRIPT, {"HOME": str(short_tmp)})
    assert out == ["guess: 401 invalid_client", "granted: Bearer 3600", "jobs: 200 COMPLETED"], (out, r.stderr)
    # Upstream: the daemon's own grant with the real secret, then the API call with the bearer it got.
    assert oauth.exchanges == 1 and [seen.path for seen in acme.seen] == ["/oauth/token", "/v1/jobs"]
    assert not any(b"qbs_" in seen.body or "qbs_" in repr(seen.headers) for seen in acme.seen)
    assert child_env["ACME_CLIENT_SECRET"].startswith("qbs_")
    for text in (json.dumps(child_env), r.stdout, r.stderr, d.log()):
        assert canary not in text


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
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\nauth = "password"', r"q.official_token_url"),
    (('[providers.custom.q]\nofficial_hosts = ["a.example"]\nauth = "password"\n'
      'official_token_url = "https://a.example/token"\ntoken_form = { password = "x", realm = "r" }'),
     r"q.token_form must not set password"),
    (('[providers.custom.q]\nofficial_hosts = ["a.example"]\nauth = "client_credentials"\n'
      'official_token_url = "https://a.example/token"\ngrant_type = "password"'), r"q.grant_type: client credentials"),
    ('[providers.custom.q]\nofficial_hosts = ["a.example"]\ngrant_type = "password"',
     r"grant_type and token_form are for auth = \"client_credentials\" or \"password\""),
])
def test_a_bad_custom_table_is_one_error_naming_the_key(tmp_path, table, message):
    path = tmp_path / "config.toml"
    path.write_text(table + "\n")
    with pytest.raises(InvalidArgumentError, match=message):
        load_config(path)


@pytest.mark.parametrize("body", [
    {"official_hosts": ["api.example-quantum.com"], "auth": "header", "header": "X-Key", "template": "{token}"},
    {"official_hosts": ["api.example-quantum.com"], "auth": "bearer", "session": "proxy"},
    {"official_hosts": ["a.example-quantum.com"], "auth": "client_credentials", "scope": "jobs",
     "official_token_url": "https://a.example-quantum.com/oauth/token"},
    {"official_hosts": ["apis.pasqal.cloud", "pasqal.eu.auth0.com"], "auth": "password", "grant_type": GRANT_TYPE,
     "official_token_url": "https://pasqal.eu.auth0.com/oauth/token", "token_form": {"realm": REALM},
     "session": "proxy", "session_env": {"PASQAL_PASSWORD": "{credential}"}},
])
def test_a_definition_reads_back_from_what_it_writes(body):
    """as_dict is what an org server stores: read back, it is the same definition, for every auth kind."""
    definition = parse_definition("q", body, "test")
    assert parse_definition("q", definition.as_dict(), "test") == definition
