"""argparse, with usage errors that never repeat what was typed.

A secret typed as an argument (`qpu-broker token add mytok --provider ibm sk-…`, as Luna
users will try) must not come back on the terminal, in its scrollback or in a CI log.
argparse's own errors quote it ("unrecognized arguments: sk-…", "invalid choice: 'sk-…'",
"invalid int value: 'sk-…'"), and report a subcommand's stray words under the top-level
usage. Every parser of ours is this class (subparsers inherit it), so no command can
forget: an error names the argument and what it takes, under the usage of the command
that was typed, and never the words themselves.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from qpu_broker_client.providers import PROVIDERS, check_provider

# Said with every stray word: why it is not shown, and where a secret goes instead.
STRAY = ("not repeated here, in case it is a secret: secrets are read from a prompt or stdin, "
         "never from the command line")
# What a built-in `type=` takes, for its error (argparse would quote the value instead).
_WANTED = {int: "a whole number", float: "a number"}
JSON_HELP = "machine-readable output"
PROVIDER_HELP = f"one of {', '.join(PROVIDERS)} (any case), or a custom provider's name ([providers.custom.NAME])"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        # No prefixes of long options: `--to=sk-…` would be taken as `--token sk-…`, and an
        # ambiguous prefix's error quotes the word whole.
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, stray = self.parse_known_args(args, namespace)
        if stray:
            # The deepest parser that took part (each sets `_parser`): its usage, not the top level's.
            n = len(stray)
            getattr(parsed, "_parser", self).error(f"{n} argument{'s' if n > 1 else ''} it does not take ({STRAY})")
        return parsed

    def _parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._parse_known_args(*args, **kwargs)
        except argparse.ArgumentError as exc:
            if exc.message.startswith("ignored explicit argument"):  # `--json=sk-…`: argparse quotes the value
                raise argparse.ArgumentError(None, f"argument {exc.argument_name}: takes no value") from None
            raise

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:  # argparse drops a failed write: a closed pipe must end the command (cli/failures.py)
            (file or sys.stderr).write(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, f"not one of {', '.join(map(str, action.choices))}")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as exc:
            cause = exc.__context__
            if isinstance(cause, argparse.ArgumentTypeError) and isinstance(cause.__context__, OSError):
                reason = cause.__context__.strerror or "cannot be read"  # FileType's message quotes the path
                raise argparse.ArgumentError(action, f"cannot open the file: {reason}") from None
            if isinstance(cause, argparse.ArgumentTypeError):
                raise  # our own `type=` functions' messages, which name no value
            wanted = _WANTED.get(action.type, "a valid value")  # type: ignore[arg-type]
            raise argparse.ArgumentError(action, f"not {wanted}") from None


def readable_file(text: str) -> pathlib.Path:
    """`type=` of an option naming a file to read: one that cannot be is a usage error, not skipped."""
    path = pathlib.Path(text)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(exc.strerror or "cannot be read")  # said as FileType's, above
    return path


def seconds(text: str) -> float:
    """`type=` of a timeout: a number of seconds above 0 (float() also takes nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("not a number of seconds above 0")
    return value


def json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def to_json(value: Any, **options: Any) -> str:
    """`--json`'s text (json.dumps). json is loaded here, by a command asked for it: not by every start."""
    import json

    return json.dumps(value, **options)


def provider(text: str) -> str:
    """`--provider`: check_provider's answer, without repeating what was typed."""
    try:
        return check_provider(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a provider: {PROVIDER_HELP}") from None


def count(text: str) -> int:
    """`type=` of a limit or an offset: a whole number that fits the wire's int32."""
    if not text.isdigit() or int(text) >= 2**31:
        raise argparse.ArgumentTypeError(f"not a whole number from 0 to {2**31 - 1}")
    return int(text)
