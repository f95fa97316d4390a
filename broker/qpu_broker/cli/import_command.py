"""`qpu-broker import`: the plaintext credentials SDKs keep, into the store, and out of their files.

It lists what it found by file and name (never a secret, nor a piece of one), stores what the
user picks (a prompt on a terminal; --all or --pick in scripts), and takes a stored secret out of
its file when asked (--remove; a 0600 backup with --backup). A secret that was not stored is never
taken out of its file.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections import defaultdict
from typing import TYPE_CHECKING

from qpu_broker_client import AlreadyExistsError, Broker, QpuBrokerError

from qpu_broker.cli.arguments import readable_file, to_json
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.failures import UsageError
from qpu_broker.common.commands import Command

if TYPE_CHECKING:
    from qpu_broker.sdk_files.found import Found

def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="files", action="append", default=[], type=readable_file, metavar="FILE",
                   help="look in this file too (a .env, dwave.conf, qiskit-ibm.json, fujitsu-quantum's credentials.json, "
                        "or AWS credentials/config); "
                        "repeatable")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--list", action="store_true", help="only list what is found (the default off a terminal)")
    which.add_argument("--all", action="store_true", help="store everything found")
    which.add_argument("--pick", action="append", default=[], metavar="N",
                       help="store the N-th found, as --list numbers them (repeatable, or 1,3)")
    p.add_argument("--remove", action="store_true", help="take each stored secret out of its file")
    p.add_argument("--backup", action="store_true", help="with --remove: keep the file as it was, 0600, next to it")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def found_here(files: list[pathlib.Path]) -> list[Found]:
    from qpu_broker.sdk_files.locations import (
        find_all,  # the providers' tables: not at every command's start
    )

    return find_all(os.environ, pathlib.Path.home(), pathlib.Path.cwd(), list(files))


def _line(n: int, f: Found) -> str:
    extra = (f"; {f.note}" if f.note else "") + (f"; NOT YOURS, never stored: {f.foreign}" if f.foreign else "")
    return f"{n:>3}  {f.provider:<7} {f.where()}{extra}"


def _ask(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


def _picked(args: argparse.Namespace, found: list[Found]) -> list[Found]:
    if args.all:
        return found
    words = [w for p in args.pick for w in p.split(",") if w.strip()]
    if not words and not args.list and sys.stdin.isatty() and found:
        answer = _ask("Store which? Numbers (1,3), 'all', or Enter for none: ").lower()
        every = [str(n) for n in range(1, len(found) + 1)]
        words = every if answer == "all" else [w for w in answer.replace(" ", ",").split(",") if w]
        if words and not args.remove:
            args.remove = _ask("Take each stored secret out of its file? [y/N] ").lower().startswith("y")
            if args.remove and not args.backup:
                args.backup = _ask("Keep a backup of each file as it was (0600)? [y/N] ").lower().startswith("y")
    chosen = []
    for w in words:
        if not w.strip().isdigit() or not 1 <= int(w) <= len(found):
            raise UsageError(f"--pick takes numbers from 1 to {len(found)} as --list shows them, not {w.strip()[:20]!r}")
        chosen.append(found[int(w) - 1])
    return chosen


def _import(b: Broker, args: argparse.Namespace) -> int:
    from qpu_broker.sdk_files.found import display
    from qpu_broker.sdk_files.rewrite import take_out

    if args.backup and not args.remove:
        raise UsageError("--backup goes with --remove (nothing is taken out of a file without --remove)")
    found = found_here(args.files)
    if not args.json:
        if found:
            print(f"found {len(found)} plaintext credential{'' if len(found) == 1 else 's'}:")
            for n, f in enumerate(found, 1):
                print(_line(n, f))
        else:
            print("no plaintext credentials found")
    chosen = _picked(args, found)
    stored, failed, by_file = [], [], defaultdict(list)
    for f in chosen:
        if f.foreign:
            failed.append({**f.as_dict(), "error": f"not stored: another user could have written it ({f.foreign}), so "
                                                   "the key may be theirs: your work would run on their account. "
                                                   "Store a key you know with 'qpu-broker token add'"})
            continue
        try:
            token = b.qpu_token.create(name=f.token_name(), provider=f.provider, token=f.secret)
        except AlreadyExistsError:
            failed.append({**f.as_dict(), "error": f"a personal token named {f.token_name()!r} exists: left in the file"})
            continue
        except QpuBrokerError as exc:
            failed.append({**f.as_dict(), "error": f"not stored: {exc}"})
            continue
        stored.append({**f.as_dict(), "token_name": token.name, "token_id": token.id})
        by_file[f.path].append(f)
        if not args.json:
            print(f"stored {token.name!r} ({f.provider}) from {f.where()}")
    removed = []
    for path, items in by_file.items() if args.remove else ():
        try:
            backup = take_out(items, backup=args.backup)
        except (QpuBrokerError, OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failed.append({"file": str(path), "error": f"not taken out of the file: {reason}"})
            continue
        removed.append({"file": str(path), "backup": str(backup) if backup else ""})
        if not args.json:
            print(f"took {len(items)} secret{'' if len(items) == 1 else 's'} out of {display(path)}"
                  + (f" (backup, 0600: {display(backup)})" if backup else ""))
    if args.json:
        print(to_json({"found": [f.as_dict() for f in found], "stored": stored, "removed": removed,
                       "failed": failed}))
    else:
        for item in failed:
            print(f"qpu-broker: {item.get('kind', 'file')} {item.get('name', item['file'])!r}: {item['error']}",
                  file=sys.stderr)
        if stored and not args.remove:
            print("the secrets are still in their files too: run again with --remove to take them out")
    return 1 if failed else 0


COMMAND = Command("import", "store the plaintext credentials SDKs keep (a saved qiskit account, dwave.conf, ~/.aws, "
                            "fujitsu-quantum's credentials.json, .env files) and take them out of their files",
                  "qpu-broker import --all --remove          # or run it on a terminal and choose",
                  on_broker(_import), _options)
