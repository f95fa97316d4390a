"""`qpu-broker exec` and `qpu-broker env`: unmodified SDKs, with session placeholders for secrets.

exec holds its session for exactly as long as the command runs (the daemon ends it
when this process's stream closes, even if this process is killed); the command's
exit status comes back as ours, and a signal that killed it kills us the same way.
SIGINT and SIGQUIT from a terminal reach the command directly (one process group),
so we ignore them; SIGTERM and SIGHUP sent to us are passed on to it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys

from qpu_broker_client import Broker, QpuToken, TokenProvider
from qpu_broker_client.providers import check_provider

from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.failures import UsageError
from qpu_broker.common.commands import Command

PASSED_ON = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
FROM_THE_TERMINAL = (signal.SIGINT, signal.SIGQUIT)
NOT_FOUND, NOT_RUNNABLE = 127, 126  # a shell's statuses for a command it could not start
# What `env` exported, for `env --end` to unset in the same shell (read from its environment:
# it works after the daemon restarted too). NO_PROXY keeps the user's own entries, so it stays.
SESSION_VARS = "QPU_BROKER_SESSION_VARS"
KEPT = frozenset({"NO_PROXY", "no_proxy"})


def _token_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", action="append", default=[], metavar="PROVIDER=NAME",
                   help="the stored personal token a provider uses (repeatable; default: its only one)")
    p.add_argument("--org-token", action="append", default=[], metavar="PROVIDER=NAME",
                   help="an organization token a provider uses instead (repeatable)")


def _tokens(args: argparse.Namespace) -> TokenProvider | None:
    chosen: dict[str, QpuToken] = {}
    for kind, entries in (("personal", args.token), ("organization", args.org_token)):
        for entry in entries:
            provider, sep, name = entry.partition("=")
            if not sep or not name:
                # Not repeated: a secret given here by mistake must not reach the terminal (cli/arguments.py).
                raise UsageError(f"--{'org-' if kind == 'organization' else ''}token takes PROVIDER=NAME, a stored "
                                 "token's name (a secret is read from a prompt or stdin by 'qpu-broker token add')")
            provider = check_provider(provider)
            if provider in chosen:
                raise UsageError(f"{provider} is given twice: one token per provider in a session")
            chosen[provider] = QpuToken(kind, name=name)
    return TokenProvider.of(chosen) if chosen else None


def _report(skipped: list[str]) -> None:
    for note in skipped:
        print(f"qpu-broker: not in this session: {note}", file=sys.stderr)


def _exec(b: Broker, args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise UsageError("give the command after --, e.g. qpu-broker exec -- python solve.py")
    with b.hold_session(_tokens(args), command=os.path.basename(command[0])) as session:
        _report(session.skipped)
        try:
            child = subprocess.Popen(command, env=session.merged(os.environ))
        except OSError as exc:  # as a shell says it: 127 not found, 126 found but not runnable
            print(f"qpu-broker: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
            return NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_RUNNABLE
        for sig in FROM_THE_TERMINAL:
            signal.signal(sig, signal.SIG_IGN)
        for sig in PASSED_ON:
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        code = child.wait()
    if code < 0:  # killed by a signal: end the same way, so our caller sees what happened
        for sig in (*FROM_THE_TERMINAL, *PASSED_ON):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _env(b: Broker, args: argparse.Namespace) -> int:
    if args.end:
        if args.token or args.org_token:
            raise UsageError("--end takes no --token: it ends every session 'qpu-broker env' opened")
        ended = b.end_session()
        print(f"# ended {ended} session{'' if ended == 1 else 's'}")
        if SESSION_VARS in os.environ:  # a shell that ran `eval "$(qpu-broker env)"`: its lines to eval
            exported = [n for n in os.environ[SESSION_VARS].split() if n.isidentifier() and n not in KEPT]
            for name in (*exported, SESSION_VARS):
                print(f"unset {name}")
        return 0
    session = b.open_session(_tokens(args), command="env")
    _report(session.skipped)
    print(f"# qpu-broker session {session.session_id}: until 'qpu-broker env --end' or 'qpu-broker lock'")
    env = session.merged(os.environ)
    for name in session.unset:
        print(f"unset {name}")
    for name in sorted(session.env):
        print(f"export {name}={shlex.quote(env[name])}")
    print(f"export {SESSION_VARS}={shlex.quote(' '.join(sorted(set(session.env) - KEPT)))}")
    return 0


def _exec_options(p: argparse.ArgumentParser) -> None:
    _token_options(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments, after --")


def _env_options(p: argparse.ArgumentParser) -> None:
    _token_options(p)
    p.add_argument("--end", action="store_true", help="end every session this command opened")


COMMANDS = (
    Command("exec", "run a command whose SDKs reach the providers through the daemon: its environment holds "
                    "session placeholders, never secrets",
            "qpu-broker exec --token dwave='My Leap token' -- python solve.py", on_broker(_exec), _exec_options),
    Command("env", "print a session's variables as export lines (notebooks, services); it lasts until --end or lock",
            "eval \"$(qpu-broker env)\"        # and later: qpu-broker env --end", on_broker(_env), _env_options),
)
