"""The `qpu-broker` command.

Exit codes: 0 ok; 1 error, with a one-line reason on stderr; 2 usage.
Secrets are read from a no-echo prompt or from stdin, never from argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from qpu_broker_client import (
    AlreadyExistsError,
    Broker,
    LockedError,
    NotFoundError,
    QpuBrokerError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
    UnavailableError,
)
from qpu_broker_client.autostart import answers
from qpu_broker_client.luna_env import merged_fields
from qpu_broker_client.paths import resolve_paths
from qpu_broker_client.providers import (
    ENV_HINT,
    PROVIDERS,
    SPLIT_FIELDS,
    check_provider,
)

from qpu_broker import __version__
from qpu_broker.cli.arguments import Parser, seconds
from qpu_broker.cli.daemon_command import EXAMPLE as DAEMON_EXAMPLE
from qpu_broker.cli.daemon_command import HELP as DAEMON_HELP
from qpu_broker.cli.daemon_command import add_options as add_daemon_options
from qpu_broker.cli.daemon_command import run as run_daemon
from qpu_broker.cli.doctor_command import EXAMPLE as DOCTOR_EXAMPLE
from qpu_broker.cli.doctor_command import HELP as DOCTOR_HELP
from qpu_broker.cli.doctor_command import add_options as add_doctor_options
from qpu_broker.cli.doctor_command import cmd_doctor
from qpu_broker.cli.exec_session import UsageError, add_token_options, cmd_env, cmd_exec
from qpu_broker.cli.failures import reported
from qpu_broker.cli.import_command import EXAMPLE as IMPORT_EXAMPLE
from qpu_broker.cli.import_command import HELP as IMPORT_HELP
from qpu_broker.cli.import_command import add_options as add_import_options
from qpu_broker.cli.import_command import cmd_import
from qpu_broker.common.lifetimes import lifetime_arg

TYPES = ("personal", "organization", "group")
JSON_HELP = "machine-readable output"
STOP_WAIT = 60.0  # longer than any sane agent.drain_seconds
_PROVIDER_HELP = f"one of {', '.join(PROVIDERS)} (any case), or a custom provider's name ([providers.custom.NAME])"




def _provider(text: str) -> str:
    """`--provider`: check_provider's answer, without repeating what was typed (cli/arguments.py)."""
    try:
        return check_provider(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a provider: {_PROVIDER_HELP}") from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**31:
        raise argparse.ArgumentTypeError(f"not a whole number from 0 to {2**31 - 1}")
    return int(text)


def _add_selector(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="the token's name")
    p.add_argument("--id", dest="token_id", help="the token's id, instead of its name")
    p.add_argument("--type", default="personal", choices=TYPES, help="token kind (default: personal)")


def _simple_commands(sub: argparse._SubParsersAction, wanted: str | None) -> None:
    """Commands without verbs: each added only when it is `wanted` (None: all)."""

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser | None:
        return sub.add_parser(name, **kwargs) if wanted in (None, name) else None

    if p := add("daemon", help=DAEMON_HELP):
        add_daemon_options(p)
    if p := add("status", help="show the daemon's state (never starts one)"):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    add("stop", help="stop the daemon: in-flight calls finish first, like SIGTERM")
    add("reload", help="have the daemon re-read config.toml, like SIGHUP (a bad file changes nothing)")
    add("lock", help="drop the data key from memory")
    add("unlock", help="load the data key again (asks for the passphrase if there is one)")
    if p := add("passphrase", help="set or change the store's passphrase"):
        p.add_argument("--remove", action="store_true", help="go back to a key file in the config dir")
    if p := add("audit", help="the local audit log: every use and change of personal tokens (never a secret)"):
        p.add_argument("--since", default="", metavar="WHEN", help="from then on: 90s, 15m, 2h, 7d, or a date "
                                                                  "(2026-11-26, 2026-11-26T09:30)")
        p.add_argument("--json", action="store_true", help="one JSON object per line, as stored")
        p.add_argument("--verify", action="store_true", help="check that no entry was edited, removed or cut off "
                                                             "(needs the agent unlocked); exit 1 when one was")
    if p := add("check", help="open every stored secret; report damaged records and a rolled-back store"):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--accept-rollback", action="store_true",
                       help="the store is older than the last one seen, and you put it back on purpose: use it")
    if p := add("request", help="send one request through the daemon, like curl (for debugging)"):
        p.add_argument("url", help="the https URL to send the request to (a host of the provider's)")
        p.add_argument("-X", "--request", dest="method", default=None, help="HTTP method (default GET, or POST with --data)")
        p.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                       help="a request header (repeatable); auth headers are dropped, the daemon adds the real one")
        p.add_argument("-d", "--data", help="the body: a string, @FILE, or @- for stdin")
        p.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
        p.add_argument("-f", "--fail", action="store_true", help="exit 22 on an HTTP status of 400 or more, like curl")
        p.add_argument("--provider", required=True, type=_provider, help=_PROVIDER_HELP)
        which = p.add_mutually_exclusive_group()
        which.add_argument("--token", help="a stored personal token, by name (default: the LUNA_* variable)")
        which.add_argument("--org-token", help="an organization token, by name")
        p.add_argument("--region", help="AWS region to sign for (default: from the host)")
        p.add_argument("--service", help="AWS service to sign for (default: from the host)")
        p.add_argument("--timeout", type=seconds, help="seconds to wait for the provider (default forward.timeout_seconds)")
    if p := add("exec", help="run a command whose SDKs reach the providers through the daemon: "
                             "its environment holds session placeholders, never secrets"):
        add_token_options(p)
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments, after --")
    if p := add("env", help="print a session's variables as export lines (notebooks, services); "
                            "it lasts until --end or lock"):
        add_token_options(p)
        p.add_argument("--end", action="store_true", help="end every session this command opened")
    if p := add("import", help=IMPORT_HELP):
        add_import_options(p)
    if p := add("doctor", help=DOCTOR_HELP):
        add_doctor_options(p)
    if p := add("completion", help="print a shell completion script"):
        p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete for")


def _org_verbs(org: argparse._SubParsersAction, verb: str | None) -> None:
    if verb in (None, "login"):
        p = org.add_parser("login", help="enroll this daemon as a device with an enrollment code (read from a prompt "
                                         "or stdin) an org admin gave you")
        p.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                       help="the org server, e.g. org.example.com:7443; repeat it for each replica of the org "
                            "(the daemon fails over between them)")
        p.add_argument("--ca", type=argparse.FileType("rb"), help="a CA certificate (PEM) to trust for the server")
    if verb in (None, "logout"):
        org.add_parser("logout", help="forget this device's key and drop every org secret")
    if verb in (None, "status"):
        p = org.add_parser("status", help="show the link's state")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if verb in (None, "usage"):
        p = org.add_parser("usage", help="your use of org tokens as the org server recorded it (admins: anyone's)")
        p.add_argument("--member", default="", help="admins: one member's records")
        p.add_argument("--token", default="", help="one org token's records (its name)")
        p.add_argument("--since", default="", metavar="WHEN", help="from then on: 90s, 15m, 2h, 7d, or a date "
                                                                  "(2026-11-26, 2026-11-26T09:30)")
        p.add_argument("--json", action="store_true", help="one JSON object per line")


def _token_verbs(tokens: argparse._SubParsersAction, verb: str | None) -> None:
    def add(name: str, help: str) -> argparse.ArgumentParser | None:
        return tokens.add_parser(name, help=help) if verb in (None, name) else None

    if p := add("add", "store a token; the secret is read from a prompt or stdin"):
        p.add_argument("name", help="a name for it, unique per kind (case-sensitive)")
        p.add_argument("--provider", required=True, type=_provider, help=_PROVIDER_HELP)
        p.add_argument("--type", default="personal", choices=TYPES,
                       help="personal (default), or organization (alias group; org admins only)")
        p.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                       help="refuse its use after this long (90d, 12h, 30m, 3600s), like ssh-add -t")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--cached", action="store_true", help="organization tokens (admins): members' daemons hold "
                                                              "its secret in memory (faster; trusts their machines). "
                                                              "Default: relay, its secret never leaves the org server")
        mode.add_argument("--relay", action="store_true", help="organization tokens: relay (the default; kept for scripts)")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if p := add("list", "list tokens (never their secrets)"):
        p.add_argument("--provider", type=_provider, help="only this provider's tokens")
        p.add_argument("--type", choices=TYPES, help="only this kind (default: both)")
        p.add_argument("--limit", type=_count, help="at most N tokens of each kind")
        p.add_argument("--offset", type=_count, help="skip the first N tokens of each kind")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if p := add("show", "show one token's metadata"):
        _add_selector(p)
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if p := add("rename", "rename a token"):
        _add_selector(p)
        p.add_argument("new_name", metavar="NEW_NAME", help="the new name")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if p := add("rotate", "replace a token's secret in place (same id)"):
        _add_selector(p)
        p.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                       help="a new lifetime from now for the new secret (default: keep the old expiry)")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    if p := add("rm", "delete a token"):
        _add_selector(p)
    if p := add("default", "the personal token exec sessions use when a provider has several"):
        p.add_argument("name", nargs="?", help="the token's name (none: show every provider's default)")
        p.add_argument("--id", dest="token_id", help="the token's id, instead of its name")
        p.add_argument("--clear", metavar="PROVIDER", type=_provider,
                       help="this provider has no default any more")
        p.add_argument("--json", action="store_true", help=JSON_HELP)


# Commands with verbs: (help, where the verb goes, what adds the verbs).
_GROUPS = {
    "org": ("the daemon's link to an organization server", "org_verb", _org_verbs),
    "token": ("manage stored tokens", "verb", _token_verbs),
}


def _word(words: list[str], i: int) -> str | None:
    return words[i] if len(words) > i and not words[i].startswith("-") else None


def _add_commands(sub: argparse._SubParsersAction, words: list[str]) -> None:
    """Every command; or, when `words` name one of ours, only that branch."""
    first, verb = _word(words, 0), _word(words, 1)
    _simple_commands(sub, first)
    for name, (help, dest, add_verbs) in _GROUPS.items():
        if first in (None, name):
            verbs = sub.add_parser(name, help=help).add_subparsers(dest=dest, required=True, metavar="VERB")
            add_verbs(verbs, verb)
            if not verbs.choices:  # not a verb of ours: all of them, for the error to list
                add_verbs(verbs, None)
    if first in (None, "org-server"):
        from qpu_broker.orgserver.cli_parser import add_parser as add_org_server

        add_org_server(sub)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line. Given the `argv` to parse, only the branch it names is built
    (building every parser was 18 ms of a one-line command); otherwise all of it."""
    parser = Parser(prog="qpu-broker", description="Holds QPU tokens and uses them for you, like ssh-agent.")
    parser.add_argument("--version", action="version", version=f"qpu-broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    words = list(argv or ())
    _add_commands(sub, words)
    if not sub.choices:  # not a command of ours: all of them, for the error to list
        _add_commands(sub, [])
    _finish(parser, [])
    return parser


# Every help page ends with examples: one entry per command and per group of commands (the top
# level is ""); org-server's are in its own table (qpu_broker.orgserver.cli_parser.EXAMPLES).
EXAMPLES = {
    "": ("qpu-broker token add 'My Leap token' --provider dwave     # reads the secret from a prompt",
         "qpu-broker exec -- python solve.py                       # the SDK gets a placeholder, never the key",
         "qpu-broker status"),
    "token": ("qpu-broker token add 'My IBM Token' --provider ibm     # reads the secret from a prompt",
              "qpu-broker token list",
              "qpu-broker token rotate 'My IBM Token'"),
    "org": ("qpu-broker org login --server org.example.com:7443 --ca org-ca.pem   # the code from a prompt",
            "qpu-broker org status"),
    "daemon": DAEMON_EXAMPLE,
    "status": "qpu-broker status --json",
    "stop": "qpu-broker stop",
    "reload": "qpu-broker reload        # after editing config.toml",
    "lock": "qpu-broker lock",
    "unlock": "echo \"$PASSPHRASE\" | qpu-broker unlock        # or type it at the prompt",
    "passphrase": "qpu-broker passphrase                       # asks twice on a terminal",
    "check": "qpu-broker check --json",
    "audit": "qpu-broker audit --since 2h; qpu-broker audit --verify",
    "exec": "qpu-broker exec --token dwave='My Leap token' -- python solve.py",
    "env": "eval \"$(qpu-broker env)\"        # and later: qpu-broker env --end",
    "request": "qpu-broker request --provider ionq --token 'My IonQ key' https://api.ionq.co/v0.3/jobs",
    "org login": "qpu-broker org login --server org1.example.com:7443 --server org2.example.com:7443 --ca org-ca.pem",
    "org logout": "qpu-broker org logout",
    "org status": "qpu-broker org status --json",
    "org usage": "qpu-broker org usage --since 7d",
    "token add": "pass show ibm/token | qpu-broker token add 'My IBM Token' --provider ibm --expires-in 90d",
    "token list": "qpu-broker token list --provider ibm --json",
    "token show": "qpu-broker token show 'My IBM Token'",
    "token rename": "qpu-broker token rename 'My IBM Token' 'IBM (old)'",
    "token rotate": "qpu-broker token rotate 'My IBM Token'          # new secret, same id",
    "token rm": "qpu-broker token rm --id 7b02435025f8766562090c70",
    "token default": "qpu-broker token default 'My Leap token'     # exec uses it for dwave",
    "import": IMPORT_EXAMPLE,
    "doctor": DOCTOR_EXAMPLE,
    "completion": "mkdir -p ~/.local/share/bash-completion/completions && "
                  "qpu-broker completion bash > ~/.local/share/bash-completion/completions/qpu-broker",
}


def examples(path: Sequence[str]) -> tuple[str, ...]:
    """The examples the help page of the command at `path` ends with."""
    if path[:1] == ["org-server"]:
        from qpu_broker.orgserver.cli_parser import EXAMPLES as ORG_SERVER_EXAMPLES

        found = ORG_SERVER_EXAMPLES[" ".join(path[1:])]
    else:
        found = EXAMPLES[" ".join(path)]
    return (found,) if isinstance(found, str) else found


def _finish(parser: argparse.ArgumentParser, path: list[str]) -> None:
    """Give every help page its examples, and remember each parser for its own usage errors."""
    parser.set_defaults(_parser=parser)
    shown = examples(path)
    parser.epilog = f"example{'s' if len(shown) > 1 else ''}:\n" + "\n".join(f"  {line}" for line in shown)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for name, child in action.choices.items():
            _finish(child, [*path, name])


# -- input and output -------------------------------------------------------
def read_secret(prompt: str, *, confirm: bool = False) -> str:
    """From a no-echo prompt on a terminal (twice when `confirm`), else exactly one line of stdin."""
    if sys.stdin.isatty():
        value = _prompt(prompt)
        if confirm and _prompt("Again: ") != value:
            raise QpuBrokerError("the two entries differ; nothing was changed")
    else:
        lines = sys.stdin.read().splitlines()
        if any(line.strip() for line in lines[1:]):
            raise QpuBrokerError(f"stdin holds {len(lines)} lines: pipe the secret (or passphrase) on one line, "
                                 "once (a terminal asks twice; a pipe gives it once)")
        value = lines[0] if lines else ""
    if not value:
        raise QpuBrokerError("no secret given: type it at the prompt, or pipe it on stdin")
    return value


def _prompt(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:  # Ctrl-D: the line getpass leaves open is ended, then one line says so
        print(file=sys.stderr)
        raise QpuBrokerError("nothing was entered (the input ended at the prompt); nothing was changed") from None


def _time(value: datetime.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _expires(value: datetime.datetime | None) -> str:
    """A listing's EXPIRES: an expired token stays listed (an org's until an admin renews it), marked."""
    if value is None:
        return "never"
    return f"{'expired ' if value <= datetime.datetime.now(datetime.UTC) else ''}{_time(value)}"


def token_json(token: QpuToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "provider": token.provider, "token_type": token.token_type.value,
            "created_at": _time(token.created_at), "updated_at": _time(token.updated_at),
            "expires_at": _time(token.expires_at), **({"mode": token.mode} if token.mode else {})}


def _print_token(token: QpuToken, as_json: bool) -> None:
    if as_json:
        print(json.dumps(token_json(token)))
    else:
        print(token)


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- commands ----------------------------------------------------------------
def _selector(args: argparse.Namespace) -> dict[str, Any]:
    if (args.name is None) == (args.token_id is None):
        raise UsageError("name the token by NAME or by --id ID (one of them)")
    if args.token_id is not None:
        return {"qpu_token_id": args.token_id, "token_type": args.type}
    return {"qpu_token_name": args.name, "token_type": args.type}


def cmd_status(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    if args.json:
        print(json.dumps({**s.__dict__, "org": dataclasses.asdict(b.org_status())}))
        return
    print(f"qpu-broker {s.version}, pid {s.pid}, up {s.uptime_seconds:.0f} s, socket {s.socket_path}")
    print(f"state: {'locked - ' + s.lock_reason if s.locked else 'unlocked'}")
    print(f"key: {s.key_source}{' (memory locked)' if s.key_memory_locked else ''}; store: {s.store_path} "
          f"({s.personal_tokens} personal token{'' if s.personal_tokens == 1 else 's'})")
    for warning in s.warnings:
        print(f"warning: {warning}")
    _print_org(b.org_status(), False)


def cmd_stop(b: Broker, args: argparse.Namespace) -> int:
    try:
        pid = b.status().pid
        b.stop()
    except UnavailableError:
        print(f"no qpu-broker daemon is running on {b.socket}")
        return 0
    deadline = time.monotonic() + STOP_WAIT
    paths = dataclasses.replace(resolve_paths(), socket=pathlib.Path(b.socket))
    while answers(paths):
        if time.monotonic() > deadline:
            print(f"qpu-broker: the daemon (pid {pid}) is still draining after {STOP_WAIT:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.02)  # polling the socket of a process that is exiting, with a deadline
    print(f"stopped the daemon (pid {pid})")
    return 0


def cmd_reload(b: Broker, args: argparse.Namespace) -> None:
    b.reload()
    print("config reloaded")


def cmd_unlock(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    if not s.locked:
        print("already unlocked")
        return
    b.unlock(read_secret("Passphrase: ") if s.key_source == "passphrase" else None)
    print("unlocked")


def _unlocked(s: Any) -> None:
    """Before a prompt: a locked agent would refuse what was typed, after it was typed."""
    if s.locked:
        raise LockedError(f"the agent is locked ({s.lock_reason}); nothing was asked for or changed")


def cmd_passphrase(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    has_one = s.key_source == "passphrase"
    # What can be checked is, before any prompt. A locked passphrase store is unlocked by the old one.
    if not has_one:
        _unlocked(s)
    elif not args.remove and not sys.stdin.isatty():
        raise QpuBrokerError("changing a passphrase needs a terminal for both entries (a pipe gives one); "
                             "nothing was read")
    old = read_secret("Current passphrase: ") if has_one else None
    if args.remove:
        source = b.change_passphrase(old, None)
    else:
        source = b.change_passphrase(old, read_secret("New passphrase: ", confirm=True))
    print(f"the data key is now wrapped by: {source}")


def cmd_audit(b: Broker, args: argparse.Namespace) -> int:
    if args.verify:
        verdict = b.verify_audit()
        if args.json:
            print(json.dumps(verdict.__dict__))
        elif verdict.problem:
            print(f"audit log {verdict.path}: NOT intact after entry {verdict.entries}: {verdict.problem}")
        else:
            print(f"audit log {verdict.path}: intact, {verdict.entries} entries")
        return 1 if verdict.problem else 0
    from qpu_broker.common.since import parse_since
    from qpu_broker.tokens.audit_log import entries, entry_line

    since = parse_since(args.since, int(time.time() * 1e6)) if args.since else 0
    for entry in entries(resolve_paths().audit_log):
        if entry.get("at_us", 0) >= since:
            print(json.dumps(entry, sort_keys=True) if args.json else entry_line(entry))
    return 0


def cmd_check(b: Broker, args: argparse.Namespace) -> int:
    try:
        result = b.check(accept_rollback=args.accept_rollback)
    except LockedError:
        if not args.accept_rollback:
            raise
        # Accepted; a passphrase store then waits for its passphrase before its records can be opened.
        print("the store is accepted as it is; it is locked: run 'qpu-broker unlock', then 'qpu-broker check'")
        return 0
    if args.json:
        print(json.dumps({"checked": result.checked, "damaged": [d.__dict__ for d in result.damaged],
                          "rollback": result.rollback}))
    elif result.rollback:
        print(f"rollback: {result.rollback}")
        return 1
    else:
        for d in result.damaged:
            print(f"damaged: id={d.id!r} name={d.name!r} provider={d.provider!r}: {d.reason}")
        print(f"{result.checked} checked, {len(result.damaged)} damaged")
    return 1 if result.damaged or result.rollback else 0


def cmd_token(b: Broker, args: argparse.Namespace) -> None:
    api = b.qpu_token
    if args.verb == "add":
        if QpuTokenType.parse(args.type) is QpuTokenType.PERSONAL:  # what can be checked, before the prompt
            _unlocked(b.status())
            try:
                api.get(args.name)
            except NotFoundError:
                pass
            else:
                raise AlreadyExistsError(f"a personal token named {args.name!r} exists: choose another name, or "
                                         f"replace its secret with 'qpu-broker token rotate {args.name}'")
        secret = read_secret(f"Secret for {args.provider} token {args.name!r}: ")
        _print_token(api.create(name=args.name, provider=args.provider, token=secret, token_type=args.type,
                                expires_in=args.expires_in, cached=True if args.cached else None), args.json)
    elif args.verb == "list":
        groups = api.get_all(filter_provider=args.provider, token_type=args.type, limit=args.limit, offset=args.offset)
        if args.json:
            print(json.dumps({kind.value: [token_json(t) for t in tokens] for kind, tokens in groups.items()}))
            return
        rows = [[t.token_type.value, t.mode or "-", t.name or "", t.provider or "", t.id or "", _time(t.updated_at),
                 _expires(t.expires_at)] for tokens in groups.values() for t in tokens]
        if rows:
            _print_table([["KIND", "MODE", "NAME", "PROVIDER", "ID", "UPDATED", "EXPIRES"], *rows])
        else:
            print("no tokens")
        _print_quotas(b, [t.name for t in groups.get(QpuTokenType.ORGANIZATION, ())])
    elif args.verb == "show":
        sel = _selector(args)
        token = api.get(sel.get("qpu_token_name"), sel["token_type"], qpu_token_id=sel.get("qpu_token_id"))
        _print_token(token, args.json)
    elif args.verb == "rename":
        _print_token(api.update(name=args.new_name, **_selector(args)), args.json)
    elif args.verb == "rotate":
        sel = _selector(args)
        api.get(sel.get("qpu_token_name"), sel["token_type"], qpu_token_id=sel.get("qpu_token_id"))  # it exists
        if QpuTokenType.parse(args.type) is QpuTokenType.PERSONAL:
            _unlocked(b.status())
        secret = read_secret(f"New secret for {args.name or args.token_id!r}: ")
        _print_token(api.update(token=secret, expires_in=args.expires_in, **sel), args.json)
    elif args.verb == "rm":
        api.delete(**_selector(args))
        print(f"deleted {args.name or args.token_id!r}")
    elif args.verb == "default":
        if args.clear and (args.name or args.token_id):
            raise UsageError("give a token to make it the default, or --clear PROVIDER: not both")
        if args.clear:
            defaults = api.clear_default(args.clear)
        elif args.name or args.token_id:
            defaults = api.set_default(args.name, qpu_token_id=args.token_id)
        else:
            defaults = api.defaults()
        if args.json:
            print(json.dumps(defaults))
        elif defaults:
            _print_table([["PROVIDER", "DEFAULT"], *sorted([p, n] for p, n in defaults.items())])
        else:
            print("no defaults: a provider with one personal token uses it; with several, exec asks for --token")


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise QpuBrokerError(f"cannot read --data file {data[1:]}: {exc.strerror}") from None
    return data.encode()


def cmd_request(b: Broker, args: argparse.Namespace) -> int:
    headers = []
    for raw in args.headers:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"a header is 'Name: value', not {raw!r}")
        headers.append((name.strip(), value.strip()))
    tokens = None
    if args.token or args.org_token:
        kind = "personal" if args.token else "organization"
        tokens = TokenProvider.of({args.provider: QpuToken(kind, name=args.token or args.org_token)})
    elif not (merged_fields(None).keys() & {args.provider, *SPLIT_FIELDS.get(args.provider, ())}):
        # The daemon would answer with the Python API's way (qpu_tokens=...): say the command's.
        var = f", or set {ENV_HINT[args.provider]}" if args.provider in ENV_HINT else ""
        raise UsageError(f"which {args.provider} token? give --token NAME (yours: 'qpu-broker token list --provider "
                         f"{args.provider}') or --org-token NAME{var}")
    body = _body(args.data)
    r = b.forward(args.method or ("POST" if args.data is not None else "GET"), args.url, provider=args.provider,
                  headers=headers, body=body, qpu_tokens=tokens, timeout=args.timeout,
                  region=args.region, service=args.service)
    out = sys.stdout.buffer
    if args.include:
        out.write(f"{r.http_version or 'HTTP/1.1'} {r.status_code}\r\n".encode())
        for name, value in r.headers.multi_items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n")
    out.write(r.content)
    out.flush()
    return 22 if args.fail and r.status_code >= 400 else 0


def _print_quotas(b: Broker, org_names: list[str]) -> None:
    """Under a token list with org tokens: what the member's quotas leave them."""
    if not org_names:
        return
    from qpu_broker_client.usage import quota_line

    for q in b.org_status().quotas:
        if not q.token_id or q.token_name in org_names:
            print(quota_line(q))


def _print_org(s, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(s)))
        return
    if s.state == "not-logged-in":
        print("organization: not logged in ('qpu-broker org login --server HOST:PORT')")
        return
    if s.state in ("removed", "key-revoked"):
        print(f"organization: {s.detail} (server {s.server})")
        return
    who = f"{s.user} ({s.role}) in {s.org!r}" if s.user else "(not yet known)"
    print(f"organization: {s.state} - {s.server}, {who}, {s.tokens} org token{'' if s.tokens == 1 else 's'}")
    if s.device_id:
        print(f"  device {s.device_id}, expires "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(s.device_expires_us / 1e6)) if s.device_expires_us else 'never'}")
    if len(s.servers) > 1:
        mark = " (connected)" if s.state == "connected" else " (trying)" if s.state != "locked" else ""
        print("  servers: " + ", ".join(f"{x}{mark if x == s.server else ''}" for x in s.servers))
    if s.state in ("disconnected", "unavailable"):
        print(f"  last contact {s.seconds_since_contact:.0f} s ago; grace period {s.grace_seconds:.0f} s")
    if s.detail:
        print(f"  {s.detail}")
    for names, said in ((s.relay_tokens, "relay (their secrets stay on the org server)"),
                        (s.cached_tokens, "cached (their secrets are held by this daemon, in memory)")):
        if names:
            print(f"  {said}: {', '.join(names)}")
    if s.usage_waiting:
        print(f"  {s.usage_waiting} usage record{'' if s.usage_waiting == 1 else 's'} waiting to reach the server "
              "(kept on disk, sent when it answers)")
    if s.quotas:
        from qpu_broker_client.usage import quota_line

        for q in s.quotas:
            print(f"  {quota_line(q)}")


def cmd_org(b: Broker, args: argparse.Namespace) -> None:
    if args.org_verb == "login":
        from qpu_broker.common.org_servers import parse_servers

        servers = parse_servers(args.server)  # before the code is asked for
        key = read_secret(f"enrollment code for {', '.join(servers)}: ")
        ca = args.ca.read() if args.ca else b""
        _print_org(b.org_login(list(servers), key.strip(), ca_pem=ca), False)
    elif args.org_verb == "logout":
        b.org_logout()
        print("logged out; organization secrets dropped")
    elif args.org_verb == "usage":
        _print_usage(b, args)
    else:
        _print_org(b.org_status(), args.json)


def _print_usage(b: Broker, args: argparse.Namespace) -> None:
    from qpu_broker_client.usage import usage_dict, usage_line

    from qpu_broker.common.since import parse_since

    since = parse_since(args.since, int(time.time() * 1e6)) if args.since else 0
    page = None
    while page is None or page.more:  # page through from where each read stopped, matched or not
        page = b.org_usage_page(member=args.member, token=args.token, since_us=since,
                                after_seq=page.after_seq if page else 0)
        for r in page.records:
            print(json.dumps(usage_dict(r)) if args.json else usage_line(r), flush=True)


def cmd_lock(b: Broker, args: argparse.Namespace) -> None:
    b.lock()
    print("locked")


COMMANDS: dict[str, Callable[[Broker, argparse.Namespace], int | None]] = {
    "status": cmd_status,
    "stop": cmd_stop,
    "reload": cmd_reload,
    "lock": cmd_lock,
    "unlock": cmd_unlock,
    "passphrase": cmd_passphrase,
    "check": cmd_check,
    "audit": cmd_audit,
    "request": cmd_request,
    "exec": cmd_exec,
    "env": cmd_env,
    "org": cmd_org,
    "token": cmd_token,
    "import": cmd_import,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return reported(lambda: _dispatch(parser, args))


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.command == "daemon":
            return run_daemon(args)
        if args.command == "completion":
            from qpu_broker.cli.completion import script

            print(script(build_parser(), args.shell), end="")  # every command, not the one parsed
            return 0
        if args.command == "org-server":
            from qpu_broker.orgserver.cli import run as run_org_server

            return run_org_server(args)
        # status, stop and doctor report on a daemon; they never start one.
        with Broker(autostart=False if args.command in ("status", "stop", "doctor") else None) as broker:
            return COMMANDS[args.command](broker, args) or 0
    except UsageError as exc:
        getattr(args, "_parser", parser).error(str(exc))  # the subcommand's usage, not the top level's
    return 0
