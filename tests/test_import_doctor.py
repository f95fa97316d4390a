"""`qpu-broker import` and `qpu-broker doctor` on files the SDKs themselves wrote (their own
writers: QiskitRuntimeService.save_account, dwave-cloud-client's config writer, awscli's
ConfigFileWriter, python-dotenv's set_key), the real CLI against a real daemon; the secrets are
canaries that must never show in any output, and the stored ones must work at the fakes."""

from __future__ import annotations

import datetime
import email.utils
import http.server
import json
import os
import pathlib
import stat
import subprocess
import sys
import threading

import pytest
from qpu_broker_client import QpuToken, TokenProvider

from testsupport.hardware import AWS_KEY_ID
from testsupport.other_user import OTHER_UID


def _sdk_files(home, project, hw):
    """Every file, written by its SDK's own code, holding the rig's secrets."""
    from awscli.customizations.configure.writer import ConfigFileWriter
    from dotenv import set_key
    from dwave.cloud.cli import _write_config
    from dwave.cloud.config import get_default_config
    from qiskit_ibm_runtime import QiskitRuntimeService

    qiskit = home / ".qiskit" / "qiskit-ibm.json"
    QiskitRuntimeService.save_account(token=hw.secrets["ibm"], channel="ibm_quantum_platform", name="work",
                                      instance="crn:v1:bluemix:public:quantum-computing:us-east:a/x:y::",
                                      filename=str(qiskit), set_as_default=True)
    dwave = home / ".config" / "dwave" / "dwave.conf"
    config = get_default_config()
    config.add_section("prod")
    config.set("prod", "token", hw.secrets["dwave"])
    config.set("prod", "region", "eu-central-1")
    _write_config(config, str(dwave))
    creds, aws_config = home / ".aws" / "credentials", home / ".aws" / "config"
    key_id, secret = hw.secrets["aws"].split(":")
    ConfigFileWriter().update_config({"__section__": "lab", "aws_access_key_id": key_id,
                                      "aws_secret_access_key": secret}, str(creds))
    ConfigFileWriter().update_config({"__section__": "profile lab", "region": "us-east-1"}, str(aws_config))
    env_file = project / ".env"
    env_file.touch(mode=0o640)
    set_key(env_file, "IONQ_API_KEY", hw.secrets["ionq"])
    set_key(env_file, "PROJECT_NAME", "keep me")
    set_key(env_file, "LUNA_API_KEY", hw.secrets["luna"])
    os.chmod(env_file, 0o640)  # a mode of the user's own: kept
    return {"qiskit": qiskit, "dwave": dwave, "aws": creds, "aws_config": aws_config, "env": env_file}


def _user(short_tmp):
    home, project = short_tmp / "user-home", short_tmp / "user-home" / "project"
    project.mkdir(parents=True)
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CONFIG_DIRS": str(home / "no-etc"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
           "AWS_CONFIG_FILE": str(home / ".aws" / "config")}
    return home, project, env


def _quiet(r, canary):
    """No secret in what the command printed: not the canary every secret holds, nor the AWS key id."""
    out = r.stdout + r.stderr
    assert canary not in out and canary[:10] not in out and AWS_KEY_ID not in out, out


def test_import_lists_by_file_and_name_stores_and_takes_the_secrets_out(rig, short_tmp):
    d, hw, canary = rig
    home, project, env = _user(short_tmp)
    files = _sdk_files(home, project, hw)
    mode_before = stat.S_IMODE(files["env"].stat().st_mode)

    listed = d.cli("import", "--list", env=env, cwd=project)
    _quiet(listed, canary)
    assert listed.returncode == 0, listed.stderr
    for line in ("ibm     ~/.qiskit/qiskit-ibm.json: qiskit account 'work'; channel ibm_quantum_platform (marked default)",
                 "dwave   ~/.config/dwave/dwave.conf: dwave.conf profile 'prod'",
                 "aws     ~/.aws/credentials: aws credentials profile 'lab'",
                 "ionq    ~/project/.env: .env variable 'IONQ_API_KEY'",
                 "luna    ~/project/.env: .env variable 'LUNA_API_KEY'"):
        assert line in listed.stdout, listed.stdout
    assert "aws config profile" not in listed.stdout  # ~/.aws/config holds a region only

    r = d.cli("import", "--all", "--remove", "--backup", "--json", env=env, cwd=project)
    _quiet(r, canary)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    names = {s["provider"]: s["token_name"] for s in report["stored"]}
    assert names["ionq"] == "IONQ_API_KEY (~/project/.env)" and len(report["removed"]) == 4

    # What was stored is the secret itself: each works at its provider's fake.
    b = d.broker()
    for provider in ("dwave", "ionq", "ibm"):
        tokens = TokenProvider(**{provider: QpuToken("personal", name=names[provider])})
        assert b.forward("GET", hw.url(provider), provider=provider, qpu_tokens=tokens).status_code == 200, provider
    aws = TokenProvider(aws=QpuToken("personal", name=names["aws"]))
    assert b.forward("POST", hw.url("aws", "/quantum-task"), provider="aws", body=b"{}", qpu_tokens=aws,
                     region="us-east-1", service="braket").status_code == 200

    # Out of every file, everything else kept, read back with the SDKs' own readers.
    for path in files.values():
        assert canary not in path.read_text(), path
    from dotenv import dotenv_values
    from dwave.cloud.config import load_config

    assert dotenv_values(files["env"]) == {"PROJECT_NAME": "keep me"}
    assert stat.S_IMODE(files["env"].stat().st_mode) == mode_before
    dwave = load_config(config_file=str(files["dwave"]), profile="prod")
    assert dwave.get("token") is None and dwave["region"] == "eu-central-1"
    saved = json.loads(files["qiskit"].read_text())["work"]
    assert "token" not in saved and saved["is_default_account"] and saved["channel"] == "ibm_quantum_platform"
    assert "[lab]" in files["aws"].read_text()
    # Backups on request: 0600, beside each file, holding what it held.
    for item in report["removed"]:
        backup = item["backup"]
        assert backup and stat.S_IMODE(os.stat(backup).st_mode) == 0o600
        assert canary in pathlib.Path(backup).read_text()

    again = d.cli("import", "--list", env=env, cwd=project)
    assert "no plaintext credentials found" in again.stdout


def test_import_leaves_a_secret_it_could_not_store_and_says_why(rig, short_tmp):
    d, hw, canary = rig
    home, project, env = _user(short_tmp)
    files = _sdk_files(home, project, hw)
    d.broker().qpu_token.create(name="IONQ_API_KEY (~/project/.env)", provider="ionq", token="another")
    listed = d.cli("import", "--list", env=env, cwd=project).stdout
    n = next(line.split()[0] for line in listed.splitlines() if "IONQ_API_KEY" in line)
    r = d.cli("import", "--pick", n, "--remove", env=env, cwd=project)
    _quiet(r, canary)
    assert r.returncode == 1 and "a personal token named 'IONQ_API_KEY (~/project/.env)' exists: left in the file" in r.stderr
    assert hw.secrets["ionq"] in files["env"].read_text()
    bad = d.cli("import", "--pick", "99", env=env, cwd=project)
    assert bad.returncode == 2 and "--pick takes numbers from 1 to 5" in bad.stderr


class _Clock(http.server.ThreadingHTTPServer):
    """Answers anything with a Date `skew` off this machine's clock."""

    def __init__(self, skew: datetime.timedelta) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.send_response(403)
                self.end_headers()

            def date_time_string(self, timestamp=None) -> str:
                return email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + skew, usegmt=True)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def clocks():
    made = []

    def make(skew):
        made.append(_Clock(skew))
        return made[-1].url()

    yield make
    for c in made:
        c.shutdown()
        c.server_close()


def _findings(r):
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_doctor_reports_each_thing_with_its_fix_and_exits_1_until_all_are_fixed(rig, short_tmp, clocks):
    d, hw, canary = rig
    home, project, env = _user(short_tmp)
    _sdk_files(home, project, hw)
    d.broker().lock()
    r = d.cli("doctor", "--json", "--clock-url", clocks(datetime.timedelta(minutes=-20)), env=env, cwd=project)
    _quiet(r, canary)
    assert r.returncode == 1, r.stderr
    found = _findings(r)
    by = {(f["check"], f["level"]): f for f in found}
    ionq = next(f for f in found if "IONQ_API_KEY" in f["message"])
    assert ionq["level"] == "problem" and "qiskit-ionq reads this .env before the environment" in ionq["message"]
    assert ionq["fix"].startswith("qpu-broker import --pick ") and ionq["fix"].endswith(" --remove")
    qiskit = next(f for f in found if "qiskit account 'work'" in f["message"])
    assert qiskit["check"] == "override" and "QiskitRuntimeService(name=…)" in qiskit["message"]
    assert by[("daemon", "warning")]["fix"] == "qpu-broker unlock"
    clock = by[("clock", "problem")]
    assert "20 s" not in clock["message"] and "ahead of" in clock["message"] and "RequestTimeTooSkewed" in clock["message"]
    assert clock["fix"] == "sudo timedatectl set-ntp true"

    # The .env finding is true: qiskit-ionq's own resolver, run where a notebook would, takes the
    # file's key over the variable an exec session sets.
    script = ("from qiskit_ionq.helpers import resolve_credentials as r; "
              "print(r()['token'] == open('.env').read().split(\"'\")[1])")
    probe = subprocess.run([sys.executable, "-c", script],
                           cwd=project, env={**os.environ, **env, "IONQ_API_KEY": "session-placeholder"},
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True"

    d.cli("unlock")
    fixed = d.cli("import", "--all", "--remove", env=env, cwd=project)
    assert fixed.returncode == 0, fixed.stderr
    r = d.cli("doctor", "--clock-url", clocks(datetime.timedelta()), env=env, cwd=project)
    _quiet(r, canary)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("nothing to fix"), r.stdout
    assert "ok       daemon" in r.stdout and "ok       clock" in r.stdout


def test_doctor_without_a_daemon_does_not_start_one(make_daemon, short_tmp, clocks):
    d = make_daemon("none")
    _, project, env = _user(short_tmp)
    r = d.cli("doctor", "--clock-url", clocks(datetime.timedelta(minutes=2)), env=env, cwd=project)
    assert r.returncode == 1 and "no daemon answers" in r.stdout and "warning  clock" in r.stdout, r.stdout
    assert not d.paths.socket.exists()


# fujitsu-quantum's own writer (auth.py:49-78, what `fujitsu-quantum login` calls), run where the SDK
# runs, so that FUJITSU_QUANTUM_HOME is read by the SDK itself; the sign-in comes on stdin, not argv.
FQC_WRITER = """
import datetime, json, sys
from fujitsu_quantum.auth import FQCAuth
s = json.load(sys.stdin)
FQCAuth.store_credentials(s["client_id"], s["username"], s["access_token"], datetime.datetime(2026, 1, 1, 12),
                          s["refresh_token"], datetime.datetime(2026, 6, 30, 12), s["device_key"])
print(FQCAuth.CREDENTIALS_FILE_PATH)
"""


def test_import_takes_a_fujitsu_quantum_sign_in_from_where_the_sdk_keeps_it(rig, short_tmp):
    d, hw, canary = rig
    _, project, env = _user(short_tmp)
    env["FUJITSU_QUANTUM_HOME"] = "fq"  # relative: the SDK takes it against the working directory
    sign_in = {**json.loads(hw.secrets["fujitsu_quantum"]), "device_key": "ap-northeast-1_dev-1"}
    hw.secrets["fujitsu_quantum"] = json.dumps(sign_in)  # the fake now wants the device key too
    wrote = subprocess.run([sys.executable, "-c", FQC_WRITER], input=json.dumps({**sign_in, "access_token": canary + "-access"}),
                           cwd=project, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    path = pathlib.Path(wrote.stdout.strip())
    assert path == project / "fq" / "credentials.json" and stat.S_IMODE(path.stat().st_mode) == 0o600

    r = d.cli("doctor", "--json", "--no-clock", env=env, cwd=project)
    _quiet(r, canary)
    [finding] = [f for f in _findings(r) if f["check"] == "plaintext"]
    assert finding == {"level": "warning", "check": "plaintext", "fix": "qpu-broker import --pick 1 --remove",
                       "message": "plaintext fujitsu_quantum key in ~/project/fq/credentials.json: "
                                  "fujitsu-quantum sign-in 'RefreshToken'"}
    listed = d.cli("import", "--list", env=env, cwd=project)
    _quiet(listed, canary)
    assert ("  1  fujitsu_quantum ~/project/fq/credentials.json: fujitsu-quantum sign-in 'RefreshToken'; "
            "refresh token until 2026-06-30 12:00:00 by the SDK's reckoning") in listed.stdout, listed.stdout

    r = d.cli("import", "--all", "--remove", "--backup", "--json", env=env, cwd=project)
    _quiet(r, canary)
    assert r.returncode == 0, r.stderr
    for said in (listed.stdout, r.stdout):  # nor the sign-in's other parts
        assert sign_in["username"] not in said and sign_in["client_id"] not in said and "dev-1" not in said
    report = json.loads(r.stdout)
    [stored] = report["stored"]
    assert stored["token_name"] == "RefreshToken (~/project/fq/credentials.json)"
    # Stored canonical, device key and all: the daemon's refresh at the (strict) Cognito fake works.
    tokens = TokenProvider(fujitsu_quantum=QpuToken("personal", name=stored["token_name"]))
    assert d.broker().forward("GET", hw.url("fujitsu_quantum", "/tasks"), provider="fujitsu_quantum",
                              qpu_tokens=tokens).status_code == 200
    # Out of the file, as the SDK writes it: both bearer secrets gone, the rest kept in order, mode kept.
    left = path.read_text()
    assert canary not in left and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(json.loads(left)) == ["ClientId", "Username", "AccessTokenExpirationTime", "RefreshTokenExpirationTime",
                                      "DeviceKey"]
    assert left == json.dumps(json.loads(left), indent=4)
    [removed] = report["removed"]
    assert stat.S_IMODE(os.stat(removed["backup"]).st_mode) == 0o600 and canary in pathlib.Path(removed["backup"]).read_text()
    again = d.cli("doctor", "--json", "--no-clock", env=env, cwd=project)
    assert not [f for f in _findings(again) if f["check"] == "plaintext"], again.stdout


def test_a_key_another_user_could_have_written_is_reported_never_imported(daemon, shared_tmp):
    """The attack review's: a .env another user planted above the project (python-dotenv searches
    up to /) was imported, and doctor's fix said to import it: the victim's work then ran on the
    planter's account. Now doctor says whose it could be and to keep out of it; import refuses it."""
    planted = shared_tmp / ".env"
    planted.write_text("IONQ_API_KEY=attacker-owned-ionq-key-0123456789\n")
    os.chown(planted, OTHER_UID, OTHER_UID)
    planted.chmod(0o644)
    project, home = shared_tmp / "project", shared_tmp / "home"
    project.mkdir(mode=0o700)
    home.mkdir(mode=0o700)
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CONFIG_DIRS": str(home / "no-etc"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"), "AWS_CONFIG_FILE": str(home / "none"),
           "FUJITSU_QUANTUM_HOME": str(home / "fq")}
    doctor = daemon.cli("doctor", "--no-clock", "--json", env=env, cwd=project)
    finding = [json.loads(x) for x in doctor.stdout.splitlines() if str(planted) in x]
    assert len(finding) == 1 and finding[0]["check"] == "foreign" and finding[0]["level"] == "problem", doctor.stdout
    assert f"owned by uid {OTHER_UID}" in finding[0]["message"] and "import" not in finding[0]["fix"].split(";")[0]
    assert doctor.returncode == 1
    imported = daemon.cli("import", "--all", "--remove", env=env, cwd=project)
    assert imported.returncode == 1 and "NOT YOURS, never stored" in imported.stdout
    assert "not stored: another user could have written it" in imported.stderr
    assert "attacker-owned" not in imported.stdout + imported.stderr + doctor.stdout
    assert json.loads(daemon.cli("token", "list", "--json", env=env).stdout)["personal"] == []
    assert planted.read_text().startswith("IONQ_API_KEY=attacker")  # not theirs to rewrite either
