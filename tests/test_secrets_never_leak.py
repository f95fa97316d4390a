"""Canary secrets must never show up in files, logs, responses or process arguments."""

from __future__ import annotations

import os
import pathlib
import secrets

from qpu_broker_client import InvalidArgumentError


def _all_cmdlines() -> bytes:
    out = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes())
            except OSError:
                pass
    return b"\n".join(out)


def _files_under(root: pathlib.Path) -> dict[pathlib.Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_canaries_stay_secret(make_daemon):
    d = make_daemon().start("--log-level", "debug")
    canaries = [f"canary-{secrets.token_hex(16)}" for _ in range(5)]
    aws_secret = f"CANARYAWS{secrets.token_hex(12)}"
    outputs = []

    r = d.cli("token", "add", "cli-token", "--provider", "ibm", "--json", input=canaries[0] + "\n")
    outputs += [r.stdout, r.stderr]
    r = d.cli("token", "rotate", "cli-token", "--json", input=canaries[1] + "\n")
    outputs += [r.stdout, r.stderr]
    api = d.broker().qpu_token
    tok = api.create(name="py-token", provider="dwave", token=canaries[2])
    outputs += [repr(tok), str(tok), repr(api.get_all()), repr(api.get(qpu_token_id=tok.id))]
    api.create(name="aws", provider="aws", token=f"AKIAIOSFODNN7EXAMPLE:{aws_secret}")
    # Failing calls must not echo the secret either.
    for bad in (f"{canaries[3]}\n{canaries[3]}", f"AKIAIOSFODNN7EXAMPLE:{canaries[3]}:x:y"):
        try:
            api.create(name="bad", provider="aws" if ":" in bad else "ibm", token=bad)
        except InvalidArgumentError as exc:
            outputs.append(str(exc))
    r = d.cli("token", "add", "cli-token", "--provider", "ibm", input=canaries[4] + "\n")  # name taken
    assert r.returncode == 1
    outputs += [r.stdout, r.stderr]
    for cmd in (("token", "list", "--json"), ("token", "list"), ("status", "--json"), ("check", "--json")):
        r = d.cli(*cmd)
        outputs += [r.stdout, r.stderr]

    everything = [*canaries, aws_secret]
    cmdlines = _all_cmdlines()  # while the daemon runs, with its WAL in place
    files = _files_under(d.home)
    assert any(p.name.endswith("-wal") for p in files), "expected the store's WAL beside it"
    assert d.stop() == 0
    files.update(_files_under(d.home))
    log = d.log()
    assert "created personal token" in log and "rpc /qpubroker.v1.TokenService/CreateToken" in log

    for canary in everything:
        needle = canary.encode()
        assert needle not in cmdlines
        for path, data in files.items():
            assert needle not in data, f"secret found in {path}"
        assert canary not in log
        for text in outputs:
            assert canary not in text


def test_store_and_key_file_modes(daemon):
    daemon.broker().qpu_token.create(name="t", provider="ibm", token="s")
    paths = daemon.paths
    for f in (paths.store, paths.key_file):
        assert oct(os.stat(f).st_mode & 0o777) == "0o600", f
    for dirpath in (paths.data_dir, paths.config_dir, paths.runtime_dir):
        assert oct(os.stat(dirpath).st_mode & 0o777) == "0o700", dirpath
    assert oct(os.stat(paths.socket).st_mode & 0o777) == "0o600"
    assert paths.key_file.parent != paths.store.parent
