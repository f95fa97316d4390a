"""In process: where the SDKs look and how they read their files, checked against the SDKs' own
code; a secret taken out of a file keeps its owner, mode, link and every other line."""

from __future__ import annotations

import datetime
import json
import os
import pathlib

import pytest
from qpu_broker.sdk_files import dotenv_lines, ini_lines
from qpu_broker.sdk_files.found import Found
from qpu_broker.sdk_files.locations import (
    DOTENV,
    INI,
    dwave_files,
    fujitsu_quantum_file,
    in_dwave,
    in_fujitsu_quantum,
)
from qpu_broker.sdk_files.rewrite import take_out
from qpu_broker_client.secret import Secret


@pytest.mark.parametrize("env", [{}, {"XDG_CONFIG_DIRS": "/a:/b/", "XDG_CONFIG_HOME": "/x/conf"},
                                 {"DWAVE_CONFIG_FILE": "/somewhere/my.conf"}])
def test_the_dwave_conf_paths_are_dwave_cloud_clients(env, monkeypatch, tmp_path):
    from dwave.cloud.config import get_configfile_paths, load_config_from_files

    for name in ("XDG_CONFIG_DIRS", "XDG_CONFIG_HOME", "DWAVE_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    home = pathlib.Path(os.path.expanduser("~"))
    ours = [str(p) for p in dwave_files(os.environ, home, pathlib.Path("."))]
    if "DWAVE_CONFIG_FILE" in env:
        assert ours == [env["DWAVE_CONFIG_FILE"]]  # load_config takes it alone (loaders.py:626)
    else:
        assert ours == [os.path.normpath(p) for p in get_configfile_paths(only_existing=False)]
    # The same values as dwave-cloud-client's parser, on a file with a comment and a continued value.
    conf = tmp_path / "dwave.conf"
    conf.write_text("[defaults]\n# mine\nsolver = {\"qpu\": true}\n[prod]\ntoken = abc-123\nheaders = A: b\n  C: d\n")
    parsed = load_config_from_files([str(conf)])
    assert ini_lines.values(conf.read_text())["prod"] == {k: parsed.get("prod", k) for k in ("token", "headers")}
    assert [f.name for f in in_dwave(conf)] == ["prod"]


def test_the_dotenv_values_are_python_dotenvs(tmp_path):
    from dotenv import dotenv_values

    text = ("# comment\nexport IONQ_API_KEY=plain\nLUNA_API_KEY='single quoted'\nDWAVE_API_TOKEN=\"double\"\n"
            "OTHER=value # trailing comment\n")
    (tmp_path / ".env").write_text(text)
    assert dotenv_lines.values(text) == dotenv_values(tmp_path / ".env")


def test_taking_a_secret_out_keeps_owner_mode_link_and_every_other_line(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text("# keep this comment\n[prod]\nregion = eu\ntoken = s3cret-value\n  continued\n[dev]\ntoken = other\n")
    os.chmod(real, 0o640)
    os.chown(real, 4242, 4243)  # another user's file, as root may rewrite (the suite runs as root)
    link = tmp_path / "dwave.conf"
    link.symlink_to(real)
    found = Found(link, "dwave.conf profile", "prod", "dwave", Secret("s3cret-value"), ("token",), "prod", INI)
    take_out([found])
    assert link.is_symlink() and real.read_text() == "# keep this comment\n[prod]\nregion = eu\n[dev]\ntoken = other\n"
    st = real.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4242, 4243, 0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwave.conf", "real.conf"]  # no temp file left


def test_a_secret_left_elsewhere_in_the_file_stops_the_rewrite(tmp_path):
    env = tmp_path / ".env"
    env.write_text("IONQ_API_KEY=k-123456\n# old: k-123456\n")
    found = Found(env, ".env variable", "IONQ_API_KEY", "ionq", Secret("k-123456"), ("IONQ_API_KEY",), "", DOTENV)
    with pytest.raises(Exception, match="holds the secret somewhere else too"):
        take_out([found])
    assert env.read_text() == "IONQ_API_KEY=k-123456\n# old: k-123456\n"


@pytest.mark.parametrize("value", [None, "/abs/fq", "rel/fq", "~/fq", ""])
def test_the_fujitsu_quantum_file_is_the_sdks(value, monkeypatch, tmp_path):
    from fujitsu_quantum.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("FUJITSU_QUANTUM_HOME", raising=False)
    else:
        monkeypatch.setenv("FUJITSU_QUANTUM_HOME", value)
    ours = fujitsu_quantum_file(os.environ, pathlib.Path.home(), pathlib.Path.cwd())
    assert str(ours) == f"{load_config().config_dir}/credentials.json"  # as auth.py:41 names it


@pytest.fixture
def fqc_file(monkeypatch, tmp_path):
    """A credentials.json written by fujitsu-quantum's own writer, into tmp_path (its paths are fixed at import)."""
    from fujitsu_quantum.auth import FQCAuth

    path = tmp_path / "credentials.json"
    monkeypatch.setattr(FQCAuth, "CREDENTIALS_DIR", str(tmp_path))
    monkeypatch.setattr(FQCAuth, "CREDENTIALS_FILE_PATH", path)
    monkeypatch.setattr(FQCAuth, "CREDENTIALS_FILE_LOCK_PATH", path.with_suffix(".json.lock"))
    when = datetime.datetime(2026, 6, 30)
    FQCAuth.store_credentials("client-1", "alice", "access-s3cret", when, "refresh-s3cret", when, None)
    return path


def test_a_fujitsu_quantum_refresh_under_way_stops_the_rewrite_and_the_sdk_reads_what_is_left(fqc_file):
    from filelock import FileLock
    from fujitsu_quantum.auth import FQCAuth, FQCAuthBoto3, FQCAuthError

    [found] = in_fujitsu_quantum(fqc_file)
    before = fqc_file.read_text()
    # The SDK's refresh holds this lock from reading the file to writing it all back (auth.py:143-190).
    with FileLock(FQCAuth.CREDENTIALS_FILE_LOCK_PATH), \
            pytest.raises(Exception, match="fujitsu-quantum holds .*credentials.json.lock"):
        take_out([found], lock_wait=0)
    assert fqc_file.read_text() == before
    take_out([found])
    assert json.loads(fqc_file.read_text()) == {"ClientId": "client-1", "Username": "alice",
                                                "AccessTokenExpirationTime": "2026-06-30 00:00:00",
                                                "RefreshTokenExpirationTime": "2026-06-30 00:00:00"}
    with pytest.raises(FQCAuthError, match="Please run `fujitsu-quantum login`"):
        FQCAuthBoto3()  # its reader: no token left to use
