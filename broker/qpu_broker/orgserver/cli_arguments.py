"""The options several `org-server` commands share, and what each comes to: the data dir
(and `$QPU_ORG_DATA`), an enrollment code's terms, and where org tokens may reach."""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.reach import Owner, Reach, bounded_org_reach, make_reach
from qpu_broker.orgserver.db import DEFAULT_DATABASE
from qpu_broker.orgserver.users import CodeTerms, code_terms_of

DATA_ENV = "QPU_ORG_DATA"  # the data dir of every org-server verb run without --data


def data_options(p: argparse.ArgumentParser) -> None:
    given = os.environ.get(DATA_ENV) or None  # parsed by argparse as if it were typed: one parse
    p.add_argument("--data", required=given is None, default=given, type=pathlib.Path, metavar="DIR",
                   help=f"the server's data dir (default: ${DATA_ENV}, when set)")
    p.add_argument("--database", metavar="URL",
                   help=f"sqlite:PATH (default: {DEFAULT_DATABASE}, in DATA) or postgresql://USER@HOST/DB, no password in it "
                        "(libpq reads ~/.pgpass); init records it in DATA/database for the other commands")


def data_and_json(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def code_options(p: argparse.ArgumentParser, *, service: bool = True) -> None:
    p.add_argument("--expires-in", metavar="SPAN", help="the enrollment code expires after this (90m, 2d; default 7d)")
    if service:
        p.add_argument("--uses", type=int, metavar="N", help="service members: the code enrolls up to N devices")
        p.add_argument("--device-ttl", metavar="SPAN",
                       help="service members: each device it enrolls expires this long after (1d, 12h)")
    else:
        p.set_defaults(uses=None, device_ttl=None)


def terms(args: argparse.Namespace) -> CodeTerms:
    """The terms `code_options` gave (users.code_terms_of reads them, as for the console's forms)."""
    return code_terms_of(args.uses, args.expires_in or "", args.device_ttl or "")


def when(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC") if us else "never"


def code_terms_line(code) -> str:
    uses = f"enrolls up to {code.uses_left} devices" if code.uses_left > 1 else "enrolls one device"
    ttl = f", each expiring {code.device_ttl_us // 1_000_000} s after it enrolls" if code.device_ttl_us else ""
    return f"{uses}{ttl}; expires {when(code.expires_us)}"


def reach_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", action="append", default=[], metavar="HOST[:PORT]",
                   help="an extra https host org tokens may reach (repeatable)")
    p.add_argument("--plain-http-host", action="append", default=[], metavar="HOST:PORT",
                   help="a loopback host:port where plain http is allowed (tests only; repeatable)")
    p.add_argument("--ca-file", type=pathlib.Path, help="extra CA certificates (PEM) trusted for these hosts")
    p.add_argument("--token-url", default="", help="the exchange endpoint (ibm, qctrl, fujitsu_quantum) instead of the official one")


def reach_from_args(args: argparse.Namespace, where: str) -> Reach:
    try:
        ca_pem = args.ca_file.read_bytes() if args.ca_file else b""
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read --ca-file: {exc.strerror}: {exc.filename}") from None
    return bounded_org_reach(make_reach(hosts=args.host, plain_http_hosts=args.plain_http_host, ca_pem=ca_pem,
                                        token_url=args.token_url, owner=Owner.ORG, where=where), where)


def describe_reach(reach: Reach) -> dict:
    return {"hosts": list(reach.hosts), "plain_http_hosts": list(reach.plain_http_hosts),
            "ca": "set" if reach.ca_pem else "", "token_url": reach.token_url}


def reach_line(d: dict) -> str:
    return (f"hosts={','.join(d['hosts']) or '-'} plain_http_hosts={','.join(d['plain_http_hosts']) or '-'} "
            f"ca={d['ca'] or '-'} token_url={d['token_url'] or '-'}")

