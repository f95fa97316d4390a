"""`qpu-broker org-server ...`: set up, administer and run the org server.

User commands work on the data dir directly (the server need not run, and no
network key is needed: whoever can read the data dir owns the org anyway).
API keys are printed once, to stdout, and never stored in clear.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import pathlib
import sys

from . import apikeys
from .layout import OrgLayout
from .store import User

ROLES = ("member", "admin")


def add_parser(sub: argparse._SubParsersAction) -> None:
    org = sub.add_parser("org-server", help="run and administer the reference organization server")
    verbs = org.add_subparsers(dest="org_verb", required=True, metavar="VERB")

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, type=pathlib.Path, help="the server's data dir")

    p = verbs.add_parser("init", help="create the org and its first admin; prints the admin's API key once")
    data(p)
    p.add_argument("--org", required=True, help="the organization's name")
    p.add_argument("--admin", required=True, help="the first admin's user name")
    p = verbs.add_parser("serve", help="serve the org over gRPC (TLS with --tls-cert/--tls-key)")
    data(p)
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--tls-cert", type=pathlib.Path)
    p.add_argument("--tls-key", type=pathlib.Path)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    user = verbs.add_parser("user", help="manage users").add_subparsers(dest="user_verb", required=True, metavar="VERB")
    p = user.add_parser("add", help="add a user; prints their API key once")
    data(p)
    p.add_argument("name")
    p.add_argument("--role", default="member", choices=ROLES)
    p = user.add_parser("list", help="list users (never keys)")
    data(p)
    p.add_argument("--json", action="store_true")
    p = user.add_parser("rm", help="remove a user (their key stops working at once)")
    data(p)
    p.add_argument("name")
    p = user.add_parser("set-role", help="make a user an admin or a member")
    data(p)
    p.add_argument("name")
    p.add_argument("role", choices=ROLES)


def _new_user(name: str, role: str) -> tuple[User, str]:
    key = apikeys.new_key()
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1e6)
    return User(name, role, key.key_id, key.key_hash, now), key.key


def run(args: argparse.Namespace) -> int:
    layout = OrgLayout(args.data)
    if args.org_verb == "serve":
        from .serve import serve

        if (args.tls_cert is None) != (args.tls_key is None):
            print("qpu-broker: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
            return 2
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return asyncio.run(serve(layout, args.listen, args.tls_cert, args.tls_key))
    if args.org_verb == "init":
        store, _ = layout.create()
        store.set_meta("org", args.org)
        user, key = _new_user(args.admin, "admin")
        store.add_user(user)
        print(f"created the organization {args.org!r} in {args.data}; the API key of admin {args.admin!r} "
              "follows, shown this once:", file=sys.stderr)
        print(key)
        return 0
    store, _ = layout.open()
    if args.user_verb == "add":
        user, key = _new_user(args.name, args.role)
        store.add_user(user)
        print(f"added {args.role} {args.name!r}; their API key follows, shown this once:", file=sys.stderr)
        print(key)
    elif args.user_verb == "list":
        users = store.users()
        if args.json:
            print(json.dumps([{"name": u.name, "role": u.role} for u in users]))
        else:
            for u in users:
                print(f"{u.role:7} {u.name}")
    elif args.user_verb == "rm":
        store.remove_user(args.name)
        print(f"removed {args.name!r}")
    elif args.user_verb == "set-role":
        store.set_role(args.name, args.role)
        print(f"{args.name!r} is now {'an admin' if args.role == 'admin' else 'a member'}")
    return 0
