"""The console's sign-in links and sessions, kept in the org store (any replica serves any session).

- A link (`org-server console-login --admin NAME`) is a random secret, used once, within
  LINK_SECONDS; the store holds its SHA-256 only. Redeeming it makes a session.
- A session is another random secret, in an HttpOnly cookie; the store holds its SHA-256 only.
  It ends after IDLE_SECONDS without a request, ABSOLUTE_SECONDS after sign-in, at sign-out, and
  when its admin is no longer one: removed or given another role, which deletes their sessions and
  unused links in the same transaction (the store's set_role, remove_users), so making them admin
  again later revives neither; and each request checks again, by name and by when the user was
  added, so a name reused later is not the same admin.
- Every change (a POST) carries a CSRF token bound to the session: an HMAC of a fixed label under
  the session's secret, so only a page the session itself was shown holds it (nothing stored).
- Signing in (a POST without a session) carries one bound the same way to a short-lived cookie the
  link's landing page set (SameSite=Strict): a hostile page cannot sign an admin's browser in to
  its own session (login CSRF), nor use up an admin's link.

Why something is refused is said to whoever holds the link or cookie (it is theirs); nothing here
puts a secret in a message, a log line or the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from qpu_broker_client.errors import PermissionDeniedError, UnauthenticatedError

from qpu_broker.orgserver.admin_record import ACTOR, Actor, AdminRecord
from qpu_broker.orgserver.store import OrgStore

LINK_SECONDS = 10 * 60  # a sign-in link's life: long enough to paste, short enough to be worthless later
IDLE_SECONDS = 30 * 60  # a session without a request this long has ended
ABSOLUTE_SECONDS = 12 * 3600  # and any session ends this long after sign-in, used or not
_TOUCH_US = 60 * 1_000_000  # a session's last request is written at most once a minute (the idle clock's grain)
_CSRF_LABEL = b"qpu-broker/console/v1/csrf"
_SIGNIN_LABEL = b"qpu-broker/console/v1/signin"
SIGNIN_SECONDS = LINK_SECONDS  # the landing page's cookie: a sign-in started then is finished or stale
URL_META = "console_url"  # the store's meta key: where the console listens (the last server started with it)
SIGN_IN_AGAIN = "ask for a new sign-in link with 'qpu-broker org-server console-login --admin NAME'"


def sign_in_link(base: str, secret: str) -> str:
    """The link an admin opens: the console's address (empty: the path alone), then the secret."""
    return f"{base.rstrip('/')}/signin?link={secret}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Session:
    admin: str
    csrf: str  # the token its pages put in every form

    def __repr__(self) -> str:  # the CSRF token is a secret of the session's
        return f"Session(admin={self.admin!r})"


def csrf_token(cookie: str, label: bytes = _CSRF_LABEL) -> str:
    return hmac.new(cookie.encode(), label, hashlib.sha256).hexdigest()


def _holds(cookie: str, given: str, label: bytes) -> bool:
    return bool(cookie and given) and hmac.compare_digest(csrf_token(cookie, label).encode(), given.encode())


def new_signin_cookie() -> str:
    """The landing page's cookie: a random secret, kept by the browser only."""
    return secrets.token_urlsafe(32)


def signin_token(signin_cookie: str) -> str:
    """The token the landing page's form carries for its cookie."""
    return csrf_token(signin_cookie, _SIGNIN_LABEL)


def check_signin(signin_cookie: str, given: str) -> None:
    """PERMISSION_DENIED unless the sign-in came from the landing page this browser was shown."""
    if not _holds(signin_cookie, given, _SIGNIN_LABEL):
        raise PermissionDeniedError("this sign-in did not come from the page your sign-in link opens (its security "
                                    "token is missing, or from another visit): the link was not used. Open the link "
                                    "again and press Sign in")


def check_csrf(session_cookie: str, given: str) -> None:
    """PERMISSION_DENIED unless `given` is the token the session's pages carry."""
    if not _holds(session_cookie, given, _CSRF_LABEL):
        raise PermissionDeniedError("this change came without the form's security token (CSRF): nothing was changed. "
                                    "Reload the page and make it again from the console")


class Sessions:
    def __init__(self, store: OrgStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._record = AdminRecord(store, self._now)  # sign-ins and sign-outs, as every admin change is

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def _admin_since(self, name: str) -> int | None:
        """When `name` was added, while they are an admin; None when they are not (or no user)."""
        user = self._store.user(name)
        return user.created_us if user is not None and user.role == "admin" else None

    def new_link(self, admin: str, record: AdminRecord) -> str:
        """A one-time sign-in secret for `admin` (shown once; recorded as made, never stored)."""
        since = self._admin_since(admin)
        if since is None:
            raise PermissionDeniedError(f"{admin[:128]!r} is not an org admin: only admins sign in to the console "
                                        "('org-server user list' shows the roles)")
        secret = secrets.token_urlsafe(32)
        now = self._now()
        with record.changing() as note:
            self._store.db.execute("DELETE FROM console_links WHERE expires_us < ?", (now,))  # the old ones, used or not
            self._store.db.execute("INSERT INTO console_links (hash, admin, admin_since, expires_us, used_us) "
                                   "VALUES (?, ?, ?, ?, 0)", (_hash(secret), admin, since, now + LINK_SECONDS * 1_000_000))
            note("console.link", admin, f"a sign-in link for the web console, expiring in {LINK_SECONDS // 60} minutes")
        return secret

    def redeem(self, link: str, origin: str) -> tuple[str, str]:
        """(admin, a new session's cookie) for a link not used before and not expired; used up at once,
        on every replica (one conditional write: of two redemptions racing, one wins). The admin record
        notes the sign-in in the same transaction: the link's admin, from `origin` (console:ADDRESS)."""
        now = self._now()
        with self._store.db.writing():
            row = self._store.db.execute("SELECT admin, admin_since, expires_us, used_us FROM console_links "
                                         "WHERE hash = ?", (_hash(link),)).fetchone()
            if row is None:
                raise UnauthenticatedError("this sign-in link is not one this org server made, or it was withdrawn "
                                           f"(its admin is no longer an org admin): {SIGN_IN_AGAIN}")
            admin, since, expires_us, used_us = row
            if used_us:
                raise UnauthenticatedError(f"this sign-in link was used already (each works once): {SIGN_IN_AGAIN}")
            if expires_us <= now:
                raise UnauthenticatedError(f"this sign-in link expired (links last {LINK_SECONDS // 60} minutes): "
                                           f"{SIGN_IN_AGAIN}")
            if self._admin_since(admin) != since:
                raise PermissionDeniedError(f"{admin!r} is no longer an org admin: the link no longer signs in")
            cookie = secrets.token_urlsafe(32)
            actor = ACTOR.set(Actor(admin, "", origin))  # who signs in is known only now, from the link
            try:
                with self._record.changing() as note:
                    self._store.db.execute("UPDATE console_links SET used_us = ? WHERE hash = ?", (now, _hash(link)))
                    self._store.db.execute("DELETE FROM console_sessions WHERE last_seen_us < ? OR created_us < ?",
                                           (now - IDLE_SECONDS * 1_000_000, now - ABSOLUTE_SECONDS * 1_000_000))
                    self._store.db.execute("INSERT INTO console_sessions (hash, admin, admin_since, created_us, "
                                           "last_seen_us) VALUES (?, ?, ?, ?, ?)", (_hash(cookie), admin, since, now, now))
                    note("console.signin", admin, "signed in with a sign-in link")
            finally:
                ACTOR.reset(actor)
        return admin, cookie

    def session(self, cookie: str) -> Session:
        """The session `cookie` holds, as of this request (its idle clock restarts), or UNAUTHENTICATED
        saying why there is none; an admin no longer one (a name reused) ends the session here too."""
        if not cookie:
            raise UnauthenticatedError(f"you are not signed in to the console: {SIGN_IN_AGAIN}")
        now = self._now()
        row = self._store.db.execute("SELECT admin, admin_since, created_us, last_seen_us FROM console_sessions "
                                     "WHERE hash = ?", (_hash(cookie),)).fetchone()
        if row is None:
            raise UnauthenticatedError("this console session has ended (signed out, ended by the server, or you are "
                                       f"no longer an org admin): {SIGN_IN_AGAIN}")
        admin, since, created_us, last_seen_us = row
        why = ("it was idle too long" if last_seen_us + IDLE_SECONDS * 1_000_000 <= now
               else "it reached its longest life" if created_us + ABSOLUTE_SECONDS * 1_000_000 <= now
               else "you are no longer an org admin" if self._admin_since(admin) != since else "")
        if why:
            self._end(_hash(cookie))
            raise UnauthenticatedError(f"this console session has ended ({why}): {SIGN_IN_AGAIN}")
        if now - last_seen_us >= _TOUCH_US:
            with self._store.db.writing(ordered=False):
                self._store.db.execute("UPDATE console_sessions SET last_seen_us = ? WHERE hash = ?", (now, _hash(cookie)))
        return Session(admin, csrf_token(cookie))

    def end(self, cookie: str) -> None:
        """Sign-out: the session ends on every replica; the admin record notes it (as `ACTOR`, the
        session's admin where the console asks)."""
        row = self._store.db.execute("SELECT admin FROM console_sessions WHERE hash = ?", (_hash(cookie),)).fetchone()
        if row is None:  # ended already: nothing to sign out of, nothing to note
            return
        with self._record.changing() as note:
            self._store.db.execute("DELETE FROM console_sessions WHERE hash = ?", (_hash(cookie),))
            note("console.signout", row[0], "signed out")

    def _end(self, hashed: str) -> None:
        with self._store.db.writing(ordered=False):
            self._store.db.execute("DELETE FROM console_sessions WHERE hash = ?", (hashed,))
