"""New users of the org: their names, their keys, and the list form bulk additions come in.

One place for both ways in (the CLI on the data dir, the admin RPC): a name is checked the
same way, each key is made here and shown once, and a list is added whole or not at all.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.usage import EVERY_MEMBER

from qpu_broker.common.names import check_name
from qpu_broker.orgserver import apikeys
from qpu_broker.orgserver.roles import ROLES
from qpu_broker.orgserver.store import User

USER_NAME_MAX = 128
USERS_PER_CALL_MAX = 10_000  # one transaction; more go in several calls


def check_user_name(name: str, what: str = "a user name") -> str:
    """Printable, no spaces, no invisible format characters (a name shown in listings and logs
    must be what it looks like), and not EVERY_MEMBER. Group names follow the same rules."""
    name = check_name(name, USER_NAME_MAX, what)
    if (any(c.isspace() or not c.isprintable() or unicodedata.category(c) == "Cf" for c in name)
            or name == EVERY_MEMBER):
        raise InvalidArgumentError(f"{what} is printable, has no spaces or invisible characters and is not "
                                   f"{EVERY_MEMBER!r} (it means every member in quotas): {name[:USER_NAME_MAX]!r}")
    return name


def new_users(wanted: Iterable[tuple[str, str]]) -> list[tuple[User, str]]:
    """(user, API key shown once) for each (name, role); a name given twice is refused."""
    wanted = list(wanted)
    if len(wanted) > USERS_PER_CALL_MAX:  # before any key is made
        raise InvalidArgumentError(f"at most {USERS_PER_CALL_MAX} users at once: split the list")
    made: list[tuple[User, str]] = []
    seen: set[str] = set()
    now_us = int(time.time() * 1_000_000)
    for name, role in wanted:
        name = check_user_name(name)
        if role not in ROLES:
            raise InvalidArgumentError(f"user {name!r}: the role is member or admin, not {role[:16]!r}")
        if name in seen:
            raise InvalidArgumentError(f"user {name!r} is listed twice: nobody was added")
        seen.add(name)
        key = apikeys.new_key()
        made.append((User(name, role, key.key_id, key.key_hash, now_us), key.key))
    return made


def read_user_lines(lines: Iterable[str], where: str) -> list[tuple[str, str]]:
    """`NAME` or `NAME ROLE` per line; blank lines and comments (`#` at the start of a line, or
    after a space) are skipped; a `#` inside a name is part of it, and refused with the name."""
    out = []
    for number, line in enumerate(lines, 1):
        fields = []
        for field in line.split():
            if field.startswith("#"):
                break
            fields.append(field)
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and fields[1] not in ROLES):
            raise InvalidArgumentError(f"{where} line {number}: expected NAME or NAME ROLE (member or admin), "
                                       f"got {line.strip()[:80]!r}")
        out.append((fields[0], fields[1] if len(fields) == 2 else "member"))
    return out
