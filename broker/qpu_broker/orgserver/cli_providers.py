"""`org-server provider ...`: where org tokens of a provider may go, org-wide, and the custom
providers the org defines for hardware the built-ins do not know."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import PROVIDERS, check_provider

from qpu_broker.common.commands import Command, Group
from qpu_broker.orgserver.cli_arguments import (
    data_and_json,
    data_options,
    describe_reach,
    reach_from_args,
    reach_line,
    reach_options,
)
from qpu_broker.orgserver.cli_context import on_store, record
from qpu_broker.orgserver.custom_definitions import (
    define,
    definition_file,
    describe,
    read_definitions,
    undefine,
)
from qpu_broker.orgserver.org_reach import clear_provider_reach, set_provider_reach
from qpu_broker.orgserver.store import OrgStore


def _set(store: OrgStore, args: argparse.Namespace) -> None:
    provider = check_provider(args.provider)
    if provider not in PROVIDERS and provider not in store.custom_providers():
        raise InvalidArgumentError(f"the organization defines no provider {provider!r}: define it first with "
                                   f"'qpu-broker org-server provider define {provider} --file {provider}.toml'")
    reach = reach_from_args(args, f"provider {provider}")
    before = set_provider_reach(store, record(store), provider, reach)
    if before is not None and before != reach:  # "set" replaces: say what went, so nothing is lost unseen
        print(f"{provider}: replaced {reach_line(describe_reach(before))}", file=sys.stderr)
    print(f"{provider}: org tokens may also reach {', '.join(reach.hosts + reach.plain_http_hosts) or 'no extra host'}"
          f"{'; extra CA set' if reach.ca_pem else ''}{'; token URL ' + reach.token_url if reach.token_url else ''}")


def _show(store: OrgStore, args: argparse.Namespace) -> None:
    doc = {p: describe_reach(r) for p, r in sorted(store.org_reach().items())}
    defined = read_definitions(store)
    if args.json:  # the settings by provider, as before; the org's definitions under a key no provider name
        # can be (names start with a letter)
        print(json.dumps({**doc, "_custom": {n: d.as_dict() for n, d in sorted(defined.items())}}))
    elif not doc:
        print("no org-wide settings: org tokens go to their providers' official hosts only")
    for provider, d in doc.items() if not args.json else ():
        print(f"{provider}: {reach_line(d)}")
    for name, d in sorted(defined.items()) if not args.json else ():
        print(f"custom {name}: {describe(d)}")


def _clear(store: OrgStore, args: argparse.Namespace) -> None:
    provider = check_provider(args.provider)
    if clear_provider_reach(store, record(store), provider) is None:  # a typo must not read as done
        print(f"{provider}: no org-wide settings to clear (see 'org-server provider show'); nothing changed")
        return
    print(f"{provider}: org tokens go to the official hosts only")


def _define(store: OrgStore, args: argparse.Namespace) -> None:
    definition = definition_file(args.provider, args.file)
    before = define(store, record(store), definition)
    if before is not None and before != definition:  # a redefinition: say what went, so nothing is lost unseen
        print(f"{definition.name}: replaced {describe(before)}", file=sys.stderr)
    print(f"{definition.name}: {describe(definition)}; members' daemons get it within a second. Admins add its org "
          f"tokens with 'qpu-broker token add NAME --type organization --provider {definition.name}'")


def _undefine(store: OrgStore, args: argparse.Namespace) -> None:
    undefine(store, record(store), args.provider)
    tokens = [t.name for t in store.tokens() if t.provider == args.provider]
    print(f"{args.provider}: no longer defined; members' daemons refuse its org tokens within a second"
          + (f" ({', '.join(map(repr, tokens))}: define it again, or delete them)" if tokens else ""))


# -- arguments ----------------------------------------------------------------
def _set_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("provider", help=f"one of {', '.join(PROVIDERS)}, or a custom provider the org defines")
    reach_options(p)


def _clear_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("provider", help=f"one of {', '.join(PROVIDERS)}, or a custom provider's name")


def _define_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("provider", metavar="NAME", help="its name: lower-case letters, digits and '-'")
    p.add_argument("--file", required=True, type=pathlib.Path, metavar="FILE",
                   help="a TOML file of the keys a member writes under [providers.custom.NAME]: official_hosts, "
                        "auth, header, template, official_token_url, scope, audience, session, [session_env] (- for stdin)")


def _undefine_options(p: argparse.ArgumentParser) -> None:
    data_options(p)
    p.add_argument("provider", metavar="NAME", help="the custom provider's name")


COMMANDS = (
    Group("provider", "where org tokens of a provider may go, org-wide (admins' say alone)",
          "qpu-broker org-server provider set ibm --host eu-de.quantum.cloud.ibm.com --data /srv/qpu-org"),
    Command("provider set", "replace the org-wide settings of one provider",
            "qpu-broker org-server provider set ibm --host eu-de.quantum.cloud.ibm.com --data /srv/qpu-org",
            on_store(_set), _set_options),
    Command("provider show", "show the org-wide settings", "qpu-broker org-server provider show --data /srv/qpu-org",
            on_store(_show), data_and_json),
    Command("provider clear", "back to the provider's official hosts only",
            "qpu-broker org-server provider clear ibm --data /srv/qpu-org", on_store(_clear), _clear_options),
    Command("provider define", "define a custom provider for the org's tokens (hardware the built-ins do not know), "
                               "or replace its definition; members' daemons get it within a second",
            "qpu-broker org-server provider define quantinuum --file quantinuum.toml --data /srv/qpu-org",
            on_store(_define), _define_options),
    Command("provider undefine", "remove a custom provider's definition: its org tokens stay listed, and every use "
                                 "of them is refused",
            "qpu-broker org-server provider undefine quantinuum --data /srv/qpu-org", on_store(_undefine),
            _undefine_options),
)
