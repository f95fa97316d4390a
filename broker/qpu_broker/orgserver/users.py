"""New users of the org: their names, their enrollment codes, and the list form bulk additions
come in.

One place for both ways in (the CLI on the data dir, the admin RPC): a name is checked the
same way, each code is made here (with its terms) and shown once, and a list is added whole
or not at all.
"""

from __future__ import annotations

import dataclasses
import time
import unicodedata
from collections.abc import Iterable

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.usage import EVERY_MEMBER

from qpu_broker.common.names import check_name
from qpu_broker.common.since import parse_span
from qpu_broker.orgserver import codes
from qpu_broker.orgserver.admin_record import AdminRecord, code_terms
from qpu_broker.orgserver.roles import ROLES, SERVICE
from qpu_broker.orgserver.store import OPEN, EnrollmentCode, OrgStore, User

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


@dataclasses.dataclass(frozen=True)
class CodeTerms:
    """What an enrollment code allows: how many devices, until when, for how long each."""

    uses: int = 1
    expires_in_seconds: int = codes.DEFAULT_EXPIRES_SECONDS
    device_ttl_seconds: int = 0  # 0: the devices it enrolls do not expire


DEFAULT_TERMS = CodeTerms()


def check_terms(terms: CodeTerms, role: str) -> CodeTerms:
    """Several devices a code, and devices that expire, are for service members (a person's code
    enrolls their one laptop; a second one gets a code of its own)."""
    if role != SERVICE and (terms.uses != 1 or terms.device_ttl_seconds):
        raise InvalidArgumentError("--uses and --device-ttl are for service members (--role service): a person's code "
                                   "enrolls one device; give them another code for another device")
    if not 1 <= terms.uses <= codes.USES_MAX:
        raise InvalidArgumentError(f"--uses is 1 to {codes.USES_MAX} devices, not {terms.uses}")
    for what, seconds, least in (("--expires-in", terms.expires_in_seconds, 1), ("--device-ttl", terms.device_ttl_seconds, 0)):
        if not least <= seconds <= codes.EXPIRES_MAX_SECONDS:
            raise InvalidArgumentError(f"{what} is at most {codes.EXPIRES_MAX_SECONDS // 86400} days"
                                       f"{' and more than none' if least else ''}")
    return terms


def new_code(name: str, role: str, terms: CodeTerms, now_us: int) -> tuple[EnrollmentCode, codes.NewCode]:
    """A code for `name` (stored as its hash) and the code itself, shown once."""
    terms = check_terms(terms, role)
    made = codes.new_code()
    return EnrollmentCode(made.code_id, made.code_hash, name, terms.uses, terms.device_ttl_seconds * 1_000_000,
                          now_us + terms.expires_in_seconds * 1_000_000, OPEN, now_us, 0), made


def new_users(wanted: Iterable[tuple[str, str]], terms: CodeTerms = DEFAULT_TERMS
              ) -> list[tuple[User, EnrollmentCode, codes.NewCode]]:
    """(user, their first code, the code shown once) for each (name, role); a name given twice is refused."""
    wanted = list(wanted)
    if len(wanted) > USERS_PER_CALL_MAX:  # before any code is made
        raise InvalidArgumentError(f"at most {USERS_PER_CALL_MAX} users at once: split the list")
    made: list[tuple[User, EnrollmentCode, codes.NewCode]] = []
    seen: set[str] = set()
    now_us = int(time.time() * 1_000_000)
    for name, role in wanted:
        name = check_user_name(name)
        if role not in ROLES:
            raise InvalidArgumentError(f"user {name!r}: the role is {', '.join(ROLES)}, not {role[:16]!r}")
        if name in seen:
            raise InvalidArgumentError(f"user {name!r} is listed twice: nobody was added")
        seen.add(name)
        made.append((User(name, role, now_us), *new_code(name, role, terms, now_us)))
    return made


def add_users(store: OrgStore, record: AdminRecord, made: list[tuple[User, EnrollmentCode, codes.NewCode]]) -> None:
    """`new_users`' users and their first codes, all or none, each with its admin record entry."""
    with record.changing() as note:
        store.add_users([user for user, _, _ in made], [code for _, code, _ in made])
        for user, code, _ in made:
            note("user.add", user.name, f"role {user.role}; {code_terms(code)}")


def remove_users(store: OrgStore, record: AdminRecord, names: list[str], now_us: int) -> None:
    """All of them or none: their codes withdrawn, their devices ended, each with its entry."""
    if len(names) > USERS_PER_CALL_MAX:
        raise InvalidArgumentError(f"at most {USERS_PER_CALL_MAX} users at once: split the list")
    if len(set(names)) != len(names):
        raise InvalidArgumentError("a user is named twice: nobody was removed")
    with record.changing() as note:
        store.remove_users(names, now_us)
        for name in names:
            note("user.rm", name, "their codes withdrawn and devices ended")


def set_role(store: OrgStore, record: AdminRecord, name: str, role: str) -> None:
    """`user set-role`: the user's new role (NOT_FOUND when there is no such user), with its entry.
    Their sessions and streams are checked again as its event arrives (an admin no longer one is out)."""
    if role not in ROLES:
        raise InvalidArgumentError(f"the role is {', '.join(ROLES)}, not {role[:16]!r}")
    with record.changing() as note:
        before = store.user(name)
        store.set_role(name, role)  # NOT_FOUND when there is no such user
        note("user.set-role", name, f"{before.role if before else '?'} -> {role}")


def code_terms_of(uses: int | None, expires_in: str, device_ttl: str) -> CodeTerms:
    """An enrollment code's terms as `--uses`, `--expires-in` and `--device-ttl` give them (empty:
    the default); check_terms checks them against the role."""
    default = CodeTerms()
    return CodeTerms(uses if uses is not None else default.uses,
                     parse_span(expires_in, "--expires-in") // 1_000_000 if expires_in else default.expires_in_seconds,
                     parse_span(device_ttl, "--device-ttl") // 1_000_000 if device_ttl else 0)


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
            raise InvalidArgumentError(f"{where} line {number}: expected NAME or NAME ROLE ({', '.join(ROLES)}), "
                                       f"got {line.strip()[:80]!r}")
        out.append((fields[0], fields[1] if len(fields) == 2 else "member"))
    return out
