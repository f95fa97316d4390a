"""The custom providers an org defines (`org-server provider define NAME --file NAME.toml`): what
their tokens are, for the org's tokens only. A definition is the table a member would write as
`[providers.custom.NAME]` (official_hosts, auth, ...), checked by the same parser
(common/custom_providers.py) here, when the server reads its store, and in every member's daemon.

Where the org's tokens of it may go besides the official hosts is the org-wide Reach, as for a
built-in (`provider set NAME --host ...`), so a definition file holds no test hosts.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import tomllib

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.config import PROVIDER_KEYS
from qpu_broker.common.custom_providers import (
    CustomDefinition,
    check_name,
    definition_from_json,
    definition_json,
    parse_definition,
)
from qpu_broker.orgserver.admin_record import AdminRecord
from qpu_broker.orgserver.store import OrgStore

log = logging.getLogger(__name__)


def read_definitions(store: OrgStore) -> dict[str, CustomDefinition]:
    """The org's definitions as stored, each checked again (a stored one that no longer passes,
    written by hand or by another release, is left out and logged: its tokens are refused)."""
    out = {}
    for name, text in store.custom_providers().items():
        try:
            out[name] = definition_from_json(name, text, f"the org's custom provider {name!r}")
        except InvalidArgumentError as exc:
            log.error("ignoring a stored definition: %s", exc)
    return out


def definition_file(name: str, path: pathlib.Path) -> CustomDefinition:
    """A definition from a TOML file of `[providers.custom.NAME]`'s keys, or the one-line error."""
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{path} is not valid TOML: {exc}") from None
    return definition_text(name, text, f"{path}")


def definition_text(name: str, text: str, where: str) -> CustomDefinition:
    """A definition from the TOML text of `[providers.custom.NAME]`'s keys (a file's, or the
    console's form), or the one-line error naming `where`."""
    try:
        body = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{where} is not valid TOML: {exc}") from None
    for key in body:
        if key in PROVIDER_KEYS:
            raise InvalidArgumentError(
                f"{where}: {key} is not part of a definition: where the org's tokens may go besides the official "
                f"hosts is 'qpu-broker org-server provider set {name} --host HOST[:PORT]' (and --plain-http-host, "
                "--ca-file, --token-url); an exec session's endpoint is each member's own config")
    return parse_definition(check_name(name, where), body, where)


def define(store: OrgStore, record: AdminRecord, definition: CustomDefinition) -> CustomDefinition | None:
    """Store `definition` (members' daemons get it within a second); the one it replaced, if any."""
    before = store.custom_providers().get(definition.name)
    with record.changing() as note:
        store.set_custom_provider(definition.name, definition_json(definition))
        note("provider.define", definition.name, describe(definition) + ("" if before is None else " (replaced)"))
    return definition_from_json(definition.name, before, "the definition replaced") if before else None


def undefine(store: OrgStore, record: AdminRecord, name: str) -> None:
    """Its definition goes; its tokens stay listed, and every use of them is refused."""
    with record.changing() as note:
        if not store.set_custom_provider(name, None):
            raise InvalidArgumentError(f"the organization defines no custom provider {name[:40]!r}: see "
                                       "'qpu-broker org-server provider show'")
        note("provider.undefine", name, "")


def describe(d: CustomDefinition) -> str:
    """A definition in one line, for the admin record and `provider show` (nothing in it is secret)."""
    auth = f"{d.auth} {d.header}: {d.template}" if d.auth == "header" else d.auth
    extra = [f"token URL {d.token_url}"] if d.token_url else []
    extra += [f"session {d.session}"] + ([f"sets {', '.join(sorted(d.session_env))}"] if d.session_env else [])
    return f"official hosts {', '.join(d.official_hosts)}; auth {auth}; " + "; ".join(extra)
