"""`org-server init`, `serve` and `console-login`: make an org's data dir, serve it, and sign an admin in
to the web console it serves."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from qpu_broker.common.commands import Command
from qpu_broker.orgserver.admin_record import code_terms
from qpu_broker.orgserver.cli_arguments import (
    code_options,
    code_terms_line,
    data_options,
    terms,
)
from qpu_broker.orgserver.cli_context import on_layout, on_store, record
from qpu_broker.orgserver.db import RECORDS_SYNC
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.tls_files import check_tls_hosts, make_tls_files
from qpu_broker.orgserver.users import new_users


def _init(layout: OrgLayout, args: argparse.Namespace) -> int:
    tls_hosts = check_tls_hosts(args.tls_host)  # before anything is written
    store, _ = layout.create(args.database)
    [(user, code, new)] = new_users([(args.admin, "admin")], terms(args))
    with record(store).changing() as note:
        store.set_meta("org", args.org)
        store.add_users([user], [code])
        note("org.init", args.org, f"first admin {user.name!r}; {code_terms(code)}")
    if tls_hosts:
        make_tls_files(layout.tls, args.org, tls_hosts)
        print(f"made a CA and a server certificate for {', '.join(args.tls_host)} in {layout.tls.directory}; "
              f"members log in with --ca {layout.tls.ca}", file=sys.stderr)
    print(f"created the organization {args.org!r} in {args.data}; the enrollment code of admin {args.admin!r} "
          f"follows, shown this once ({code_terms_line(code)}); log in with 'qpu-broker org login':", file=sys.stderr)
    print(new.code)
    return 0


def _serve(layout: OrgLayout, args: argparse.Namespace) -> int:
    from qpu_broker.common.event_loop import event_loop_runner
    from qpu_broker.orgserver.serve import serve

    if (args.tls_cert is None) != (args.tls_key is None):
        print("qpu-broker: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return event_loop_runner()(serve(layout, args.database, args.listen, args.tls_cert, args.tls_key,
                                     args.records_sync, args.console))


def _console_login(store: OrgStore, args: argparse.Namespace) -> int:
    from qpu_broker.orgserver.console.login import console_login

    return console_login(store, record(store), args.admin, args.url)


def _init_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--org", required=True, help="the organization's name")
    p.add_argument("--admin", required=True, help="the first admin's user name")
    p.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                   help="make a CA and a server certificate for this host name or IP (repeatable); "
                        "members then log in with --ca DATA/tls/ca.pem")
    code_options(p, service=False)


def _serve_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
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


def _console_login_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--admin", required=True, metavar="NAME", help="the admin who signs in")
    p.add_argument("--url", default="", help="the console's address as people open it (behind a proxy); default: "
                                             "where 'serve --console' last listened")


COMMANDS = (
    Command("init", "create the org and its first admin; prints the admin's enrollment code once",
            "qpu-broker org-server init --data /srv/qpu-org --org 'Acme' --admin alice --tls-host org.acme.example",
            on_layout(_init), _init_options),
    Command("serve", "serve the org over gRPC with TLS (plain text only on loopback, for tests)",
            "qpu-broker org-server serve --data /srv/qpu-org --listen 0.0.0.0:7443 --console 0.0.0.0:8443",
            on_layout(_serve), _serve_options),
    Command("console-login", "print a one-time sign-in link to the web console for an admin (it works once, "
            "within minutes)", "qpu-broker org-server console-login --admin alice --data /srv/qpu-org",
            on_store(_console_login), _console_login_options),
)
