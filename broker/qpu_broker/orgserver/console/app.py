"""The console's aiohttp application: every response's security headers, who is signed in (and
their CSRF token on every POST: changes are POSTs only), the actor the admin record names, and
errors shown as a page with the HTTP status of their kind (one table)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from qpu_broker_client.errors import QpuBrokerError

from qpu_broker.orgserver.admin_record import ACTOR, Actor
from qpu_broker.orgserver.console import actions, pages
from qpu_broker.orgserver.console.context import CONSOLE, TEMPLATES, Console, origin
from qpu_broker.orgserver.console.reader import Reader
from qpu_broker.orgserver.console.render import environment
from qpu_broker.orgserver.console.sessions import Sessions, check_csrf
from qpu_broker.orgserver.service import OrgService

# Every response: nothing runs but the page itself (no script at all, styles from this server only),
# nothing frames it, no URL (a sign-in link's secret) leaks as a Referer, nothing is kept in a cache.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Server": "qpu-broker",  # not aiohttp's "Python/3.x aiohttp/3.x": which versions to attack is no one's business
}
# The error tree's kinds as HTTP statuses: the one table.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
               "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503}
PUBLIC = frozenset({"/signin", "/static/console.css"})  # served without a session
FORM_MAX_BYTES = 1 << 20  # a form's body at most (a token's secret is far less)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    try:
        if request.path in PUBLIC:
            return await handler(request)
        cookie = request.cookies.get(console.cookie, "")
        request["session"] = session = console.sessions.session(cookie)
        if request.method == "POST":
            check_csrf(cookie, str((await request.post()).get("csrf", "")))
        # Who the admin record names for what this request changes: the admin, and where from.
        token = ACTOR.set(Actor(session.admin, "", origin(request)))
        try:
            return await handler(request)
        finally:
            ACTOR.reset(token)
    except QpuBrokerError as exc:
        return console.render(request, "refused.html", HTTP_STATUS.get(exc.code, 500), message=str(exc),
                              signed_out=exc.code == "UNAUTHENTICATED")


# HTTPS answers only: browsers then refuse plain http to this host for a year (a downgrade by whoever
# sits on the network would otherwise see the first request, and the cookie if it were not Secure).
# Not on loopback plain text: it would bind the host's name for a year to a listener tests move.
HSTS = {"Strict-Transport-Security": "max-age=31536000"}


def security_headers(secure: bool) -> dict[str, str]:
    """What every answer carries: the application's and aiohttp's own (server.py: a request it cannot parse)."""
    return {**HEADERS, **(HSTS if secure else {})}


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(security_headers(request.app[CONSOLE].secure))


def make_app(service: OrgService, sessions: Sessions, reader: Reader, *, secure: bool) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=FORM_MAX_BYTES)
    app[CONSOLE] = Console(service, sessions, reader, secure)
    app[TEMPLATES] = environment()
    app.on_response_prepare.append(_headers)
    app.router.add_routes(pages.ROUTES)
    app.router.add_routes(actions.ROUTES)
    return app
