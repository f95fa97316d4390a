"""`org-server quota ...`: limits on org token use, requests or D-Wave QPU time, per window."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.usage import EVERY_MEMBER, QPU_US, REQUESTS, Quota, quota_line

from qpu_broker.common.commands import Command, Group
from qpu_broker.common.names import canonical_name
from qpu_broker.common.since import parse_since, parse_span, parse_until
from qpu_broker.orgserver import quota_admin
from qpu_broker.orgserver.cli_arguments import data_options
from qpu_broker.orgserver.cli_context import now_us, on_store, record
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.store import OrgStore


def _set(store: OrgStore, args: argparse.Namespace) -> None:
    token_id = store.token(name=canonical_name(args.token)).id if args.token else ""
    if args.requests is not None:
        unit, limit = REQUESTS, args.requests
    else:
        if not math.isfinite(args.qpu_seconds):
            raise InvalidArgumentError(f"--qpu-seconds {args.qpu_seconds} is not a number of seconds")
        unit, limit = QPU_US, math.ceil(args.qpu_seconds * 1_000_000) if args.qpu_seconds > 0 else int(args.qpu_seconds)
    member = EVERY_MEMBER if args.each_member else args.member
    now = now_us()
    valid_from = parse_since(args.valid_from, now, "--from") if args.valid_from else 0
    valid_until = parse_until(args.until, now, "--until") if args.until else 0
    start = (parse_since(args.start, now, "--start") if args.start
             else quota_admin.first_window(store, member, token_id, unit, now, valid_from))
    q = quota_admin.write(store, record(store),
                          Quota(0, member, token_id, args.token, unit, limit, parse_span(args.per, "--per"), start,
                                valid_from_us=valid_from, valid_until_us=valid_until))
    print(f"quota #{q.id}: {q.describe()}; members' daemons hear of it within a second")


def _list(store: OrgStore, args: argparse.Namespace) -> None:
    for q in Quotas(store).status(args.member or None):
        print(json.dumps(dataclasses.asdict(q)) if args.json else quota_line(q))


def _rm(store: OrgStore, args: argparse.Namespace) -> None:
    quota_admin.remove(store, record(store), args.id)
    print(f"quota #{args.id} removed; members' daemons hear of it within a second")


# -- arguments ----------------------------------------------------------------
def _set_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--member", default="", help="one member's use (default: everyone's use together)")
    who.add_argument("--each-member", action="store_true", help="each member's own use, for members without a "
                                                                "quota of their own: the org-wide default")
    p.add_argument("--token", default="", help="one org token (its name; default: every org token)")
    unit = p.add_mutually_exclusive_group(required=True)
    unit.add_argument("--requests", type=int, metavar="N", help="requests per window (forwards and signs)")
    unit.add_argument("--qpu-seconds", type=float, metavar="S",
                      help="D-Wave QPU access time per window, as the answers report it")
    p.add_argument("--per", required=True, metavar="SPAN", help="the window: 1h, 1d, 30d, ...")
    first = p.add_mutually_exclusive_group()
    first.add_argument("--start", default="", metavar="WHEN",
                       help="when the first window starts (a date: 2026-12-01); default: today, 00:00 UTC")
    first.add_argument("--from", dest="valid_from", default="", metavar="WHEN",
                       help="the quota is valid from then on (a date; its first window starts then): before it, "
                            "the uses it counts are refused")
    p.add_argument("--until", default="", metavar="WHEN", help="the quota is valid until then (a date, or 30d from "
                                                               "now): after it, the uses it counts are refused")


def _list_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--member", default="", help="the quotas that bind one member, with their use")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _rm_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("id", type=int, help="the quota's number (see quota list)")


COMMANDS = (
    Group("quota", "limits on org token use: requests, or D-Wave QPU time, per window",
          ("qpu-broker org-server quota set --data /srv/qpu-org --each-member --requests 1000 --per 1d",
           "qpu-broker org-server quota list --data /srv/qpu-org")),
    Command("quota set", "add a quota, or replace the one for the same member, token and unit",
            "qpu-broker org-server quota set --data /srv/qpu-org --each-member --requests 1000 --per 1d",
            on_store(_set), _set_options),
    Command("quota list", "quotas, with this window's use",
            "qpu-broker org-server quota list --data /srv/qpu-org --member bob", on_store(_list), _list_options),
    Command("quota rm", "remove a quota", "qpu-broker org-server quota rm --data /srv/qpu-org 3",
            on_store(_rm), _rm_options),
)
