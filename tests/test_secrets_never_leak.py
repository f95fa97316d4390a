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


def _run_on_pty(argv: list[str], env: dict[str, str], answers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Run argv with a pseudo-terminal as its controlling tty, answering prompts."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe(argv[0], argv, env)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        if pending and pending[0][0] in seen:
            os.write(fd, pending.pop(0)[1])
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def test_terminal_prompts_do_not_echo(daemon):
    import sys

    canary = f"canary-tty-{secrets.token_hex(8)}"
    code, screen = _run_on_pty([sys.executable, "-m", "qpu_broker", "token", "add", "tty-token", "--provider", "ionq"],
                               daemon.env, [(b"Secret for ionq token 'tty-token': ", canary.encode() + b"\n")])
    assert code == 0, screen
    assert canary.encode() not in screen  # typed, but never shown
    assert b"name='tty-token' provider='ionq'" in screen
    assert daemon.broker().check().checked == 1

    # Setting a passphrase at a terminal asks twice and refuses a mismatch.
    code, screen = _run_on_pty([sys.executable, "-m", "qpu_broker", "passphrase"], daemon.env,
                               [(b"New passphrase: ", b"one\n"), (b"Again: ", b"two\n")])
    assert code == 1 and b"the two entries differ; nothing was changed" in screen
    assert daemon.broker().status().key_source == "key-file"
