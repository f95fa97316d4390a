"""`org-server user ...` and `org-server device rm`: the org's users, their enrollment codes
(printed once, to stdout, never stored in clear) and their devices."""

from __future__ import annotations

import argparse
import json
import sys

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.commands import Command, Group
from qpu_broker.orgserver.cli_arguments import (
    code_options,
    code_terms_line,
    data_and_json,
    data_options,
    terms,
    when,
)
from qpu_broker.orgserver.cli_context import now_us, on_devices, on_store, record
from qpu_broker.orgserver.devices import Devices
from qpu_broker.orgserver.roles import ROLES
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.users import (
    add_users,
    new_users,
    read_user_lines,
    remove_users,
    set_role,
)


def _add(store: OrgStore, args: argparse.Namespace) -> None:
    wanted = [(name, args.role) for name in args.name]
    if args.from_file is not None:
        wanted += read_user_lines(args.from_file, args.from_file.name)
    if not wanted:
        raise InvalidArgumentError("name the users to add, or give --from FILE (- for stdin): one per line, NAME [ROLE]")
    made = new_users(wanted, terms(args))
    add_users(store, record(store), made)
    if args.json:
        print(json.dumps([{"name": u.name, "role": u.role, "code": new.code, "expires": when(code.expires_us)}
                          for u, code, new in made]))
    elif len(made) == 1 and args.from_file is None:
        user, code, new = made[0]
        print(f"added {user.role} {user.name!r}; their enrollment code follows, shown this once ({code_terms_line(code)}); "
              "they run 'qpu-broker org login' with it:", file=sys.stderr)
        print(new.code)
    else:
        print(f"added {len(made)} users; each line is NAME<TAB>ENROLLMENT CODE, shown this once "
              f"({code_terms_line(made[0][1])}):", file=sys.stderr)
        for user, _, new in made:
            print(f"{user.name}\t{new.code}")


def _list(store: OrgStore, args: argparse.Namespace) -> None:
    users = store.users()
    if args.json:
        print(json.dumps([{"name": u.name, "role": u.role} for u in users]))
    else:
        for u in users:
            print(f"{u.role:7} {u.name}")


def _rm(store: OrgStore, args: argparse.Namespace) -> None:
    remove_users(store, record(store), args.name, now_us())
    print(f"removed {', '.join(repr(n) for n in args.name)}: their codes and devices no longer work, and running "
          "servers end their daemons' org access within a second")


def _rotate_key(devices: Devices, args: argparse.Namespace) -> None:
    code, text = devices.new_code(args.name, terms(args), withdraw_others=True)
    print(f"withdrew every enrollment code and device of {args.name!r} (running servers end their org access within "
          f"a second); a new enrollment code follows, shown this once ({code_terms_line(code)}):", file=sys.stderr)
    print(text)


def _code(devices: Devices, args: argparse.Namespace) -> None:
    code, text = devices.new_code(args.name, terms(args), withdraw_others=False)
    print(f"another enrollment code for {args.name!r} follows, shown this once ({code_terms_line(code)}); their "
          "devices so far keep working:", file=sys.stderr)
    print(text)


def _devices(devices: Devices, args: argparse.Namespace) -> None:
    rows = devices.list(args.name)
    if args.json:
        print(json.dumps([{"id": d.id, "user": d.user, "name": d.name, "created": when(d.created_us),
                           "expires": when(d.expires_us), "last_seen": when(d.last_seen_us)} for d in rows]))
        return
    if not rows:
        print(f"{args.name!r} has no device (an open enrollment code enrolls one: 'qpu-broker org login')",
              file=sys.stderr)
    for d in rows:
        print(f"{d.id}  {d.name}  created {when(d.created_us)}  expires {when(d.expires_us)}  "
              f"last seen {when(d.last_seen_us)}")


def _set_role(store: OrgStore, args: argparse.Namespace) -> None:
    set_role(store, record(store), args.name, args.role)  # NOT_FOUND when there is no such user
    print(f"{args.name!r} is now {'an admin' if args.role == 'admin' else 'a ' + args.role}")


def _device_rm(devices: Devices, args: argparse.Namespace) -> None:
    removed = devices.remove(args.id)
    print(f"removed device {removed.id} ({removed.name}) of {removed.user!r}: running servers end its org access "
          "within a second")


# -- arguments ----------------------------------------------------------------
def _add_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", nargs="*", help="a user's name, unique in the org (several: one line each, NAME<TAB>CODE)")
    p.add_argument("--role", default="member", choices=ROLES,
                   help="member (default), admin, or service (CI, background services: see --uses, --device-ttl)")
    p.add_argument("--from", dest="from_file", type=argparse.FileType("r"), metavar="FILE",
                   help="names from a file (- for stdin): one per line, NAME or NAME ROLE; # starts a comment")
    code_options(p)
    p.add_argument("--json", action="store_true", help="a JSON list of {name, role, code, expires}")


def _rm_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", nargs="+", help="the users to remove (all, or none if one is not a user)")


def _rotate_key_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the user whose access to replace")
    code_options(p)


def _code_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the user")
    code_options(p)


def _devices_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the user")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _set_role_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("name", help="the user")
    p.add_argument("role", choices=ROLES, help="member, admin or service")


def _device_rm_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("id", help="the device's id (see 'user devices NAME')")


COMMANDS = (
    Group("user", "manage users",
          ("qpu-broker org-server user add bob --data /srv/qpu-org     # prints bob's enrollment code once",
           "qpu-broker org-server user list --data /srv/qpu-org")),
    Command("user add", "add users; prints each one's enrollment code once (all are added, or none)",
            "qpu-broker org-server user add ci --role service --uses 20 --device-ttl 1d --data /srv/qpu-org",
            on_store(_add), _add_options),
    Command("user list", "list users (never codes)", "qpu-broker org-server user list --data /srv/qpu-org --json",
            on_store(_list), data_and_json),
    Command("user rm", "remove users: their codes and devices stop working, their daemons drop every org secret",
            "qpu-broker org-server user rm bob --data /srv/qpu-org", on_store(_rm), _rm_options),
    Command("user rotate-key", "withdraw every code and device of a user, and print a new code once",
            "qpu-broker org-server user rotate-key bob --data /srv/qpu-org", on_devices(_rotate_key),
            _rotate_key_options),
    Command("user code", "another enrollment code for a user (another device); their devices stay",
            "qpu-broker org-server user code bob --expires-in 2d --data /srv/qpu-org  # a second laptop",
            on_devices(_code), _code_options),
    Command("user devices", "a user's devices: id, name, created, expires, last seen",
            "qpu-broker org-server user devices bob --data /srv/qpu-org", on_devices(_devices), _devices_options),
    Command("user set-role", "make a user an admin or a member",
            "qpu-broker org-server user set-role bob admin --data /srv/qpu-org", on_store(_set_role),
            _set_role_options),
    Group("device", "members' devices", "qpu-broker org-server device rm 3f9a1c0b7d2e4f55 --data /srv/qpu-org"),
    Command("device rm", "remove one device: its daemon loses org access within a second (the user's other "
                         "devices stay)",
            "qpu-broker org-server device rm 3f9a1c0b7d2e4f55 --data /srv/qpu-org", on_devices(_device_rm),
            _device_rm_options),
)
