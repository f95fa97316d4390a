"""`qpu-broker request`: one request through the daemon, like curl (for debugging)."""

from __future__ import annotations

import argparse
import sys

from qpu_broker_client import Broker, QpuBrokerError, QpuToken, TokenProvider
from qpu_broker_client.luna_env import merged_fields
from qpu_broker_client.providers import ENV_HINT, SPLIT_FIELDS

from qpu_broker.cli.arguments import PROVIDER_HELP, provider, seconds
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.failures import UsageError
from qpu_broker.common.commands import Command


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise QpuBrokerError(f"cannot read --data file {data[1:]}: {exc.strerror}") from None
    return data.encode()


def _request(b: Broker, args: argparse.Namespace) -> int:
    headers = []
    for raw in args.headers:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"a header is 'Name: value', not {raw!r}")
        headers.append((name.strip(), value.strip()))
    tokens = None
    if args.token or args.org_token:
        kind = "personal" if args.token else "organization"
        tokens = TokenProvider.of({args.provider: QpuToken(kind, name=args.token or args.org_token)})
    elif not (merged_fields(None).keys() & {args.provider, *SPLIT_FIELDS.get(args.provider, ())}):
        # The daemon would answer with the Python API's way (qpu_tokens=...): say the command's.
        var = f", or set {ENV_HINT[args.provider]}" if args.provider in ENV_HINT else ""
        raise UsageError(f"which {args.provider} token? give --token NAME (yours: 'qpu-broker token list --provider "
                         f"{args.provider}') or --org-token NAME{var}")
    body = _body(args.data)
    r = b.forward(args.method or ("POST" if args.data is not None else "GET"), args.url, provider=args.provider,
                  headers=headers, body=body, qpu_tokens=tokens, timeout=args.timeout,
                  region=args.region, service=args.service)
    out = sys.stdout.buffer
    if args.include:
        out.write(f"{r.http_version or 'HTTP/1.1'} {r.status_code}\r\n".encode())
        for name, value in r.headers.multi_items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n")
    out.write(r.content)
    out.flush()
    return 22 if args.fail and r.status_code >= 400 else 0




def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the https URL to send the request to (a host of the provider's)")
    p.add_argument("-X", "--request", dest="method", default=None, help="HTTP method (default GET, or POST with --data)")
    p.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (repeatable); auth headers are dropped, the daemon adds the real one")
    p.add_argument("-d", "--data", help="the body: a string, @FILE, or @- for stdin")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    p.add_argument("-f", "--fail", action="store_true", help="exit 22 on an HTTP status of 400 or more, like curl")
    p.add_argument("--provider", required=True, type=provider, help=PROVIDER_HELP)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--token", help="a stored personal token, by name (default: the LUNA_* variable)")
    which.add_argument("--org-token", help="an organization token, by name")
    p.add_argument("--region", help="AWS region to sign for (default: from the host)")
    p.add_argument("--service", help="AWS service to sign for (default: from the host)")
    p.add_argument("--timeout", type=seconds, help="seconds to wait for the provider (default forward.timeout_seconds)")


COMMAND = Command("request", "send one request through the daemon, like curl (for debugging)",
                  "qpu-broker request --provider ionq --token 'My IonQ key' https://api.ionq.co/v0.3/jobs",
                  on_broker(_request), _options)
