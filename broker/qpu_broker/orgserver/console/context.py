"""What every console handler works with (the application holds one): the server's domain, the
sessions, the templates, and how a page is rendered."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from qpu_broker.orgserver.console.reader import Reader
from qpu_broker.orgserver.console.sessions import Session, Sessions
from qpu_broker.orgserver.service import OrgService


@dataclasses.dataclass(frozen=True)
class Console:
    service: OrgService
    sessions: Sessions
    reader: Reader  # the usage and admin records' reads, off the event loop
    secure: bool  # served over HTTPS: the cookie is Secure, with the __Host- prefix (this origin only)

    @property
    def cookie(self) -> str:
        return "__Host-qpu-console" if self.secure else "qpu-console"

    @property
    def signin_cookie(self) -> str:  # the landing page's (sessions.py: signing in)
        return self.cookie + "-signin"

    def render(self, request: web.Request, template: str, status: int = 200, **context) -> web.Response:
        session: Session | None = request.get("session")
        text = request.app[TEMPLATES].get_template(template).render(
            org=self.service.org, session=session, path=request.path, **context)
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def origin(request: web.BaseRequest) -> str:
    """Where a console request came from, as the admin record names it."""
    return f"console:{request.remote}"


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
TEMPLATES: web.AppKey = web.AppKey("templates")
