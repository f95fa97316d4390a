"""`org-server group ...`: groups of members; a token limited to groups is for their members
(and org admins) only."""

from __future__ import annotations

import argparse
import json

from qpu_broker.common.commands import Command, Group
from qpu_broker.orgserver.cli_arguments import data_and_json, data_options
from qpu_broker.orgserver.cli_context import on_store, record
from qpu_broker.orgserver.groups import Groups
from qpu_broker.orgserver.store import OrgStore


def _groups(store: OrgStore) -> Groups:
    return Groups(store, record(store))


def _list(store: OrgStore, args: argparse.Namespace) -> None:
    listed = _groups(store).list()
    if args.json:
        print(json.dumps([{"name": g.name, "members": g.members} for g in listed]))
    elif not listed:
        print("no groups: every member may use every org token not limited to admins")
    for g in listed if not args.json else ():
        print(f"{g.name}: {', '.join(g.members) or '(no members)'}")


def _add(store: OrgStore, args: argparse.Namespace) -> None:
    g = _groups(store).add(args.name, args.member)
    print(f"added the group {g.name!r} with {len(g.members)} member{'s' if len(g.members) != 1 else ''}; "
          f"open tokens to it with 'org-server token set-access NAME --group {g.name}'")


def _rm(store: OrgStore, args: argparse.Namespace) -> None:
    orphaned = _groups(store).remove(args.name)
    print(f"removed the group {args.name!r}: its members lose the tokens they had through it within a second"
          + (f"; now for org admins only (it was their last group): {', '.join(map(repr, orphaned))}"
             if orphaned else ""))


def _add_member(store: OrgStore, args: argparse.Namespace) -> None:
    g = _groups(store).add_members(args.group, args.member)
    print(f"{g.name!r}: {', '.join(g.members)}; their daemons get its tokens within a second")


def _rm_member(store: OrgStore, args: argparse.Namespace) -> None:
    g = _groups(store).remove_members(args.group, args.member)
    print(f"{g.name!r}: {', '.join(g.members) or '(no members)'}; the removed members' daemons drop what they "
          "had only through it within a second")


# -- arguments ----------------------------------------------------------------
def _add_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the group's name")
    p.add_argument("--member", action="append", default=[], metavar="USER", help="a first member (repeatable)")


def _rm_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the group's name")


def _members_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("group", help="the group")
    p.add_argument("member", nargs="+", help="the users")


COMMANDS = (
    Group("group", "groups of members: a token limited to groups is for their members (and org admins) only",
          "qpu-broker org-server group add physics --member bob --member carol --data /srv/qpu-org"),
    Command("group add", "add a group (named like users: printable, no spaces)",
            "qpu-broker org-server group add physics --member bob --member carol --data /srv/qpu-org",
            on_store(_add), _add_options),
    Command("group rm", "remove a group; a token whose last group it was is left to org admins only",
            "qpu-broker org-server group rm physics --data /srv/qpu-org", on_store(_rm), _rm_options),
    Command("group list", "groups and their members", "qpu-broker org-server group list --data /srv/qpu-org --json",
            on_store(_list), data_and_json),
    Command("group add-member", "put users in a group (all, or none if one is not a user)",
            "qpu-broker org-server group add-member physics dan erin --data /srv/qpu-org",
            on_store(_add_member), _members_options),
    Command("group rm-member", "take users out of a group (all, or none if one is not in it)",
            "qpu-broker org-server group rm-member physics dan --data /srv/qpu-org",
            on_store(_rm_member), _members_options),
)
