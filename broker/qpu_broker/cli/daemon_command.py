"""`qpu-broker daemon`: its options, and a start that skips the client commands' parser and
imports (start-to-ready is mostly import time: docs/performance.md)."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from qpu_broker.cli.arguments import Parser
from qpu_broker.cli.failures import reported
from qpu_broker.common.commands import Command, epilog


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides agent.log_level")
    p.add_argument("--log-file", type=pathlib.Path, metavar="PATH",
                   help="write the log there (stderr too), capped at agent.log_max_bytes with one older file, "
                        "PATH.1 (default: stderr, as systemd's journal takes it)")


def _run(args: argparse.Namespace) -> int:
    from qpu_broker_client.paths import resolve_paths

    from qpu_broker.common.config import load_config
    from qpu_broker.daemon.log_lines import configure_logging
    from qpu_broker.daemon.main import run as serve

    paths = resolve_paths()
    config = load_config(paths.config_file)
    configure_logging((args.log_level or config.log_level).upper(), args.log_file, config.log_max_bytes)
    return serve(paths, config)


COMMAND = Command("daemon", "run the daemon in the foreground", "qpu-broker daemon --log-level debug", _run, _options)


def main(argv: Sequence[str]) -> int:
    """`qpu-broker daemon ARGS` on its own: the same options, help and errors as through the full parser."""
    parser = Parser(prog="qpu-broker daemon", description=COMMAND.help, epilog=epilog(COMMAND),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    COMMAND.arguments(parser)
    args = parser.parse_args(argv)
    return reported(lambda: COMMAND.run(args))
