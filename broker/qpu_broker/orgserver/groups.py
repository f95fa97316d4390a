"""Groups, and who may see and use each org token: access per token.

A token's access is everyone (the default, `None`) or the members of its groups; admins see
and may use every token whatever its access. A member's view is the set of groups they are in
(`None` for an admin: everything). A member outside a token's groups neither sees it (lists,
snapshots, Watch, quotas) nor uses it (secrets, reservations, relayed calls), and is told
"no such token" exactly as for one that does not exist.

Removing a group takes it out of every token's access; a token whose last group goes is left
to admins alone (never opened to everyone: that would widen access without anyone asking).

Every change here appends store events (a user's view changed, a token's access changed),
so every replica pushes it: a member who loses a token has it dropped from their daemon, one
who gains it gets it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.names import canonical_name
from qpu_broker.orgserver.admin_record import AdminRecord
from qpu_broker.orgserver.store import Access, OrgStore, OrgTokenRecord, User
from qpu_broker.orgserver.users import USERS_PER_CALL_MAX, check_user_name

log = logging.getLogger(__name__)
GROUPS_PER_TOKEN_MAX = 64  # a token's access travels with it to every admin's list: bounded
View = frozenset[str] | None  # the groups a member is in (None: an admin, who sees every token)


def visible(access: Access, view: View) -> bool:
    """Whether a caller with `view` may see and use a token with `access`."""
    return view is None or access is None or not view.isdisjoint(access)


def check_group_name(name: str) -> str:
    return check_user_name(name, "a group name")


def check_access(groups: list[str] | None) -> Access:
    """A token's access as given (None: everyone): names checked, each once, sorted."""
    if groups is None:
        return None
    if len(groups) > GROUPS_PER_TOKEN_MAX:
        raise InvalidArgumentError(f"a token is open to at most {GROUPS_PER_TOKEN_MAX} groups: "
                                   "make a group that holds their members")
    return tuple(sorted({check_group_name(g) for g in groups}))


def describe_access(access: Access) -> str:
    if access is None:
        return "everyone"
    return ",".join(access) if access else "admins only"


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    created_us: int
    members: list[str]


def _members(names: list[str], group: str) -> list[str]:
    if len(names) > USERS_PER_CALL_MAX:
        raise InvalidArgumentError(f"at most {USERS_PER_CALL_MAX} members at once: split the list")
    checked = [canonical_name(n) for n in names]
    if len(set(checked)) != len(checked):
        raise InvalidArgumentError(f"a member is named twice for the group {group!r}: nothing was changed")
    return checked


class Groups:
    """The admins' operations on groups and access (the interceptor checks the role)."""

    def __init__(self, store: OrgStore, record: AdminRecord, changed: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._record = record
        self._changed = changed  # pushes what was just written (the server's own pump)
        self._clock = clock

    def view(self, user: User) -> View:
        return None if user.role == "admin" else self._store.groups_of(user.name)

    def add(self, name: str, members: list[str]) -> Group:
        name = check_group_name(name)
        members = _members(members, name)
        now = int(self._clock() * 1_000_000)
        with self._record.changing() as note:
            self._store.add_group(name, members, now)
            note("group.add", name, f"with {len(members)} first member{'s' if len(members) != 1 else ''}")
            for member in members:
                note("group.add-member", name, member)
        log.info("added the group %r with %d members", name, len(members))
        self._changed()
        return Group(name, now, sorted(members))

    def remove(self, name: str) -> list[str]:
        """Returns the tokens now left to admins alone (the group was their last)."""
        with self._record.changing() as note:
            orphaned = self._store.remove_group(canonical_name(name))
            note("group.rm", canonical_name(name), f"now for admins only: {', '.join(orphaned)}" if orphaned else "")
        log.info("removed the group %r%s", name, f"; now for admins only: {', '.join(map(repr, orphaned))}"
                 if orphaned else "")
        self._changed()
        return orphaned

    def list(self) -> list[Group]:
        return [Group(*g) for g in self._store.groups()]

    def add_members(self, group: str, members: list[str]) -> Group:
        group = canonical_name(group)
        with self._record.changing() as note:
            added = self._store.add_group_members(group, _members(members, group))
            for member in added:
                note("group.add-member", group, member)
            if not added:
                note("group.add-member", group, "nobody new: each was in it already")
        log.info("added %d members to the group %r", len(added), group)
        self._changed()
        return self._one(group)

    def remove_members(self, group: str, members: list[str]) -> Group:
        group = canonical_name(group)
        members = _members(members, group)
        if not members:  # nothing to change, and nothing for the admin record: a mistake, said so
            raise InvalidArgumentError("name the members to take out of the group")
        with self._record.changing() as note:
            self._store.remove_group_members(group, members)
            for member in members:
                note("group.rm-member", group, member)
        log.info("removed %d members from the group %r", len(members), group)
        self._changed()
        return self._one(group)

    def _one(self, name: str) -> Group:
        return next(g for g in self.list() if g.name == name)

    def set_access(self, record: OrgTokenRecord, groups: list[str] | None) -> OrgTokenRecord:
        access = check_access(groups)
        with self._record.changing() as note:
            now = self._store.set_token_access(record.id, access)
            note("token.set-access", record.name, f"id {record.id}; for {describe_access(access)}"
                 + ("" if record.groups != access else " (as before)"))
        log.info("organization token %r is now for %s", record.name, describe_access(access))
        self._changed()
        return now
