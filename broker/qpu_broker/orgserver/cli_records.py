"""`org-server usage` and `org-server audit`: the org's two records, read (and the usage record
pruned) from the data dir like the other admin commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.usage import iso, usage_dict, usage_line

from qpu_broker.common.commands import Command
from qpu_broker.common.since import parse_since
from qpu_broker.orgserver.admin_record import AdminQuery, entry_dict, entry_line
from qpu_broker.orgserver.cli_arguments import data_options
from qpu_broker.orgserver.cli_context import now_us, on_store, record
from qpu_broker.orgserver.store import OrgStore, UsageQuery

FOLLOW_POLL_SECONDS = 0.5


def _usage(store: OrgStore, args: argparse.Namespace) -> None:
    """Reads the data dir like the other admin commands; `--follow` polls it (the server writes it)."""
    if args.action == "prune":
        _prune_usage(store, args)
        return
    if args.before:
        raise InvalidArgumentError("--before goes with 'usage prune': to list records from a time on, use --since")
    query = UsageQuery(args.member, args.token, parse_since(args.since, now_us()) if args.since else 0)
    while True:
        page = store.usage(query)
        for row in page.records:
            print(json.dumps(usage_dict(row)) if args.json else usage_line(row), flush=True)
        query = dataclasses.replace(query, after_seq=page.after_seq)  # past what this read examined, matched or not
        if page.more:
            continue  # the next page at once
        if not args.follow:
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def _prune_usage(store: OrgStore, args: argparse.Namespace) -> None:
    """The org keeps its whole usage record until an admin says otherwise: the record is the org's
    audit, so nothing drops rows on its own. Pruning takes a prefix (what arrived before a time),
    for everyone at once, so reads and follows resume exactly where they were."""
    if not args.before or args.member or args.token or args.since or args.follow:
        raise InvalidArgumentError("usage prune takes --before WHEN only (e.g. --before 400d, or a date): it removes "
                                   "every member's records that reached the server before then")
    now = now_us()
    before = parse_since(args.before, now, "--before")
    if before > now:
        raise InvalidArgumentError(f"--before {args.before!r} is in the future: name a time already past")
    # The entry first, in its own transaction: the prune goes in batches (a big one must not hold the
    # server's writes), and one stopped half way is what the entry says, finished by running it again.
    with record(store).changing() as note:
        note("usage.prune", "usage", f"records that arrived before {iso(before)}")
    gone = store.prune_usage(before)
    print(f"removed {gone} usage record{'' if gone == 1 else 's'} that reached the server before {iso(before)}")


def _audit(store: OrgStore, args: argparse.Namespace) -> None:
    query = AdminQuery(parse_since(args.since, now_us()) if args.since else 0, args.actor, args.action)
    while True:
        entries, more = record(store).entries(query)
        for e in entries:
            print(json.dumps(entry_dict(e)) if args.json else entry_line(e))
        if not more:
            return
        query = dataclasses.replace(query, after_seq=entries[-1].seq)


# -- arguments ----------------------------------------------------------------
def _usage_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("action", nargs="?", choices=["prune"], help="prune: delete the records that reached the server "
                                                               "before --before (the org's retention)")
    p.add_argument("--before", default="", metavar="WHEN", help="with prune: 90d (that long ago) or a date")
    p.add_argument("--member", default="", help="one member's records only")
    p.add_argument("--token", default="", help="one org token's records only (its name or id)")
    p.add_argument("--since", default="", metavar="WHEN", help="records from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--follow", action="store_true", help="then keep printing new records as they arrive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _audit_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--since", default="", metavar="WHEN", help="changes from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--actor", default="", metavar="NAME", help="one admin's changes (their user name), or the admin "
                                                               "CLI's: cli:OSUSER")
    p.add_argument("--action", default="", metavar="ACTION", help="one kind of change: user.add, token.update, ... "
                                                                  "or all of a kind: user, token, quota, ...")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


COMMANDS = (
    Command("usage", "the usage record: every use of an org token, by whom, where, with what result; "
                     "'usage prune --before WHEN' deletes what reached the server before then",
            "qpu-broker org-server usage --data /srv/qpu-org --member bob --since 2h --follow",
            on_store(_usage), _usage_options),
    Command("audit", "the admin record: every admin change, who made it, from where and when (never a secret), "
                     "oldest first",
            "qpu-broker org-server audit --data /srv/qpu-org --actor alice --action token --since 7d",
            on_store(_audit), _audit_options),
)
