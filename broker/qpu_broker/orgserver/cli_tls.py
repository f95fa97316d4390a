"""`org-server tls issue`: the server's certificate, from the data dir's CA."""

from __future__ import annotations

import argparse
import sys

from qpu_broker.common.commands import Command, Group
from qpu_broker.orgserver.cli_arguments import data_options
from qpu_broker.orgserver.cli_context import on_layout
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.tls_files import (
    check_tls_hosts,
    issue_server_certificate,
    make_tls_files,
)


def _issue(layout: OrgLayout, args: argparse.Namespace) -> int:
    layout.require(args.database)  # an org's data dir, or the one-line reason it is not
    hosts = check_tls_hosts(args.tls_host)
    if not layout.tls.ca_key.exists() and not layout.tls.exists():  # no TLS yet: what init --tls-host makes
        store, _ = layout.open(args.database)
        make_tls_files(layout.tls, store.meta("org") or "org", hosts)
        store.close()
        print(f"made a CA and a server certificate for {', '.join(hosts)} in {layout.tls.directory}: restart "
              f"'org-server serve' to use them; members log in with --ca {layout.tls.ca}", file=sys.stderr)
        return 0
    expires = issue_server_certificate(layout.tls, hosts)
    print(f"issued a server certificate for {', '.join(hosts)}, valid until {expires:%Y-%m-%d}, in "
          f"{layout.tls.cert}: restart 'org-server serve' to use it (members keep {layout.tls.ca})", file=sys.stderr)
    return 0


def _issue_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--tls-host", action="append", required=True, metavar="NAME",
                   help="a host name or IP the certificate is for (repeatable)")


COMMANDS = (
    Group("tls", "the server's certificate",
          "qpu-broker org-server tls issue --data /srv/qpu-org --tls-host org.acme.example"),
    Command("tls issue", "a new server certificate from the data dir's CA (other names, or a renewal); members keep "
                         "their ca.pem; used from the server's next start",
            "qpu-broker org-server tls issue --data /srv/qpu-org --tls-host org.acme.example --tls-host 10.0.0.7",
            on_layout(_issue), _issue_options),
)
