"""`qpu-broker token ...`: stored tokens, personal and the org's (never their secrets on argv)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from qpu_broker_client import (
    AlreadyExistsError,
    Broker,
    NotFoundError,
    QpuToken,
    QpuTokenType,
)

from qpu_broker.cli.arguments import (
    PROVIDER_HELP,
    count,
    json_option,
    provider,
    to_json,
)
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.failures import UsageError
from qpu_broker.cli.secret_prompt import read_secret, unlocked
from qpu_broker.common.commands import Command, Group
from qpu_broker.common.lifetimes import lifetime_arg

TYPES = ("personal", "organization", "group")


def _time(value: datetime.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _expires(value: datetime.datetime | None) -> str:
    """A listing's EXPIRES: an expired token stays listed (an org's until an admin renews it), marked."""
    if value is None:
        return "never"
    return f"{'expired ' if value <= datetime.datetime.now(datetime.UTC) else ''}{_time(value)}"


def token_json(token: QpuToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "provider": token.provider, "token_type": token.token_type.value,
            "created_at": _time(token.created_at), "updated_at": _time(token.updated_at),
            "expires_at": _time(token.expires_at), **({"mode": token.mode} if token.mode else {})}


def _print_token(token: QpuToken, as_json: bool) -> None:
    if as_json:
        print(to_json(token_json(token)))
    else:
        print(token)


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _selector(args: argparse.Namespace) -> dict[str, Any]:
    if (args.name is None) == (args.token_id is None):
        raise UsageError("name the token by NAME or by --id ID (one of them)")
    if args.token_id is not None:
        return {"qpu_token_id": args.token_id, "token_type": args.type}
    return {"qpu_token_name": args.name, "token_type": args.type}


def _add(b: Broker, args: argparse.Namespace) -> None:
    api = b.qpu_token
    if QpuTokenType.parse(args.type) is QpuTokenType.PERSONAL:  # what can be checked, before the prompt
        unlocked(b.status())
        try:
            api.get(args.name)
        except NotFoundError:
            pass
        else:
            raise AlreadyExistsError(f"a personal token named {args.name!r} exists: choose another name, or "
                                     f"replace its secret with 'qpu-broker token rotate {args.name}'")
    secret = read_secret(f"Secret for {args.provider} token {args.name!r}: ")
    _print_token(api.create(name=args.name, provider=args.provider, token=secret, token_type=args.type,
                            expires_in=args.expires_in, cached=True if args.cached else None), args.json)


def _list(b: Broker, args: argparse.Namespace) -> None:
    groups = b.qpu_token.get_all(filter_provider=args.provider, token_type=args.type, limit=args.limit,
                                 offset=args.offset)
    if args.json:
        print(to_json({kind.value: [token_json(t) for t in tokens] for kind, tokens in groups.items()}))
        return
    rows = [[t.token_type.value, t.mode or "-", t.name or "", t.provider or "", t.id or "", _time(t.updated_at),
             _expires(t.expires_at)] for tokens in groups.values() for t in tokens]
    if rows:
        _print_table([["KIND", "MODE", "NAME", "PROVIDER", "ID", "UPDATED", "EXPIRES"], *rows])
    else:
        print("no tokens")
    _print_quotas(b, [t.name for t in groups.get(QpuTokenType.ORGANIZATION, ())])


def _print_quotas(b: Broker, org_names: list[str]) -> None:
    """Under a token list with org tokens: what the member's quotas leave them."""
    if not org_names:
        return
    from qpu_broker_client.usage import quota_line

    for q in b.org_status().quotas:
        if not q.token_id or q.token_name in org_names:
            print(quota_line(q))


def _show(b: Broker, args: argparse.Namespace) -> None:
    sel = _selector(args)
    token = b.qpu_token.get(sel.get("qpu_token_name"), sel["token_type"], qpu_token_id=sel.get("qpu_token_id"))
    _print_token(token, args.json)


def _rename(b: Broker, args: argparse.Namespace) -> None:
    _print_token(b.qpu_token.update(name=args.new_name, **_selector(args)), args.json)


def _rotate(b: Broker, args: argparse.Namespace) -> None:
    api = b.qpu_token
    sel = _selector(args)
    api.get(sel.get("qpu_token_name"), sel["token_type"], qpu_token_id=sel.get("qpu_token_id"))  # it exists
    if QpuTokenType.parse(args.type) is QpuTokenType.PERSONAL:
        unlocked(b.status())
    secret = read_secret(f"New secret for {args.name or args.token_id!r}: ")
    _print_token(api.update(token=secret, expires_in=args.expires_in, **sel), args.json)


def _rm(b: Broker, args: argparse.Namespace) -> None:
    b.qpu_token.delete(**_selector(args))
    print(f"deleted {args.name or args.token_id!r}")


def _default(b: Broker, args: argparse.Namespace) -> None:
    api = b.qpu_token
    if args.clear and (args.name or args.token_id):
        raise UsageError("give a token to make it the default, or --clear PROVIDER: not both")
    if args.clear:
        defaults = api.clear_default(args.clear)
    elif args.name or args.token_id:
        defaults = api.set_default(args.name, qpu_token_id=args.token_id)
    else:
        defaults = api.defaults()
    if args.json:
        print(to_json(defaults))
    elif defaults:
        _print_table([["PROVIDER", "DEFAULT"], *sorted([p, n] for p, n in defaults.items())])
    else:
        print("no defaults: a provider with one personal token uses it; with several, exec asks for --token")


# -- arguments ----------------------------------------------------------------
def _selector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="the token's name")
    p.add_argument("--id", dest="token_id", help="the token's id, instead of its name")
    p.add_argument("--type", default="personal", choices=TYPES, help="token kind (default: personal)")


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a name for it, unique per kind (case-sensitive)")
    p.add_argument("--provider", required=True, type=provider, help=PROVIDER_HELP)
    p.add_argument("--type", default="personal", choices=TYPES,
                   help="personal (default), or organization (alias group; org admins only)")
    p.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                   help="refuse its use after this long (90d, 12h, 30m, 3600s), like ssh-add -t")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cached", action="store_true", help="organization tokens (admins): members' daemons hold "
                                                          "its secret in memory (faster; trusts their machines). "
                                                          "Default: relay, its secret never leaves the org server")
    mode.add_argument("--relay", action="store_true", help="organization tokens: relay (the default; kept for scripts)")
    json_option(p)


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", type=provider, help="only this provider's tokens")
    p.add_argument("--type", choices=TYPES, help="only this kind (default: both)")
    p.add_argument("--limit", type=count, help="at most N tokens of each kind")
    p.add_argument("--offset", type=count, help="skip the first N tokens of each kind")
    json_option(p)


def _show_options(p: argparse.ArgumentParser) -> None:
    _selector_options(p)
    json_option(p)


def _rename_options(p: argparse.ArgumentParser) -> None:
    _selector_options(p)
    p.add_argument("new_name", metavar="NEW_NAME", help="the new name")
    json_option(p)


def _rotate_options(p: argparse.ArgumentParser) -> None:
    _selector_options(p)
    p.add_argument("--expires-in", type=lifetime_arg, metavar="LIFETIME",
                   help="a new lifetime from now for the new secret (default: keep the old expiry)")
    json_option(p)


def _default_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="the token's name (none: show every provider's default)")
    p.add_argument("--id", dest="token_id", help="the token's id, instead of its name")
    p.add_argument("--clear", metavar="PROVIDER", type=provider, help="this provider has no default any more")
    json_option(p)


COMMANDS = (
    Group("token", "manage stored tokens",
          ("qpu-broker token add 'My IBM Token' --provider ibm     # reads the secret from a prompt",
           "qpu-broker token list",
           "qpu-broker token rotate 'My IBM Token'")),
    Command("token add", "store a token; the secret is read from a prompt or stdin",
            "pass show ibm/token | qpu-broker token add 'My IBM Token' --provider ibm --expires-in 90d",
            on_broker(_add), _add_options),
    Command("token list", "list tokens (never their secrets)", "qpu-broker token list --provider ibm --json",
            on_broker(_list), _list_options),
    Command("token show", "show one token's metadata", "qpu-broker token show 'My IBM Token'",
            on_broker(_show), _show_options),
    Command("token rename", "rename a token", "qpu-broker token rename 'My IBM Token' 'IBM (old)'",
            on_broker(_rename), _rename_options),
    Command("token rotate", "replace a token's secret in place (same id)",
            "qpu-broker token rotate 'My IBM Token'          # new secret, same id", on_broker(_rotate), _rotate_options),
    Command("token rm", "delete a token", "qpu-broker token rm --id 7b02435025f8766562090c70",
            on_broker(_rm), _selector_options),
    Command("token default", "the personal token exec sessions use when a provider has several",
            "qpu-broker token default 'My Leap token'     # exec uses it for dwave", on_broker(_default),
            _default_options),
)
