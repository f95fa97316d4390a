"""`qpu-broker org-server`'s command line, apart from what runs it: every client command
builds the whole parser, and must not pay for the org server's imports (cryptography,
its store) to do so."""

from __future__ import annotations

import argparse
import os
import pathlib

from qpu_broker_client.providers import PROVIDERS

from qpu_broker.common.lifetimes import lifetime_arg
from qpu_broker.orgserver.db import DEFAULT_DATABASE, RECORDS_SYNC
from qpu_broker.orgserver.roles import ROLES

DATA_ENV = "QPU_ORG_DATA"  # the data dir of every org-server verb run without --data
# Every help page of `qpu-broker org-server` ends with examples: one entry per command and per group
# of commands ("" is org-server itself), as qpu_broker.cli.main.EXAMPLES for the other commands.
EXAMPLES = {
    "": ("qpu-broker org-server init --data /srv/qpu-org --org 'Acme' --admin alice --tls-host org.acme.example",
         "qpu-broker org-server serve --data /srv/qpu-org --listen 0.0.0.0:7443",
         "qpu-broker org-server user add bob --data /srv/qpu-org     # prints bob's enrollment code once"),
    "user": ("qpu-broker org-server user add bob --data /srv/qpu-org     # prints bob's enrollment code once",
             "qpu-broker org-server user list --data /srv/qpu-org"),
    "device": "qpu-broker org-server device rm 3f9a1c0b7d2e4f55 --data /srv/qpu-org",
    "tls": "qpu-broker org-server tls issue --data /srv/qpu-org --tls-host org.acme.example",
    "provider": "qpu-broker org-server provider set ibm --host eu-de.quantum.cloud.ibm.com --data /srv/qpu-org",
    "token": ("qpu-broker org-server token list --data /srv/qpu-org",
              "qpu-broker org-server token set-access 'Acme IBM' --group physics --data /srv/qpu-org"),
    "quota": ("qpu-broker org-server quota set --data /srv/qpu-org --each-member --requests 1000 --per 1d",
              "qpu-broker org-server quota list --data /srv/qpu-org"),
    "group": "qpu-broker org-server group add physics --member bob --member carol --data /srv/qpu-org",
    "init": "qpu-broker org-server init --data /srv/qpu-org --org 'Acme' --admin alice --tls-host org.acme.example",
    "serve": "qpu-broker org-server serve --data /srv/qpu-org --listen 0.0.0.0:7443 --console 0.0.0.0:8443",
    "console-login": "qpu-broker org-server console-login --admin alice --data /srv/qpu-org",
    "user add": "qpu-broker org-server user add ci --role service --uses 20 --device-ttl 1d --data /srv/qpu-org",
    "user list": "qpu-broker org-server user list --data /srv/qpu-org --json",
    "user rm": "qpu-broker org-server user rm bob --data /srv/qpu-org",
    "user rotate-key": "qpu-broker org-server user rotate-key bob --data /srv/qpu-org",
    "user code": "qpu-broker org-server user code bob --expires-in 2d --data /srv/qpu-org  # a second laptop",
    "user devices": "qpu-broker org-server user devices bob --data /srv/qpu-org",
    "device rm": "qpu-broker org-server device rm 3f9a1c0b7d2e4f55 --data /srv/qpu-org",
    "user set-role": "qpu-broker org-server user set-role bob admin --data /srv/qpu-org",
    "provider set": "qpu-broker org-server provider set ibm --host eu-de.quantum.cloud.ibm.com --data /srv/qpu-org",
    "provider show": "qpu-broker org-server provider show --data /srv/qpu-org",
    "provider clear": "qpu-broker org-server provider clear ibm --data /srv/qpu-org",
    "provider define": "qpu-broker org-server provider define quantinuum --file quantinuum.toml --data /srv/qpu-org",
    "provider undefine": "qpu-broker org-server provider undefine quantinuum --data /srv/qpu-org",
    "token set-reach": "qpu-broker org-server token set-reach 'Acme IBM' --host eu-de.quantum.cloud.ibm.com "
                                  "--data /srv/qpu-org",
    "token list": "qpu-broker org-server token list --data /srv/qpu-org",
    "token cache": "qpu-broker org-server token cache 'Acme IBM' off --data /srv/qpu-org   # relay it",
    "token relay": "qpu-broker org-server token relay 'Acme IBM' on --data /srv/qpu-org   # = cache off",
    "token set-access": "qpu-broker org-server token set-access 'Acme IBM' --group physics --data /srv/qpu-org",
    "token set-expiry": "qpu-broker org-server token set-expiry 'Acme IBM' --expires-in 90d --data /srv/qpu-org",
    "group add": "qpu-broker org-server group add physics --member bob --member carol --data /srv/qpu-org",
    "group rm": "qpu-broker org-server group rm physics --data /srv/qpu-org",
    "group list": "qpu-broker org-server group list --data /srv/qpu-org --json",
    "group add-member": "qpu-broker org-server group add-member physics dan erin --data /srv/qpu-org",
    "group rm-member": "qpu-broker org-server group rm-member physics dan --data /srv/qpu-org",
    "usage": "qpu-broker org-server usage --data /srv/qpu-org --member bob --since 2h --follow",
    "audit": "qpu-broker org-server audit --data /srv/qpu-org --actor alice --action token --since 7d",
    "quota set": "qpu-broker org-server quota set --data /srv/qpu-org --each-member --requests 1000 --per 1d",
    "quota list": "qpu-broker org-server quota list --data /srv/qpu-org --member bob",
    "quota rm": "qpu-broker org-server quota rm --data /srv/qpu-org 3",
    "tls issue": "qpu-broker org-server tls issue --data /srv/qpu-org --tls-host org.acme.example --tls-host 10.0.0.7",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    org = sub.add_parser("org-server", help="run and administer the reference organization server")
    verbs = org.add_subparsers(dest="org_verb", required=True, metavar="VERB")

    given = os.environ.get(DATA_ENV) or None  # parsed by argparse as if it were typed: one parse

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=given is None, default=given, type=pathlib.Path, metavar="DIR",
                       help=f"the server's data dir (default: ${DATA_ENV}, when set)")
        p.add_argument("--database", metavar="URL",
                       help=f"sqlite:PATH (default: {DEFAULT_DATABASE}, in DATA) or postgresql://USER@HOST/DB, no password in it "
                            "(libpq reads ~/.pgpass); init records it in DATA/database for the other commands")

    p = verbs.add_parser("init", help="create the org and its first admin; prints the admin's enrollment code once")
    data(p)
    p.add_argument("--org", required=True, help="the organization's name")
    p.add_argument("--admin", required=True, help="the first admin's user name")
    p.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                   help="make a CA and a server certificate for this host name or IP (repeatable); "
                        "members then log in with --ca DATA/tls/ca.pem")
    code_options(p, service=False)
    p = verbs.add_parser("serve", help="serve the org over gRPC with TLS (plain text only on loopback, for tests)")
    data(p)
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="e.g. 0.0.0.0:7443")
    p.add_argument("--tls-cert", type=pathlib.Path, help="server certificate (PEM); default DATA/tls/server.pem")
    p.add_argument("--tls-key", type=pathlib.Path, help="its private key (PEM); default DATA/tls/server.key")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default info")
    p.add_argument("--console", metavar="HOST:PORT", help="also serve the admin web console there (HTTPS with the "
                   "same certificate; plain text on loopback only); sign in with 'org-server console-login'")
    p.add_argument("--records-sync", choices=RECORDS_SYNC, help=(
        "SQLite stores: when a relayed call's usage record counts as written. normal (the default): once it "
        "would survive any process being killed, as a daemon's own usage queue; a power loss may lose the last "
        "ones. full: once the disk has it (an fsync per group of records: slower relayed calls)"))
    p = verbs.add_parser("console-login", help="print a one-time sign-in link to the web console for an admin "
                                               "(it works once, within minutes)")
    data(p)
    p.add_argument("--admin", required=True, metavar="NAME", help="the admin who signs in")
    p.add_argument("--url", default="", help="the console's address as people open it (behind a proxy); default: "
                                             "where 'serve --console' last listened")
    user = verbs.add_parser("user", help="manage users").add_subparsers(dest="user_verb", required=True, metavar="VERB")
    p = user.add_parser("add", help="add users; prints each one's enrollment code once (all are added, or none)")
    data(p)
    p.add_argument("name", nargs="*", help="a user's name, unique in the org (several: one line each, NAME<TAB>CODE)")
    p.add_argument("--role", default="member", choices=ROLES,
                   help="member (default), admin, or service (CI, background services: see --uses, --device-ttl)")
    p.add_argument("--from", dest="from_file", type=argparse.FileType("r"), metavar="FILE",
                   help="names from a file (- for stdin): one per line, NAME or NAME ROLE; # starts a comment")
    code_options(p)
    p.add_argument("--json", action="store_true", help="a JSON list of {name, role, code, expires}")
    p = user.add_parser("list", help="list users (never codes)")
    data(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = user.add_parser("rm", help="remove users: their codes and devices stop working, their daemons drop every "
                                   "org secret")
    data(p)
    p.add_argument("name", nargs="+", help="the users to remove (all, or none if one is not a user)")
    p = user.add_parser("rotate-key", help="withdraw every code and device of a user, and print a new code once")
    data(p)
    p.add_argument("name", help="the user whose access to replace")
    code_options(p)
    p = user.add_parser("code", help="another enrollment code for a user (another device); their devices stay")
    data(p)
    p.add_argument("name", help="the user")
    code_options(p)
    p = user.add_parser("devices", help="a user's devices: id, name, created, expires, last seen")
    data(p)
    p.add_argument("name", help="the user")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = verbs.add_parser("device", help="members' devices").add_subparsers(dest="device_verb", required=True,
                                                                            metavar="VERB").add_parser(
        "rm", help="remove one device: its daemon loses org access within a second (the user's other devices stay)")
    data(p)
    p.add_argument("id", help="the device's id (see 'user devices NAME')")
    p = user.add_parser("set-role", help="make a user an admin or a member")
    data(p)
    p.add_argument("name", help="the user")
    p.add_argument("role", choices=ROLES, help="member, admin or service")
    tls = verbs.add_parser("tls", help="the server's certificate").add_subparsers(
        dest="tls_verb", required=True, metavar="VERB")
    p = tls.add_parser("issue", help="a new server certificate from the data dir's CA (other names, or a renewal); "
                                     "members keep their ca.pem; used from the server's next start")
    data(p)
    p.add_argument("--tls-host", action="append", required=True, metavar="NAME",
                   help="a host name or IP the certificate is for (repeatable)")
    prov = verbs.add_parser("provider", help="where org tokens of a provider may go, org-wide (admins' say alone)")
    pverbs = prov.add_subparsers(dest="provider_verb", required=True, metavar="VERB")
    p = pverbs.add_parser("set", help="replace the org-wide settings of one provider")
    data(p)
    p.add_argument("provider", help=f"one of {', '.join(PROVIDERS)}, or a custom provider the org defines")
    reach_options(p)
    p = pverbs.add_parser("show", help="show the org-wide settings")
    data(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = pverbs.add_parser("clear", help="back to the provider's official hosts only")
    data(p)
    p.add_argument("provider", help=f"one of {', '.join(PROVIDERS)}, or a custom provider's name")
    p = pverbs.add_parser("define", help="define a custom provider for the org's tokens (hardware the built-ins do "
                                         "not know), or replace its definition; members' daemons get it within a second")
    data(p)
    p.add_argument("provider", metavar="NAME", help="its name: lower-case letters, digits and '-'")
    p.add_argument("--file", required=True, type=pathlib.Path, metavar="FILE",
                   help="a TOML file of the keys a member writes under [providers.custom.NAME]: official_hosts, "
                        "auth, header, template, official_token_url, scope, audience, session, [session_env] (- for stdin)")
    p = pverbs.add_parser("undefine", help="remove a custom provider's definition: its org tokens stay listed, and "
                                           "every use of them is refused")
    data(p)
    p.add_argument("provider", metavar="NAME", help="the custom provider's name")
    p = verbs.add_parser("usage", help="the usage record: every use of an org token, by whom, where, with what result; "
                                       "'usage prune --before WHEN' deletes what reached the server before then")
    data(p)
    p.add_argument("action", nargs="?", choices=["prune"], help="prune: delete the records that reached the server "
                                                               "before --before (the org's retention)")
    p.add_argument("--before", default="", metavar="WHEN", help="with prune: 90d (that long ago) or a date")
    p.add_argument("--member", default="", help="one member's records only")
    p.add_argument("--token", default="", help="one org token's records only (its name or id)")
    p.add_argument("--since", default="", metavar="WHEN", help="records from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--follow", action="store_true", help="then keep printing new records as they arrive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = verbs.add_parser("audit", help="the admin record: every admin change, who made it, from where and when "
                                       "(never a secret), oldest first")
    data(p)
    p.add_argument("--since", default="", metavar="WHEN", help="changes from then on: 90s, 15m, 2h, 7d, or a date "
                                                              "(2026-11-26, 2026-11-26T09:30)")
    p.add_argument("--actor", default="", metavar="NAME", help="one admin's changes (their user name), or the admin "
                                                               "CLI's: cli:OSUSER")
    p.add_argument("--action", default="", metavar="ACTION", help="one kind of change: user.add, token.update, ... "
                                                                  "or all of a kind: user, token, quota, ...")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    quota = verbs.add_parser("quota", help="limits on org token use: requests, or D-Wave QPU time, per window")
    qverbs = quota.add_subparsers(dest="quota_verb", required=True, metavar="VERB")
    p = qverbs.add_parser("set", help="add a quota, or replace the one for the same member, token and unit")
    data(p)
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
    p = qverbs.add_parser("list", help="quotas, with this window's use")
    data(p)
    p.add_argument("--member", default="", help="the quotas that bind one member, with their use")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = qverbs.add_parser("rm", help="remove a quota")
    data(p)
    p.add_argument("id", type=int, help="the quota's number (see quota list)")
    group = verbs.add_parser("group", help="groups of members: a token limited to groups is for their members "
                                           "(and org admins) only")
    gverbs = group.add_subparsers(dest="group_verb", required=True, metavar="VERB")
    p = gverbs.add_parser("add", help="add a group (named like users: printable, no spaces)")
    data(p)
    p.add_argument("name", help="the group's name")
    p.add_argument("--member", action="append", default=[], metavar="USER", help="a first member (repeatable)")
    p = gverbs.add_parser("rm", help="remove a group; a token whose last group it was is left to org admins only")
    data(p)
    p.add_argument("name", help="the group's name")
    p = gverbs.add_parser("list", help="groups and their members")
    data(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for verb, said in (("add-member", "put users in a group (all, or none if one is not a user)"),
                       ("rm-member", "take users out of a group (all, or none if one is not in it)")):
        p = gverbs.add_parser(verb, help=said)
        data(p)
        p.add_argument("group", help="the group")
        p.add_argument("member", nargs="+", help="the users")
    tok = verbs.add_parser("token", help="where one org token may go, beyond its provider's org-wide settings, "
                                         "who may use it, and whether members' daemons hold its secret")
    tverbs = tok.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    p = tverbs.add_parser("set-reach", help="replace one token's own hosts, CA and token URL")
    data(p)
    p.add_argument("name", help="the org token's name")
    reach_options(p)
    p = tverbs.add_parser("cache", help="whether members' daemons hold one token's secret (on: faster, trusting "
                                       "their machines) or it stays on this server, which makes every call (off: "
                                       "relay, the default; quotas and the record cannot be bypassed)")
    data(p)
    p.add_argument("name", help="the org token's name")
    p.add_argument("state", choices=("on", "off"), help="on: cached in members' daemons; off: relay")
    p = tverbs.add_parser("relay", help="the older name of 'token cache', the other way round: relay on = cache off")
    data(p)
    p.add_argument("name", help="the org token's name")
    p.add_argument("state", choices=("on", "off"), help="on: relay (the default); off: cached in members' daemons")
    p = tverbs.add_parser("set-access", help="who may see and use one token besides org admins: every member "
                                             "(the default), or the members of some groups")
    data(p)
    p.add_argument("name", help="the org token's name")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", action="append", metavar="GROUP", help="a group whose members may use it (repeatable; "
                                                                       "replaces the token's groups)")
    who.add_argument("--everyone", action="store_true", help="every member of the org")
    who.add_argument("--admins-only", action="store_true", help="org admins only")
    p = tverbs.add_parser("set-expiry", help="when one token stops being usable: from then on the server refuses its "
                                             "use and members' daemons drop it (a new lifetime renews an expired one)")
    data(p)
    p.add_argument("name", help="the org token's name")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                      help="its lifetime from now (90d, 12h, 30m, 3600s)")
    when.add_argument("--never", action="store_true", help="it never expires")
    p = tverbs.add_parser("list", help="org tokens, where each may go and who may use it (never secrets)")
    data(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def code_options(p: argparse.ArgumentParser, *, service: bool = True) -> None:
    p.add_argument("--expires-in", metavar="SPAN", help="the enrollment code expires after this (90m, 2d; default 7d)")
    if service:
        p.add_argument("--uses", type=int, metavar="N", help="service members: the code enrolls up to N devices")
        p.add_argument("--device-ttl", metavar="SPAN",
                       help="service members: each device it enrolls expires this long after (1d, 12h)")
    else:
        p.set_defaults(uses=None, device_ttl=None)


def reach_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", action="append", default=[], metavar="HOST[:PORT]",
                   help="an extra https host org tokens may reach (repeatable)")
    p.add_argument("--plain-http-host", action="append", default=[], metavar="HOST:PORT",
                   help="a loopback host:port where plain http is allowed (tests only; repeatable)")
    p.add_argument("--ca-file", type=pathlib.Path, help="extra CA certificates (PEM) trusted for these hosts")
    p.add_argument("--token-url", default="", help="the exchange endpoint (ibm, qctrl, fujitsu_quantum) instead of the official one")
