"""fujitsu-quantum (Fujitsu Quantum Cloud), the real package, running its documented script unchanged
under `qpu-broker exec` through to a task's result, with an empty HOME: the session gives it a private
FUJITSU_QUANTUM_HOME of placeholders and stand-ins, answers its Cognito refresh itself, and sends its
API calls on with the access token the daemon traded the stored refresh token for at Cognito."""

from __future__ import annotations

import datetime
import json
import pathlib
import urllib.error
import urllib.request

import pytest
from conftest import wait_for
from qpu_broker.common.secret_shapes import fujitsu_quantum_parts
from qpu_broker_client import (
    PermissionDeniedError,
    QpuToken,
    TokenProvider,
    UnauthenticatedError,
)
from qpu_broker_client.errors import InvalidArgumentError
from test_sdks_under_exec import _no_secret, _run

from testsupport.fakes import FakeServer
from testsupport.fujitsu_quantum_fake import FujitsuQuantumCloud

# fujitsu-quantum's quick start (2.4): a device, a sampling task of an OpenQASM circuit, its counts.
FQC_SCRIPT = """
from fujitsu_quantum.devices import Devices

device = Devices.get("SVSim")
qasm = 'OPENQASM 3; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;'
task = device.submit_sampling_task(program=qasm, n_shots=1000)
print("counts:", task.result().counts)
"""
# `fujitsu-quantum refresh` as its Python twin (cmd/cli.py: refresh), before the same task.
REFRESH_SCRIPT = "from fujitsu_quantum.cmd.cli import refresh\nrefresh()\n" + FQC_SCRIPT
# What the session's files held, reported by the script after it ran (test instrumentation, like REPORT).
FILES = """
import json as _j, os as _o, stat as _s
_home = _o.environ["FUJITSU_QUANTUM_HOME"]
print("FILES=" + _j.dumps({"mode": _s.S_IMODE(_o.stat(_home).st_mode), "files": {
    n: open(_o.path.join(_home, n)).read() for n in sorted(_o.listdir(_home)) if n.endswith(".json")}}))
"""
FQC = "fujitsu_quantum=my-fujitsu_quantum"


def _files(out: list[str]) -> tuple[list[str], dict]:
    files = json.loads(next(line[6:] for line in out if line.startswith("FILES=")))
    return [line for line in out if not line.startswith("FILES=")], files


def _placeholder_seen(placeholder: str, *servers: FakeServer) -> bool:
    return any(placeholder in s.path or placeholder.encode() in s.body or placeholder in str(s.headers)
               for server in servers for s in server.seen)


def test_fujitsu_quantum_submits_a_task_and_reads_its_result_from_a_presigned_ref(sdk_rig):
    """The result archive comes from the presigned URL the API answered, straight from storage with no
    credential; the API got the access token the daemon traded for; the child's files and variables
    hold only the session's placeholder and stand-in, and are gone when the command ends."""
    d, hw, canary, env = sdk_rig
    storage = FakeServer(lambda seen: fqc.storage(seen), hw.ca)
    fqc = FujitsuQuantumCloud(lambda: json.loads(hw.secrets["fujitsu_quantum"]), storage.url)
    hw.servers["fujitsu_quantum"].handler = fqc
    try:
        # The user's trust store names the test CA that storage's certificate comes from.
        r, out, child_env = _run(d, {**env, "REQUESTS_CA_BUNDLE": str(hw.ca.ca_file)}, FQC_SCRIPT + FILES, FQC)
        assert r.returncode == 0, r.stderr
        out, files = _files(out)
        assert out == ["counts: {'00': 500, '11': 500}"], (out, r.stderr)
        [task] = fqc.tasks.values()  # submitted with the real access token
        assert task["body"]["device"] == "SVSim" and task["body"]["nShots"] == {"raw": [1000]}
        assert fqc.refreshes == 1  # the daemon's own refresh at Cognito; the SDK made none
        [download] = storage.seen
        assert download.path.startswith("/results/") and download.header("Authorization") is None
        home = pathlib.Path(child_env["FUJITSU_QUANTUM_HOME"])
        assert files["mode"] == 0o700  # private; removed with the session, which the daemon ends when exec's stream closes
        wait_for(lambda: not home.exists(), "the session's directory to be removed")
        config, credentials = json.loads(files["files"]["config.json"]), json.loads(files["files"]["credentials.json"])
        placeholder = credentials["RefreshToken"]
        assert placeholder.startswith("qbs_") and config == {"apiBase": child_env["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"]}
        assert config["apiBase"].startswith("http://127.0.0.1:") and config["apiBase"].endswith("/" + placeholder)
        assert credentials["AccessToken"] not in fqc.issued  # a stand-in, not the real access token
        assert not _placeholder_seen(placeholder, hw.servers["fujitsu_quantum"], storage)
        _no_secret(canary, child_env, r.stdout, r.stderr, d.log(), json.dumps(files))
    finally:
        storage.close()


def test_fujitsu_quantum_refreshes_through_the_session_never_at_cognito(sdk_rig):
    """The SDK's own refresh (boto3's cognito-idp InitiateAuth) reaches the session through the
    endpoint variable, is answered with a new stand-in, which the SDK writes down and runs a task with;
    Cognito sees only the daemon's refresh, never the placeholder."""
    d, hw, canary, env = sdk_rig
    hw.servers["fujitsu_quantum"].handler = hw.fqc  # the API the SDK calls, and Cognito
    d.broker().qpu_token.delete("my-aws")  # no AWS session beside it: its variables are not this one's
    # A variable that would make botocore ignore the endpoint variable and go to Cognito is not inherited.
    r, out, child_env = _run(d, {**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, REFRESH_SCRIPT + FILES, FQC)
    assert r.returncode == 0, r.stderr
    out, files = _files(out)
    assert out == ["The credential file has been successfully updated.", "counts: {'00': 500, '11': 500}"], (out, r.stderr)
    assert "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" not in child_env
    credentials = json.loads(files["files"]["credentials.json"])
    # The session wrote its stand-in's time as due; the SDK wrote the new one's, an hour on.
    written = datetime.datetime.strptime(credentials["AccessTokenExpirationTime"], "%Y-%m-%d %H:%M:%S")
    assert written > datetime.datetime.now() + datetime.timedelta(minutes=50)
    assert hw.fqc.refreshes == 1 and len(hw.fqc.tasks) == 1
    assert not _placeholder_seen(credentials["RefreshToken"], hw.servers["fujitsu_quantum"])
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log(), json.dumps(files))


def test_a_fujitsu_quantum_session_admits_only_its_url_its_refresh_and_its_stand_ins(sdk_rig):
    d, hw, canary, _ = sdk_rig
    hw.servers["fujitsu_quantum"].handler = hw.fqc
    with d.broker().hold_session(TokenProvider(fujitsu_quantum=QpuToken("personal", name="my-fujitsu_quantum"))) as session:
        home = pathlib.Path(session.env["FUJITSU_QUANTUM_HOME"])
        url = json.loads((home / "config.json").read_text())["apiBase"]
        credentials = json.loads((home / "credentials.json").read_text())
        placeholder, standin = credentials["RefreshToken"], credentials["AccessToken"]

        def call(to: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
            request = urllib.request.Request(to, data=body, headers=headers or {}, method="POST" if body else "GET")
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        def refresh(token: str, target: str = "AWSCognitoIdentityProviderService.InitiateAuth",
                    media: str = "application/x-amz-json-1.1") -> tuple[int, dict]:
            doc = {"AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": "c", "AuthParameters": {"REFRESH_TOKEN": token}}
            return call(url + "/", json.dumps(doc).encode(), {"X-Amz-Target": target, "Content-Type": media})

        bearer = {"Authorization": f"Bearer {standin}"}
        for wrong in (url.rsplit("/", 1)[0] + "/tasks", url[:-1] + ("A" if url[-1] != "A" else "B") + "/tasks"):
            assert call(wrong, headers=bearer)[0] == 401  # without the placeholder in the URL: nothing
        assert call(url + "/tasks", headers={"Authorization": "Bearer not-a-stand-in"})[0] == 401
        # Cognito's refusal for anything but the SDK's refresh with the session's own refresh token.
        for status, answer in (refresh(placeholder + "x"), refresh(json.loads(hw.secrets["fujitsu_quantum"])["refresh_token"]),
                               refresh(placeholder, target="AWSCognitoIdentityProviderService.RevokeToken"),
                               refresh(placeholder, media="application/json")):
            assert status == 400 and answer["__type"] == "NotAuthorizedException", answer
            assert "outside `qpu-broker exec`" in answer["message"]
        assert call(url + "/tasks", json.dumps({"x": placeholder}).encode(), bearer)[0] == 400  # goes nowhere
        assert hw.servers["fujitsu_quantum"].seen == []  # nothing refused went on; no refresh was made for it
        status, answer = refresh(placeholder)
        fresh = answer["AuthenticationResult"]["AccessToken"]
        assert status == 200 and answer["AuthenticationResult"]["ExpiresIn"] == 3600 and fresh != standin
        for token in (standin, fresh):
            assert call(url + "/tasks", headers={"Authorization": f"Bearer {token}"}) == (200, [])
        assert hw.fqc.refreshes == 1 and not _placeholder_seen(placeholder, hw.servers["fujitsu_quantum"])
    wait_for(lambda: not home.exists(), "the session's directory to be removed")  # ended as the stream closed
    assert canary not in d.log()


def test_a_fujitsu_quantum_access_token_never_goes_to_cognito_and_a_refused_refresh_says_what_to_do(rig):
    d, hw, canary = rig
    tokens = TokenProvider(fujitsu_quantum=QpuToken("personal", name="my-fujitsu_quantum"))
    # With the access token, Cognito's API changes passwords and deletes users: refused before anything leaves.
    with pytest.raises(PermissionDeniedError, match="key exchange"):
        d.broker().forward("POST", "https://cognito-idp.ap-northeast-1.amazonaws.com/", provider="fujitsu_quantum",
                           headers={"X-Amz-Target": "AWSCognitoIdentityProviderService.GlobalSignOut"}, qpu_tokens=tokens)
    assert hw.fqc.refreshes == 0
    account = json.loads(hw.secrets["fujitsu_quantum"])
    d.broker().qpu_token.update(qpu_token_name="my-fujitsu_quantum", token=json.dumps({**account, "refresh_token": canary + "-revoked"}))
    with pytest.raises(UnauthenticatedError, match="NotAuthorizedException.*fujitsu-quantum login.*token rotate") as err:
        d.broker().forward("GET", hw.url("fujitsu_quantum"), provider="fujitsu_quantum", qpu_tokens=tokens)
    assert canary not in str(err.value) and canary not in d.log()


def test_a_fujitsu_quantum_credential_is_its_sdks_credentials_file_made_canonical():
    sdk_file = {"ClientId": "66l8iadggtteljctngjepi8du0", "Username": "alice", "AccessToken": "eyJ.access",
                "AccessTokenExpirationTime": "2026-01-01 00:00:00", "RefreshToken": "eyJ.refresh",
                "RefreshTokenExpirationTime": "2026-06-30 00:00:00", "DeviceKey": "ap-northeast-1_dev"}
    assert fujitsu_quantum_parts(json.dumps(sdk_file)) == {  # the access token and the times are dropped
        "client_id": "66l8iadggtteljctngjepi8du0", "username": "alice", "refresh_token": "eyJ.refresh",
        "device_key": "ap-northeast-1_dev"}
    assert fujitsu_quantum_parts('{"client_id": "c", "username": "u", "refresh_token": "r"}') == {
        "client_id": "c", "username": "u", "refresh_token": "r"}
    for bad, says in (("eyJ.refresh", "does not parse as JSON"), ('["r"]', "must be a JSON object"),
                      ('{"ClientId": "c", "Username": "u"}', "missing refresh_token"),
                      ('{"client_id": "c", "username": "u", "refresh_token": "r", "Password": "hunter2"}', "unknown key"),
                      ('{"ClientId": "c", "client_id": "d", "username": "u", "refresh_token": "r"}', "client_id twice"),
                      ('{"client_id": "c", "username": "u", "refresh_token": 7}', "non-empty string")):
        with pytest.raises(InvalidArgumentError, match=says) as err:
            fujitsu_quantum_parts(bad)
        assert "hunter2" not in str(err.value) and "eyJ" not in str(err.value)
