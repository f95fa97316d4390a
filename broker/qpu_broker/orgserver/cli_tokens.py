"""`org-server token ...`: where one org token may go, who may use it, whether members' daemons
hold its secret, and when it ends. Each change is a new version of the token, which running
servers push to members' daemons."""

from __future__ import annotations

import argparse
import dataclasses
import json

from qpu_broker.common.commands import Command, Group
from qpu_broker.common.lifetimes import expiry_text, expiry_us, is_expired, lifetime_arg
from qpu_broker.common.names import canonical_name
from qpu_broker.orgserver.admin_record import token_change
from qpu_broker.orgserver.cli_arguments import (
    data_and_json,
    data_options,
    describe_reach,
    reach_from_args,
    reach_line,
    reach_options,
)
from qpu_broker.orgserver.cli_context import now_us, on_store, record
from qpu_broker.orgserver.groups import Groups, describe_access
from qpu_broker.orgserver.store import OrgStore, OrgTokenRecord


def mode_name(relay: bool) -> str:
    return "relay" if relay else "cached"


# What a change of mode means, said when it is made.
MODE_CHANGED = {
    True: "relay: its secret stays on this server, which makes every call with it. Members' daemons held it "
          "until now: rotate the provider key if a member may have copied it",
    False: "cached: members' daemons will hold its secret in memory, trusting members' machines (a member who is "
           "root on theirs can read it, and use it without quotas or the usage record)",
}


def _expiry(expires_us: int) -> str:
    """A token's end as a listing shows it: never, the time, or expired at the time."""
    if not expires_us:
        return "never"
    return f"{'expired ' if is_expired(expires_us, now_us()) else ''}{expiry_text(expires_us)}"


def _replace_token(store: OrgStore, action: str, before: OrgTokenRecord, changed: OrgTokenRecord) -> None:
    """The token's next version (its secret kept), and its admin record entry."""
    new = dataclasses.replace(changed, version=before.version + 1, updated_us=now_us())
    with record(store).changing() as note:
        store.replace_token(new, None)
        note(action, new.name, token_change(before, new, rotated=False))


def _named(store: OrgStore, args: argparse.Namespace) -> OrgTokenRecord:
    return store.token(name=canonical_name(args.name))


def _list(store: OrgStore, args: argparse.Namespace) -> None:
    tokens = store.tokens()
    rows = [{"name": t.name, "provider": t.provider, "version": t.version, "mode": mode_name(t.relay),
             "relay": t.relay, "own": describe_reach(t.own), "groups": None if t.groups is None else list(t.groups),
             "expires_at": expiry_text(t.expires_us) if t.expires_us else None,
             "expired": is_expired(t.expires_us, now_us())} for t in tokens]
    if args.json:
        print(json.dumps(rows))
    for row, t in zip(rows, tokens, strict=True) if not args.json else ():
        access = describe_access(None if row["groups"] is None else tuple(row["groups"]))
        print(f"{row['provider']:8} {row['name']}  mode={row['mode']}  access={access}  "
              f"expires={_expiry(t.expires_us)}  {reach_line(row['own'])}")


def _set_reach(store: OrgStore, args: argparse.Namespace) -> None:
    token = _named(store, args)
    own = reach_from_args(args, f"organization token {token.name!r}")
    _replace_token(store, "token.update", token, dataclasses.replace(token, own=own))
    print(f"{token.name!r} may also reach {', '.join(own.hosts + own.plain_http_hosts) or 'no extra host'}; "
          "a running server pushes this within a second")


def _cache(store: OrgStore, args: argparse.Namespace) -> None:
    _set_relay(store, args, relay=args.state == "off")


def _relay(store: OrgStore, args: argparse.Namespace) -> None:
    """The older name of `cache`, kept for scripts: `relay on` is `cache off`."""
    _set_relay(store, args, relay=args.state == "on")


def _set_relay(store: OrgStore, args: argparse.Namespace, *, relay: bool) -> None:
    token = _named(store, args)
    # A new version: daemons drop what they held of it (its secret, bearers made from it) at once.
    _replace_token(store, "token.relay", token, dataclasses.replace(token, relay=relay))
    print(f"{token.name!r}: {MODE_CHANGED[relay]}; a running server pushes this within a second")


def _set_access(store: OrgStore, args: argparse.Namespace) -> None:
    token = _named(store, args)
    groups = args.group or ([] if args.admins_only else None)
    now = Groups(store, record(store)).set_access(token, groups)
    print(f"{token.name!r} is for {describe_access(now.groups)}"
          f"{'' if now.groups is None else ' (and org admins)'}; a running server pushes this within a second")


def _set_expiry(store: OrgStore, args: argparse.Namespace) -> None:
    token = _named(store, args)
    # A new version, as every change: daemons fetch its secret again if they dropped it at the end.
    expires_us = expiry_us(now_us(), 0 if args.never else args.expires_in)
    _replace_token(store, "token.update", token, dataclasses.replace(token, expires_us=expires_us))
    print(f"{token.name!r} {'never expires' if args.never else 'expires at ' + expiry_text(expires_us)}; "
          "a running server pushes this within a second")


# -- arguments ----------------------------------------------------------------
def _name(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the org token's name")


def _reach_options(p: argparse.ArgumentParser) -> None:
    _name(p)
    reach_options(p)


def _cache_options(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("state", choices=("on", "off"), help="on: cached in members' daemons; off: relay")


def _relay_options(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("state", choices=("on", "off"), help="on: relay (the default); off: cached in members' daemons")


def _access_options(p: argparse.ArgumentParser) -> None:
    _name(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", action="append", metavar="GROUP", help="a group whose members may use it (repeatable; "
                                                                       "replaces the token's groups)")
    who.add_argument("--everyone", action="store_true", help="every member of the org")
    who.add_argument("--admins-only", action="store_true", help="org admins only")


def _expiry_options(p: argparse.ArgumentParser) -> None:
    _name(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                      help="its lifetime from now (90d, 12h, 30m, 3600s)")
    when.add_argument("--never", action="store_true", help="it never expires")


COMMANDS = (
    Group("token", "where one org token may go, beyond its provider's org-wide settings, who may use it, and "
                   "whether members' daemons hold its secret",
          ("qpu-broker org-server token list --data /srv/qpu-org",
           "qpu-broker org-server token set-access 'Acme IBM' --group physics --data /srv/qpu-org")),
    Command("token set-reach", "replace one token's own hosts, CA and token URL",
            "qpu-broker org-server token set-reach 'Acme IBM' --host eu-de.quantum.cloud.ibm.com --data /srv/qpu-org",
            on_store(_set_reach), _reach_options),
    Command("token cache", "whether members' daemons hold one token's secret (on: faster, trusting their machines) "
                           "or it stays on this server, which makes every call (off: relay, the default; quotas and "
                           "the record cannot be bypassed)",
            "qpu-broker org-server token cache 'Acme IBM' off --data /srv/qpu-org   # relay it",
            on_store(_cache), _cache_options),
    Command("token relay", "the older name of 'token cache', the other way round: relay on = cache off",
            "qpu-broker org-server token relay 'Acme IBM' on --data /srv/qpu-org   # = cache off",
            on_store(_relay), _relay_options),
    Command("token set-access", "who may see and use one token besides org admins: every member (the default), or "
                                "the members of some groups",
            "qpu-broker org-server token set-access 'Acme IBM' --group physics --data /srv/qpu-org",
            on_store(_set_access), _access_options),
    Command("token set-expiry", "when one token stops being usable: from then on the server refuses its use and "
                                "members' daemons drop it (a new lifetime renews an expired one)",
            "qpu-broker org-server token set-expiry 'Acme IBM' --expires-in 90d --data /srv/qpu-org",
            on_store(_set_expiry), _expiry_options),
    Command("token list", "org tokens, where each may go and who may use it (never secrets)",
            "qpu-broker org-server token list --data /srv/qpu-org", on_store(_list), data_and_json),
)
