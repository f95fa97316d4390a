"""A command line as one table: each command is one entry holding its words, help, example,
arguments and handler, so none can be added without the others (issue 24). Both programs'
tables use it: `qpu-broker` (cli/) and the org server's (orgserver/cli.py), which cli/ mounts
under `qpu-broker org-server`; cli/main.py builds argparse from them and dispatches.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable

Examples = str | tuple[str, ...]  # a help page ends with them: one, or several lines


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Group:
    """Words that lead to commands (`token`, `org-server user`); "" is the program itself,
    whose help is its description."""
    path: str
    help: str
    example: Examples


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: `run` gets the parsed arguments and returns the exit status (None: 0)."""
    path: str
    help: str
    example: Examples
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


Entry = Group | Command


def examples(entry: Entry) -> tuple[str, ...]:
    return (entry.example,) if isinstance(entry.example, str) else entry.example


def epilog(entry: Entry) -> str:
    """How every help page ends: the entry's examples."""
    shown = examples(entry)
    return f"example{'s' if len(shown) > 1 else ''}:\n" + "\n".join(f"  {line}" for line in shown)


def under(prefix: str, table: Iterable[Entry]) -> tuple[Entry, ...]:
    """A table mounted below `prefix`: its "" group becomes `prefix` itself."""
    return tuple(dataclasses.replace(e, path=f"{prefix} {e.path}".strip()) for e in table)
