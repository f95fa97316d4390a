"""`qpu-broker org ...`: the daemon's link to an organization server."""

from __future__ import annotations

import argparse
import dataclasses
import time

from qpu_broker_client import Broker

from qpu_broker.cli.arguments import json_option, to_json
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.secret_prompt import read_secret
from qpu_broker.common.commands import Command, Group


def print_org(s, as_json: bool) -> None:
    """The link's state, as `org status` and `status` show it."""
    if as_json:
        print(to_json(dataclasses.asdict(s)))
        return
    if s.state == "not-logged-in":
        print("organization: not logged in ('qpu-broker org login --server HOST:PORT')")
        return
    if s.state in ("removed", "key-revoked"):
        print(f"organization: {s.detail} (server {s.server})")
        return
    who = f"{s.user} ({s.role}) in {s.org!r}" if s.user else "(not yet known)"
    print(f"organization: {s.state} - {s.server}, {who}, {s.tokens} org token{'' if s.tokens == 1 else 's'}")
    if s.device_id:
        print(f"  device {s.device_id}, expires "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(s.device_expires_us / 1e6)) if s.device_expires_us else 'never'}")
    if len(s.servers) > 1:
        mark = " (connected)" if s.state == "connected" else " (trying)" if s.state != "locked" else ""
        print("  servers: " + ", ".join(f"{x}{mark if x == s.server else ''}" for x in s.servers))
    if s.state in ("disconnected", "unavailable"):
        print(f"  last contact {s.seconds_since_contact:.0f} s ago; grace period {s.grace_seconds:.0f} s")
    if s.detail:
        print(f"  {s.detail}")
    for names, said in ((s.relay_tokens, "relay (their secrets stay on the org server)"),
                        (s.cached_tokens, "cached (their secrets are held by this daemon, in memory)")):
        if names:
            print(f"  {said}: {', '.join(names)}")
    if s.usage_waiting:
        print(f"  {s.usage_waiting} usage record{'' if s.usage_waiting == 1 else 's'} waiting to reach the server "
              "(kept on disk, sent when it answers)")
    if s.quotas:
        from qpu_broker_client.usage import quota_line

        for q in s.quotas:
            print(f"  {quota_line(q)}")




def _login(b: Broker, args: argparse.Namespace) -> None:
    from qpu_broker.common.org_servers import parse_servers

    servers = parse_servers(args.server)  # before the code is asked for
    key = read_secret(f"enrollment code for {', '.join(servers)}: ")
    ca = args.ca.read() if args.ca else b""
    print_org(b.org_login(list(servers), key.strip(), ca_pem=ca), False)


def _logout(b: Broker, args: argparse.Namespace) -> None:
    b.org_logout()
    print("logged out; organization secrets dropped")


def _status(b: Broker, args: argparse.Namespace) -> None:
    print_org(b.org_status(), args.json)


def _usage(b: Broker, args: argparse.Namespace) -> None:
    from qpu_broker_client.usage import usage_dict, usage_line

    from qpu_broker.common.since import parse_since

    since = parse_since(args.since, int(time.time() * 1e6)) if args.since else 0
    page = None
    while page is None or page.more:  # page through from where each read stopped, matched or not
        page = b.org_usage_page(member=args.member, token=args.token, since_us=since,
                                after_seq=page.after_seq if page else 0)
        for r in page.records:
            print(to_json(usage_dict(r)) if args.json else usage_line(r), flush=True)


def _login_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                   help="the org server, e.g. org.example.com:7443; repeat it for each replica of the org "
                        "(the daemon fails over between them)")
    p.add_argument("--ca", type=argparse.FileType("rb"), help="a CA certificate (PEM) to trust for the server")


def _usage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", default="", help="admins: one member's records")
    p.add_argument("--token", default="", help="one org token's records (its name)")
    p.add_argument("--since", default="", metavar="WHEN", help="from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


COMMANDS = (
    Group("org", "the daemon's link to an organization server",
          ("qpu-broker org login --server org.example.com:7443 --ca org-ca.pem   # the code from a prompt",
           "qpu-broker org status")),
    Command("org login", "enroll this daemon as a device with an enrollment code (read from a prompt or stdin) an "
                         "org admin gave you",
            "qpu-broker org login --server org1.example.com:7443 --server org2.example.com:7443 --ca org-ca.pem",
            on_broker(_login), _login_options),
    Command("org logout", "forget this device's key and drop every org secret", "qpu-broker org logout",
            on_broker(_logout)),
    Command("org status", "show the link's state", "qpu-broker org status --json", on_broker(_status), json_option),
    Command("org usage", "your use of org tokens as the org server recorded it (admins: anyone's)",
            "qpu-broker org usage --since 7d", on_broker(_usage), _usage_options),
)
