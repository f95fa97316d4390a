"""What a user meets when they get a command wrong (issue 23): one line, the exit status a
shell gives the same event, no traceback, no secret repeated, and hints that point the
right way. Real CLI processes against a real daemon and org server; prompts in a pty."""

from __future__ import annotations

import argparse
import os
import pty
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from conftest import DEADLINE
from qpu_broker.cli.arguments import STRAY
from qpu_broker_client import QpuTokenType

CANARY = f"sk-{secrets.token_hex(8)}"  # a secret typed where an argument goes


# -- usage errors never repeat what was typed --------------------------------
def _leaves(parser: argparse.ArgumentParser, path: list[str]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, [*path, name])
    if not subs:
        yield path, parser


def _fits(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """A value the argument takes (its first choice, or the first of a few that convert)."""
    if action.choices:
        return str(next(iter(action.choices)))
    for value in ("ibm", "1", "1d", "/dev/null", "127.0.0.1:0"):
        try:
            parser._get_value(action, value)
            return value
        except argparse.ArgumentError:
            continue
    raise AssertionError(f"no value fits {action.dest}")


def _valid_argv(path: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The shortest command line the verb accepts: its required options, a group's first, its positionals."""
    argv = list(path)
    needed = [a for a in parser._actions if a.required and a.option_strings]
    needed += [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for action in needed:
        argv += [action.option_strings[0]] + ([] if action.nargs == 0 else [_fits(parser, action)])
    for action in parser._actions:
        if not action.option_strings:
            argv.append(_fits(parser, action))
    return argv


def test_a_stray_word_is_refused_by_every_verb_under_its_usage_and_never_repeated(capsys, monkeypatch):
    """`token add mytok --provider ibm sk-…`, on every verb: argparse said "unrecognized arguments: sk-…"
    under the top-level usage. In process (it never reaches a daemon), the real parser of each verb."""
    from qpu_broker.cli.main import build_parser, main

    monkeypatch.delenv("QPU_ORG_DATA", raising=False)
    # Should a command line parse, it must not reach (or start) a daemon of the user's.
    monkeypatch.setenv("QPU_BROKER_HOME", "/nonexistent/qpu-broker-home")
    monkeypatch.setenv("QPU_BROKER_NO_AUTOSTART", "1")
    monkeypatch.delenv("QPU_BROKER_SOCKET", raising=False)
    leaves = list(_leaves(build_parser(), []))
    assert len(leaves) > 40
    for path, parser in leaves:
        if any(a.nargs in ("*", "+", argparse.REMAINDER) for a in parser._actions if not a.option_strings):
            continue  # exec's command, user add's names: any number of words is what these take
        for stray in ([CANARY], [f"--secret={CANARY}"]):
            with pytest.raises(SystemExit) as exit_:
                main([*_valid_argv(path, parser), *stray])
            out, err = capsys.readouterr()
            assert exit_.value.code == 2, (path, err)
            assert err.startswith(f"usage: qpu-broker {' '.join(path)} "), (path, err)
            assert STRAY in err and CANARY not in err + out, (path, err)


@pytest.mark.parametrize("argv", [
    ["sk-X"],  # as a command
    ["token", "sk-X"],  # as a verb
    ["token", "list", "--type", "sk-X"],  # as a choice
    ["token", "list", "--limit", "sk-X"],  # as a number
    ["token", "list", "--provider", "sk X"],  # as a provider
    ["token", "add", "t", "--provider", "ibm", "--expires-in", "sk-X"],  # as a lifetime
    ["token", "list", "--json=sk-X"],  # as a flag's value
    ["request", "--provider", "ibm", "--t=sk-X", "https://x"],  # as an ambiguous prefix
    ["org", "login", "--server", "h:1", "--ca", "/nonexistent/sk-X"],  # as a file
    ["org-server", "quota", "rm", "--data", "/d", "sk-X"],  # as an int
    ["org-server", "user", "set-role", "--data", "/d", "bob", "sk-X"],  # as a positional choice
])
def test_a_bad_value_is_named_by_its_argument_never_repeated(argv, capsys):
    from qpu_broker.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "sk-X" not in err and "sk X" not in err, err
    assert err.splitlines()[-1].startswith("qpu-broker"), err


def test_the_daemon_command_refuses_a_stray_word_the_same_way(capsys):
    from qpu_broker.cli.daemon_command import main

    with pytest.raises(SystemExit) as exit_:
        main([CANARY])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: qpu-broker daemon") and CANARY not in err


def test_a_secret_typed_as_an_argument_reaches_no_output_log_or_store(daemon):
    r = daemon.cli("token", "add", "mytok", "--provider", "ibm", CANARY)
    assert r.returncode == 2 and r.stderr.startswith("usage: qpu-broker token add"), r.stderr
    assert "read from a prompt or stdin" in r.stderr
    as_token = daemon.cli("exec", "--token", CANARY, "--", "true")  # a secret where a token's name goes
    assert as_token.returncode == 2 and "PROVIDER=NAME" in as_token.stderr
    prefix = daemon.cli("request", "--provider", "ibm", f"--to={CANARY}", "https://quantum.cloud.ibm.com/")
    assert prefix.returncode == 2, prefix.stderr  # not taken as --token (no option prefixes)
    for said in (r, as_token, prefix):
        assert CANARY not in said.stdout + said.stderr
    assert CANARY not in daemon.log() and not daemon.broker().qpu_token.get_all()[QpuTokenType.PERSONAL]
    for path in daemon.home.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


# -- prompts: Ctrl-D and Ctrl-C -------------------------------------------------
def _in_pty(argv: list[str], env: dict[str, str], prompt: str | None = None,
            key: bytes | Callable[[int], None] = b"") -> tuple[str, int]:
    """Run the CLI on a terminal; when `prompt` shows, type `key` (or call it with the CLI's pid).
    (output, exit code as a shell shows it; a CLI still running at the deadline is killed, and
    the output says so: never a read that waits past it)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, its stdin, stdout and stderr the terminal
        os.execve(sys.executable, [sys.executable, "-m", "qpu_broker", *argv], env)
    out, sent, deadline = b"", prompt is None, time.monotonic() + DEADLINE
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and prompt.encode() in out:
                if callable(key):
                    key(pid)
                else:
                    os.write(fd, key)  # the terminal buffers it until the prompt reads
                sent = True
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            out += f"\n[still running after {DEADLINE} s: killed]".encode()
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    return out.decode(errors="replace"), 128 - code if code < 0 else code


@pytest.mark.parametrize(("argv", "prompt"), [
    (["token", "add", "t", "--provider", "ibm"], "Secret for ibm token"),
    (["passphrase"], "New passphrase: "),
    (["org", "login", "--server", "127.0.0.1:1"], "enrollment code for"),
])
def test_ctrl_d_at_a_prompt_is_one_line_and_changes_nothing(daemon, argv, prompt):
    out, code = _in_pty(argv, daemon.env, prompt, b"\x04")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in out and "EOFError" not in out, out
    assert lines[-1] == "qpu-broker: nothing was entered (the input ended at the prompt); nothing was changed", out
    assert daemon.broker().status().key_source == "key-file"
    assert not daemon.broker().qpu_token.get_all()[QpuTokenType.PERSONAL]


def test_ctrl_c_at_a_prompt_exits_130_quietly(daemon):
    daemon.broker().qpu_token.create(name="mine", provider="ibm", token="old-secret")
    out, code = _in_pty(["token", "rotate", "mine"], daemon.env, "New secret for", b"\x03")
    assert code == 130 and out.strip().startswith("New secret for") and "qpu-broker:" not in out, out


def test_ctrl_c_at_a_prompt_ends_it_whichever_thread_the_kernel_hands_the_sigint_to(daemon):
    """The kernel may deliver a process's SIGINT to any thread (grpc's, when the main thread has a
    signal pending: a CI run once hung here for 300 s). Sent to one of grpc's threads on purpose,
    it must still end the prompt at once, as Ctrl-C does."""
    import ctypes

    tgkill = ctypes.CDLL(None, use_errno=True).tgkill

    def sigint_to_another_thread(pid: int) -> None:
        others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert others, "the CLI has no other thread to hand it to"
        assert tgkill(pid, others[0], signal.SIGINT) == 0, ctypes.get_errno()

    daemon.broker().qpu_token.create(name="mine", provider="ibm", token="old-secret")
    out, code = _in_pty(["token", "rotate", "mine"], daemon.env, "New secret for", sigint_to_another_thread)
    assert code == 130 and out.strip().startswith("New secret for") and "qpu-broker:" not in out, out


def test_exec_ctrl_c_ends_as_the_command_did_and_a_missing_command_is_127(daemon, short_tmp):
    daemon.broker().qpu_token.create(name="mine", provider="ibm", token="s")
    ready = "echo ready; exec sleep 30"
    out, code = _in_pty(["exec", "--", "sh", "-c", ready], daemon.env, "ready\r\n", b"\x03")
    assert code == 130, out
    missing = daemon.cli("exec", "--", "no-such-command-here")
    assert missing.returncode == 127 and missing.stderr == (
        "qpu-broker: cannot run 'no-such-command-here': No such file or directory\n"), missing.stderr
    (short_tmp / "not-runnable").write_text("echo hi\n")
    denied = daemon.cli("exec", "--", str(short_tmp / "not-runnable"))
    assert denied.returncode == 126 and denied.stderr.count("\n") == 1, denied.stderr


# -- a reader that goes away: `status | head -1` --------------------------------
def test_a_closed_pipe_ends_every_printing_verb_by_sigpipe_silently(daemon, org_data):
    daemon.broker().qpu_token.create(name="mine", provider="ibm", token="s")
    for argv in (["status"], ["token", "list"], ["audit"], ["org", "status"], ["completion", "bash"], ["--help"],
                 ["token", "add", "--help"], ["org-server", "user", "list"], ["org-server", "audit"]):
        read, write = os.pipe()
        os.close(read)  # the reader left before the first line: every write finds the pipe closed
        proc = subprocess.run([sys.executable, "-m", "qpu_broker", *argv], stdout=write, stderr=subprocess.PIPE,
                              env={**daemon.env, "QPU_ORG_DATA": str(org_data)}, timeout=DEADLINE, check=False)
        os.close(write)
        assert proc.returncode == -signal.SIGPIPE and proc.stderr == b"", (argv, proc.returncode, proc.stderr)


@pytest.fixture
def org_data(short_tmp):
    """An org's data dir (init, not served)."""
    from testsupport.orgserver import OrgServer

    return OrgServer(short_tmp / "org", None).data


# -- org-server serve: the real cause, in one line ------------------------------
def _serve(data, listen: str, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "serve", "--data", str(data),
                           "--listen", listen, *more], capture_output=True, text=True, timeout=DEADLINE, check=False)


def test_serve_names_a_taken_port_a_foreign_address_and_a_missing_data_dir(org_data, short_tmp):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = _serve(org_data, f"127.0.0.1:{holder.getsockname()[1]}")
    assert taken.returncode == 1 and taken.stderr.count("\n") == 1, taken.stderr
    assert "Address already in use; another process listens on that port" in taken.stderr
    # Plain text off loopback is refused, pointing at the verb that makes TLS files for this data dir.
    clear = _serve(org_data, "192.0.2.1:7443")
    assert clear.returncode == 1 and f"'qpu-broker org-server tls issue --data {org_data} --tls-host NAME'" in clear.stderr
    issued = subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "tls", "issue", "--data", str(org_data),
                             "--tls-host", "192.0.2.1"], capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert issued.returncode == 0 and (org_data / "tls" / "ca.pem").exists(), issued.stderr
    foreign = _serve(org_data, "192.0.2.1:7443")  # TLS now; the address is not this machine's
    assert foreign.returncode == 1 and foreign.stderr.count("\n") == 1, foreign.stderr
    assert "192.0.2.1:7443: Cannot assign requested address; the host is not an address of this machine" in foreign.stderr
    missing = _serve(short_tmp / "missing", "127.0.0.1:0")
    assert missing.returncode == 1 and missing.stderr == (
        f"qpu-broker: no org server in {short_tmp / 'missing'}: run 'qpu-broker org-server init --data "
        f"{short_tmp / 'missing'}'\n"), missing.stderr
    for said in (taken, clear, foreign, missing):
        assert "Traceback" not in said.stderr and "lock" not in said.stderr


def test_org_server_verbs_take_their_data_dir_from_qpu_org_data(org_data, short_tmp):
    def users(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "user", "list"], capture_output=True,
                              text=True, timeout=DEADLINE, check=False,
                              env={**{k: v for k, v in os.environ.items() if k != "QPU_ORG_DATA"}, **env})

    assert users({"QPU_ORG_DATA": str(org_data)}).stdout == "admin   alice\n"
    neither = users({})
    assert neither.returncode == 2 and "required: --data" in neither.stderr


# -- errors Python users get: once ---------------------------------------------
def test_a_client_error_arrives_once_not_under_grpcs(daemon):
    from qpu_broker_client import NotFoundError

    with pytest.raises(NotFoundError) as caught:
        daemon.broker().qpu_token.get("nope")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    script = ("from qpu_broker_client import Broker\n"
              f"Broker({str(daemon.paths.socket)!r}, autostart=False).qpu_token.get('nope')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=daemon.env,
                       timeout=DEADLINE, check=False)
    assert r.stderr.count("Traceback") == 1 and "_InactiveRpcError" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith("qpu_broker_client.errors.NotFoundError: no personal token named")


# -- check first, then ask ------------------------------------------------------
def test_what_can_be_checked_is_checked_before_a_secret_is_asked_for(daemon):
    """Each input is empty: a command that asked first would say "no secret given" instead."""
    daemon.broker().qpu_token.create(name="mine", provider="ibm", token="s")
    nope = daemon.cli("token", "rotate", "nope")
    assert nope.returncode == 1 and "no personal token named 'nope'" in nope.stderr, nope.stderr
    taken = daemon.cli("token", "add", "mine", "--provider", "ibm")
    assert taken.returncode == 1 and "'qpu-broker token rotate mine'" in taken.stderr, taken.stderr
    daemon.broker().lock()
    for argv in (["token", "add", "new", "--provider", "ibm"], ["token", "rotate", "mine"], ["passphrase"]):
        r = daemon.cli(*argv)
        assert r.returncode == 1 and "the agent is locked" in r.stderr, (argv, r.stderr)


def test_an_org_tokens_name_without_type_points_at_type_organization(make_daemon, org):
    from conftest import wait_for

    d = make_daemon().start()
    d.broker().org_login(org.address, org.admin_code, ca_pem=org.ca.ca_file.read_bytes())
    wait_for(lambda: d.broker().org_status().state == "connected", "the org link")
    d.broker().qpu_token.create(name="Org IonQ", provider="ionq", token="s", token_type="organization")
    wait_for(lambda: d.broker().org_status().tokens == 1, "the org token on the link")
    r = d.cli("token", "show", "Org IonQ")
    assert r.returncode == 1 and r.stderr.strip().endswith(
        "it is an organization token: add --type organization (in Python, token_type='organization')"), r.stderr
    assert d.cli("token", "show", "Org IonQ", "--type", "organization").returncode == 0


# -- hints that point the right way ---------------------------------------------
def test_hints_name_the_cli_way_the_right_key_and_only_a_variable_that_is_set(make_daemon):
    d = make_daemon().start()
    d.broker().qpu_token.create(name="one", provider="ionq", token="s")
    d.broker().qpu_token.create(name="two", provider="ionq", token="s")
    which = d.cli("request", "--provider", "ionq", "https://api.ionq.co/v0.3/jobs")
    assert which.returncode == 2 and "give --token NAME" in which.stderr and "qpu_tokens" not in which.stderr
    plain = d.cli("request", "--provider", "ionq", "--token", "one", "http://127.0.0.1:9/x")
    assert "add it to [providers.ionq] plain_http_hosts in your config" in plain.stderr, plain.stderr
    d.stop()
    unset = {"QPU_BROKER_NO_AUTOSTART": ""}
    status = d.cli("status", env=unset)  # status never starts a daemon, whatever the variable says
    assert status.returncode == 1 and "unset" not in status.stderr, status.stderr
    off = d.cli("token", "list")  # the harness sets QPU_BROKER_NO_AUTOSTART=1: that is what kept one from starting
    assert off.returncode == 1 and "or unset QPU_BROKER_NO_AUTOSTART" in off.stderr, off.stderr


# -- the verbs the README does not walk through, given bad input -------------------
def test_bad_input_to_the_less_travelled_verbs_is_one_line_and_changes_nothing(daemon, org_data):
    daemon.broker().qpu_token.create(name="mine", provider="ionq", token="s")
    for argv in (["doctor", "--from", "/nonexistent/.env"], ["import", "--from", "/nonexistent/.env"]):
        r = daemon.cli(*argv)  # a file named and not read was skipped: "nothing to fix"
        assert r.returncode == 2 and r.stderr.endswith("argument --from: cannot open the file: No such file or "
                                                       "directory\n"), r.stderr
    nan = daemon.cli("request", "--provider", "ionq", "--token", "mine", "--timeout", "nan", "https://api.ionq.co/x")
    assert nan.returncode == 2 and "argument --timeout: not a number of seconds above 0" in nan.stderr, nan.stderr
    env = {**daemon.env, "QPU_ORG_DATA": str(org_data)}
    clear = subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "provider", "clear", "ibmm"],
                           capture_output=True, text=True, env=env, timeout=DEADLINE, check=False)
    assert clear.stdout == "ibmm: no org-wide settings to clear (see 'org-server provider show'); nothing changed\n"
    record = subprocess.run([sys.executable, "-m", "qpu_broker", "org-server", "audit", "--action", "provider"],
                            capture_output=True, text=True, env=env, timeout=DEADLINE, check=False)
    assert record.returncode == 0 and record.stdout == "", record.stdout  # no change recorded
