"""The `qpu-broker` command: its table, built into argparse, and the one dispatch.

Exit codes: 0 ok; 1 error, with a one-line reason on stderr; 2 usage.
Secrets are read from a no-echo prompt or from stdin, never from argv.
Each command is one entry (common/commands.py) in the module of its group; this file only
lists the groups, in the order help pages and completion show them.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence

from qpu_broker import __version__
from qpu_broker.cli.arguments import Parser
from qpu_broker.cli.failures import UsageError, reported
from qpu_broker.common.commands import Command, Entry, Group, epilog, under

ORG_SERVER = "org-server"  # the org server's own table (orgserver/cli.py) is mounted under this word
ROOT = Group("", "Holds QPU tokens and uses them for you, like ssh-agent.",
             ("qpu-broker token add 'My Leap token' --provider dwave     # reads the secret from a prompt",
              "qpu-broker exec -- python solve.py                       # the SDK gets a placeholder, never the key",
              "qpu-broker status"))


def _own() -> tuple[Entry, ...]:
    """This program's groups, in the order help pages and completion show them."""
    from qpu_broker.cli import (
        agent_commands,
        completion,
        daemon_command,
        doctor_command,
        exec_session,
        import_command,
        org_commands,
        request_command,
        token_commands,
    )

    return (ROOT, daemon_command.COMMAND, *agent_commands.COMMANDS, request_command.COMMAND,
            *exec_session.COMMANDS, import_command.COMMAND, doctor_command.COMMAND, completion.COMMAND,
            *org_commands.COMMANDS, *token_commands.COMMANDS)


def _org_server() -> tuple[Entry, ...]:
    from qpu_broker.orgserver.cli import COMMANDS as ORG_SERVER_COMMANDS

    return under(ORG_SERVER, ORG_SERVER_COMMANDS)


def table(first: str | None = None) -> tuple[Entry, ...]:
    """The entries the command typed (`first`: its first word) may be; all of them for a help
    page, completion, or an unknown word. The groups are imported here, not at the top: an
    `org-server` command never loads the daemon's client (grpc), nor a daemon command the
    server (together 0.2 s of each command's start)."""
    if first == ORG_SERVER:
        return (ROOT, *_org_server())
    own = _own()
    if first is not None and any(e.path == first for e in own):
        return own
    return (*own, *_org_server())


def _word(words: Sequence[str]) -> str | None:
    return words[0] if words and not words[0].startswith("-") else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line. Given the `argv` to parse, only the branch it names is built
    (building every parser was 18 ms of a one-line command); otherwise all of it."""
    words = list(argv or ())
    children: dict[str, list[Entry]] = defaultdict(list)
    for entry in table(_word(words)):
        if entry.path:
            children[entry.path.rpartition(" ")[0]].append(entry)
    parser = Parser(prog="qpu-broker", description=ROOT.help)
    parser.add_argument("--version", action="version", version=f"qpu-broker {__version__}")
    _build(parser, ROOT, children, words)
    return parser


def _build(parser: argparse.ArgumentParser, entry: Entry, children: dict[str, list[Entry]], words: list[str]) -> None:
    """`entry`'s parser: its arguments and handler, or its commands; of those only the one the
    next word names, when it names one (else all, for the help page or the error to list)."""
    parser.set_defaults(_parser=parser)  # each parser's own usage errors (cli/arguments.py)
    parser.epilog = epilog(entry)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if isinstance(entry, Command):
        entry.arguments(parser)
        parser.set_defaults(_run=entry.run)
        return
    sub = parser.add_subparsers(dest="verb" if entry.path else "command", required=True,
                                metavar="VERB" if entry.path else "COMMAND")
    named = [c for c in children[entry.path] if c.path.rpartition(" ")[2] == _word(words)]
    for child in named or children[entry.path]:
        _build(sub.add_parser(child.path.rpartition(" ")[2], help=child.help), child, children,
               words[1:] if named else [])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return reported(lambda: _dispatch(parser, args))


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        return args._run(args) or 0
    except UsageError as exc:
        args._parser.error(str(exc))  # the subcommand's usage, not the top level's
    return 0
