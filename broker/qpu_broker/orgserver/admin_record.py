"""The admin record: every admin change (users, codes, devices, groups, tokens, their reach,
access and relay mode, org-wide settings, quotas, the org's creation), with who made it, from
where and when. Kept for good: the store's events are trimmed, and say nothing of who.

Who acts is set once, where changes come in: for each authenticated call by the wire (the
user, their device, and the peer's address as grpc gives it: wire/auth.py), for its process by
the admin CLI (the operator on the data dir: OS user, uid and host; `local_operator`), in
`ACTOR`, as the wire sets the caller. `AdminRecord.changing()` is one write transaction around
a change's own (the store's `writing()` joins it): the change and its entries commit together
or not at all, and a transaction that changed something without an entry is refused.

An entry names what changed by names, ids and terms, never a secret: no token secret,
enrollment code, access token or key ("secret rotated", "code id 3f…").
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import pwd
import socket
import urllib.parse
from collections.abc import Callable, Iterator

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.usage import iso

from qpu_broker.common.lifetimes import expiry_text
from qpu_broker.common.reach import Reach
from qpu_broker.orgserver.store import EnrollmentCode, OrgStore, OrgTokenRecord

# What each action is called, and what it means: the one table (`--action` takes these, or the
# part before the dot for all of its kind).
ACTIONS: dict[str, str] = {
    "org.init": "created the organization and its first admin",
    "user.add": "added a user, with a first enrollment code",
    "user.rm": "removed a user: their codes and devices ended",
    "user.set-role": "changed a user's role",
    "user.code": "made a further enrollment code for a user (their devices stay)",
    "user.rotate-key": "withdrew a user's codes and devices, and made a new code",
    "device.rm": "removed one device",
    "group.add": "added a group",
    "group.rm": "removed a group",
    "group.add-member": "put a user in a group",
    "group.rm-member": "took a user out of a group",
    "token.create": "created an org token",
    "token.update": "renamed an org token, rotated its secret or changed its own reach",
    "token.delete": "deleted an org token",
    "token.set-access": "chose who may use an org token",
    "token.relay": "made an org token a relay token, or cached again",
    "provider.set": "replaced a provider's org-wide settings",
    "provider.clear": "cleared a provider's org-wide settings",
    "provider.define": "defined a custom provider, or changed its definition",
    "provider.undefine": "removed a custom provider's definition (its tokens are refused from then on)",
    "quota.set": "set a quota",
    "quota.rm": "removed a quota",
    "usage.prune": "removed the usage records that reached the server before a time",
    "console.link": "made a one-time sign-in link to the web console for an admin",
    "console.signin": "signed in to the web console with a sign-in link",
    "console.signout": "signed out of the web console",
}
PAGE_MAX = 1000  # entries in one answer
DETAIL_MAX = 2000  # characters of an entry's detail (names are bounded; lists of them are cut)


@dataclasses.dataclass(frozen=True)
class Actor:
    name: str  # an org user, or the local operator: "cli:OSUSER(uid N)"
    device: str  # the device it called from ("" for the CLI)
    origin: str  # the peer's address as grpc gives it ("ipv4:10.0.0.7:51234"), or the CLI's host


ACTOR: contextvars.ContextVar[Actor] = contextvars.ContextVar("org_admin_actor")


def local_operator() -> Actor:
    """Whoever runs the admin CLI on the data dir: the OS user (by uid, not the environment's
    word) and this host."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return Actor(f"cli:{name}(uid {uid})", "", socket.gethostname())


@dataclasses.dataclass(frozen=True)
class AdminEntry:
    seq: int  # the order of commits
    at_us: int
    actor: str
    device: str
    origin: str
    action: str
    subject: str  # what it changed: a user, group, token or provider name, a device id, a quota number
    detail: str  # how, by names, ids and terms: never a secret


_COLUMNS = "seq, at_us, actor, device, origin, action, subject, detail"
_INSERT = f"INSERT INTO admin_record ({_COLUMNS.removeprefix('seq, ')}) VALUES (?, ?, ?, ?, ?, ?, ?)"


@dataclasses.dataclass(frozen=True)
class AdminQuery:
    since_us: int = 0
    actor: str = ""  # an org user's name, or cli:OSUSER (any uid), or the whole actor as shown
    action: str = ""  # one of ACTIONS, or a kind of them ("token")
    after_seq: int = 0
    limit: int = PAGE_MAX


def check_action(action: str) -> str:
    if action and action not in ACTIONS and action not in {a.split(".")[0] for a in ACTIONS}:
        raise InvalidArgumentError(f"no admin action {action[:64]!r}: one of {', '.join(ACTIONS)}, or a kind of them "
                                   "(user, token, ...)")
    return action


class AdminRecord:
    def __init__(self, store: OrgStore, now_us: Callable[[], int]) -> None:
        self._store = store
        self._now_us = now_us

    @contextlib.contextmanager
    def changing(self) -> Iterator[Callable[[str, str, str], None]]:
        """One write transaction for a change (the store's own joins it) and its entries:
        `note(action, subject, detail)` for each, once the change is made; the actor is `ACTOR`'s."""
        actor = ACTOR.get(None)
        if actor is None:  # a change from nowhere known is refused, never made unrecorded
            raise RuntimeError("an admin change with no actor set (admin_record.ACTOR): nothing was written")
        written = 0

        def note(action: str, subject: str, detail: str = "") -> None:
            nonlocal written
            if action not in ACTIONS:
                raise ValueError(f"admin action {action!r} is not in admin_record.ACTIONS")
            self._store.db.execute(_INSERT, (self._now_us(), actor.name, actor.device, actor.origin, action, subject,
                                             _cut(detail)))
            written += 1

        with self._store.db.writing():
            yield note
            if not written:
                raise RuntimeError("an admin change without its admin record entry: nothing was written")

    def entries(self, query: AdminQuery) -> tuple[list[AdminEntry], bool]:
        """The entries `query` matches after `after_seq`, oldest first, and whether more follow."""
        return self._read(query, ["seq > ?"], [query.after_seq], "")

    def newest(self, query: AdminQuery, before_seq: int = 0) -> tuple[list[AdminEntry], bool]:
        """The newest entries `query` matches below `before_seq` (0: from the newest), newest first,
        and whether older ones follow: a page of the console reads one page of the record."""
        return self._read(query, ["seq < ?"], [before_seq or 1 << 62], " DESC")

    def _read(self, query: AdminQuery, where: list[str], args: list, order: str) -> tuple[list[AdminEntry], bool]:
        if query.since_us:
            where.append("at_us >= ?")
            args.append(query.since_us)
        if query.actor:
            where.append("(actor = ? OR substr(actor, 1, ?) = ?)")
            args += [query.actor, len(query.actor) + 1, query.actor + "("]
        if check_action(query.action):
            where.append("(action = ? OR substr(action, 1, ?) = ?)")
            args += [query.action, len(query.action) + 1, query.action + "."]
        limit = min(query.limit or PAGE_MAX, PAGE_MAX)
        rows = self._store.db.execute(f"SELECT {_COLUMNS} FROM admin_record WHERE {' AND '.join(where)} "
                                      f"ORDER BY seq{order} LIMIT ?", (*args, limit + 1)).fetchall()
        return [AdminEntry(*r) for r in rows[:limit]], len(rows) > limit


def entry_dict(e: AdminEntry) -> dict:
    """The JSON form (`audit --json`): every field, the time in ISO 8601 UTC."""
    d = dataclasses.asdict(e)
    d["at"] = iso(d.pop("at_us"))
    return d


def entry_line(e: AdminEntry) -> str:
    who = f"{e.actor} (device {e.device})" if e.device else e.actor
    return f"{iso(e.at_us)}  #{e.seq}  {who} from {e.origin}  {e.action}  {e.subject}{'  ' + e.detail if e.detail else ''}"


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX - 1] + "…"


# -- details: how each kind of change is told --------------------------------------------------
def code_terms(code: EnrollmentCode) -> str:
    """An enrollment code by its id and terms (never the code)."""
    ttl = f", each expiring {code.device_ttl_us // 1_000_000} s after it enrolls" if code.device_ttl_us else ""
    return (f"code id {code.id}: enrolls {code.uses_left} device{'s' if code.uses_left != 1 else ''}{ttl}; "
            f"expires {iso(code.expires_us) if code.expires_us else 'never'}")


def _url(url: str) -> str:
    """A token URL without its query (an endpoint, not a place for a key)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}{'?…' if parts.query else ''}"


def reach_text(reach: Reach) -> str:
    said = [f"{field} {','.join(getattr(reach, field))}" for field in ("hosts", "plain_http_hosts")
            if getattr(reach, field)]
    said += ["ca set"] if reach.ca_pem else []
    said += [f"token_url {_url(reach.token_url)}"] if reach.token_url else []
    return "; ".join(said) or "official hosts only"


def reach_change(before: Reach, after: Reach) -> str:
    """What moved between two reaches: "hosts +a -b; ca changed; …" ("" when nothing did)."""
    said = []
    for field in ("hosts", "plain_http_hosts"):
        old, new = getattr(before, field), getattr(after, field)
        moved = [f"+{h}" for h in new if h not in old] + [f"-{h}" for h in old if h not in new]
        if moved:
            said.append(f"{field} {' '.join(moved)}")
    if before.ca_pem != after.ca_pem:
        said.append("ca " + ("set" if not before.ca_pem else "removed" if not after.ca_pem else "changed"))
    if before.token_url != after.token_url:
        said.append(f"token_url {_url(after.token_url) if after.token_url else 'removed'}")
    return "; ".join(said)


def token_change(before: OrgTokenRecord, after: OrgTokenRecord, rotated: bool) -> str:
    """A token's update: its id, then what changed (a new name, the secret rotated, relay, its own reach)."""
    said = [f"id {after.id}"]
    if before.name != after.name:
        said.append(f"renamed from {before.name!r}")
    if rotated:
        said.append("secret rotated")
    if before.relay != after.relay:
        said.append("relay on" if after.relay else "relay off (cached in members' daemons)")
    if before.expires_us != after.expires_us:
        said.append(f"expires {expiry_text(after.expires_us)}" if after.expires_us else "never expires")
    moved = reach_change(before.own, after.own)
    if moved:
        said.append(f"reach: {moved}")
    return "; ".join(said)
