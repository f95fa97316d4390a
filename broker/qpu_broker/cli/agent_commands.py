"""The agent's own commands: status, stop, reload, lock, unlock, passphrase, audit, check."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

from qpu_broker_client import Broker, LockedError, QpuBrokerError, UnavailableError
from qpu_broker_client.autostart import answers
from qpu_broker_client.paths import resolve_paths

from qpu_broker.cli.arguments import json_option, to_json
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.org_commands import print_org
from qpu_broker.cli.secret_prompt import read_secret, unlocked
from qpu_broker.common.commands import Command

STOP_WAIT = 60.0  # longer than any sane agent.drain_seconds


def _status(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    if args.json:
        print(to_json({**s.__dict__, "org": dataclasses.asdict(b.org_status())}))
        return
    print(f"qpu-broker {s.version}, pid {s.pid}, up {s.uptime_seconds:.0f} s, socket {s.socket_path}")
    print(f"state: {'locked - ' + s.lock_reason if s.locked else 'unlocked'}")
    print(f"key: {s.key_source}{' (memory locked)' if s.key_memory_locked else ''}; store: {s.store_path} "
          f"({s.personal_tokens} personal token{'' if s.personal_tokens == 1 else 's'})")
    for warning in s.warnings:
        print(f"warning: {warning}")
    print_org(b.org_status(), False)


def _stop(b: Broker, args: argparse.Namespace) -> int:
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


def _reload(b: Broker, args: argparse.Namespace) -> None:
    b.reload()
    print("config reloaded")


def _unlock(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    if not s.locked:
        print("already unlocked")
        return
    b.unlock(read_secret("Passphrase: ") if s.key_source == "passphrase" else None)
    print("unlocked")


def _passphrase(b: Broker, args: argparse.Namespace) -> None:
    s = b.status()
    has_one = s.key_source == "passphrase"
    # What can be checked is, before any prompt. A locked passphrase store is unlocked by the old one.
    if not has_one:
        unlocked(s)
    elif not args.remove and not sys.stdin.isatty():
        raise QpuBrokerError("changing a passphrase needs a terminal for both entries (a pipe gives one); "
                             "nothing was read")
    old = read_secret("Current passphrase: ") if has_one else None
    if args.remove:
        source = b.change_passphrase(old, None)
    else:
        source = b.change_passphrase(old, read_secret("New passphrase: ", confirm=True))
    print(f"the data key is now wrapped by: {source}")


def _audit(b: Broker, args: argparse.Namespace) -> int:
    if args.verify:
        verdict = b.verify_audit()
        if args.json:
            print(to_json(verdict.__dict__))
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
            print(to_json(entry, sort_keys=True) if args.json else entry_line(entry))
    return 0


def _check(b: Broker, args: argparse.Namespace) -> int:
    try:
        result = b.check(accept_rollback=args.accept_rollback)
    except LockedError:
        if not args.accept_rollback:
            raise
        # Accepted; a passphrase store then waits for its passphrase before its records can be opened.
        print("the store is accepted as it is; it is locked: run 'qpu-broker unlock', then 'qpu-broker check'")
        return 0
    if args.json:
        print(to_json({"checked": result.checked, "damaged": [d.__dict__ for d in result.damaged],
                       "rollback": result.rollback}))
    elif result.rollback:
        print(f"rollback: {result.rollback}")
        return 1
    else:
        for d in result.damaged:
            print(f"damaged: id={d.id!r} name={d.name!r} provider={d.provider!r}: {d.reason}")
        print(f"{result.checked} checked, {len(result.damaged)} damaged")
    return 1 if result.damaged or result.rollback else 0


def _lock(b: Broker, args: argparse.Namespace) -> None:
    b.lock()
    print("locked")



def _passphrase_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remove", action="store_true", help="go back to a key file in the config dir")


def _audit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="", metavar="WHEN", help="from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as stored")
    p.add_argument("--verify", action="store_true", help="check that no entry was edited, removed or cut off "
                                                         "(needs the agent unlocked); exit 1 when one was")


def _check_options(p: argparse.ArgumentParser) -> None:
    json_option(p)
    p.add_argument("--accept-rollback", action="store_true",
                   help="the store is older than the last one seen, and you put it back on purpose: use it")


# status and stop report on a daemon: they never start one.
COMMANDS = (
    Command("status", "show the daemon's state (never starts one)", "qpu-broker status --json",
            on_broker(_status, autostart=False), json_option),
    Command("stop", "stop the daemon: in-flight calls finish first, like SIGTERM", "qpu-broker stop",
            on_broker(_stop, autostart=False)),
    Command("reload", "have the daemon re-read config.toml, like SIGHUP (a bad file changes nothing)",
            "qpu-broker reload        # after editing config.toml", on_broker(_reload)),
    Command("lock", "drop the data key from memory", "qpu-broker lock", on_broker(_lock)),
    Command("unlock", "load the data key again (asks for the passphrase if there is one)",
            "echo \"$PASSPHRASE\" | qpu-broker unlock        # or type it at the prompt", on_broker(_unlock)),
    Command("passphrase", "set or change the store's passphrase",
            "qpu-broker passphrase                       # asks twice on a terminal", on_broker(_passphrase),
            _passphrase_options),
    Command("audit", "the local audit log: every use and change of personal tokens (never a secret)",
            "qpu-broker audit --since 2h; qpu-broker audit --verify", on_broker(_audit), _audit_options),
    Command("check", "open every stored secret; report damaged records and a rolled-back store",
            "qpu-broker check --json", on_broker(_check), _check_options),
)
