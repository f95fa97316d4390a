"""What each console page reads (GET: nothing here changes anything but a sign-in), from the same
store and through the same domain objects as the CLI and the RPCs."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time

from aiohttp import web
from qpu_broker_client.errors import InvalidArgumentError, UnauthenticatedError
from qpu_broker_client.providers import PROVIDERS
from qpu_broker_client.usage import QPU_US, REQUESTS, UNCOUNTED, UsageRecord, usage_dict

from qpu_broker.common.lifetimes import is_expired
from qpu_broker.common.since import parse_since
from qpu_broker.orgserver.admin_record import AdminQuery, AdminRecord
from qpu_broker.orgserver.console.chart import chart, series
from qpu_broker.orgserver.console.context import CONSOLE
from qpu_broker.orgserver.console.sessions import (
    SIGNIN_SECONDS,
    new_signin_cookie,
    signin_token,
)
from qpu_broker.orgserver.custom_definitions import describe
from qpu_broker.orgserver.groups import describe_access
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.roles import ROLES
from qpu_broker.orgserver.store import OrgStore, UsageQuery

ROUTES = web.RouteTableDef()
NEAR_LIMIT = 0.8  # a quota this used (or more) is shown on the overview
CHART_READ_MAX = 10_000  # records a usage page's charts are drawn from at most: the newest the filter matches
USAGE_ROWS = 200  # records its table lists, newest first ("older" pages on)
AUDIT_ROWS = 200  # admin record entries the page lists, newest first ("older" pages on)
RECENT_ROWS = 10  # the overview's latest changes
QUOTA_UNITS = {REQUESTS: "requests", QPU_US: "D-Wave QPU seconds"}  # what a quota counts: the form's value, its label
CSV_UNSAFE = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would read as a formula
# Where a spreadsheet may start a cell inside one of ours: its start, and after a ';' (the list
# separator of many locales, which splits our text after the first quoted cell), a tab or a line end.
_CSV_CELL_STARTS = re.compile(r"(^|[;\t\r\n])(?=[" + re.escape("".join(CSV_UNSAFE)) + "])")


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def quota_rows(service) -> list[dict]:
    """Every quota with its use in the window at hand, as the quota pages show it."""
    out = []
    for q in Quotas(service.store).status(None):
        share = q.used / q.limit if q.limit and q.used != UNCOUNTED else (1.0 if q.used > 0 else 0.0)
        out.append({"q": q, "share": share, "percent": min(int(share * 100), 100),
                    "used": "per member" if q.used == UNCOUNTED else _amount(q.unit, q.used),
                    "limit": _amount(q.unit, q.limit)})
    return out


def _amount(unit: str, value: int) -> str:
    return f"{value / 1e6:g} QPU s" if unit == QPU_US else f"{value} requests"


@ROUTES.get("/")
async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    users = service.users()
    tokens, _ = service.list()
    now = _now_us()
    return console.render(
        request, "overview.html",
        roles={r: sum(1 for u in users if u.role == r) for r in ROLES},
        devices=len(service.devices.list()),
        modes={"relay": sum(1 for t in tokens if t.relay), "cached": sum(1 for t in tokens if not t.relay),
               "expired": sum(1 for t in tokens if is_expired(t.expires_us, now))},
        near=[row for row in quota_rows(service) if row["share"] >= NEAR_LIMIT],
        waiting=service.store.open_code_count(now),
        recent=[e for e in (await console.reader.read(lambda s: _record(s).newest(AdminQuery(limit=RECENT_ROWS))))[0]
                if e.at_us >= now - 86_400_000_000])


@ROUTES.get("/members")
async def members(request: web.Request, **shown) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    devices: dict[str, list] = {}
    for d in service.devices.list():
        devices.setdefault(d.user, []).append(d)
    return console.render(request, "members.html", users=service.users(), devices=devices,
                          groups=service.groups.list(), roles=ROLES, **shown)


@ROUTES.get("/tokens")
async def tokens(request: web.Request, **shown) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    listed, _ = service.list()
    now = _now_us()
    rows = [{"t": t, "access": describe_access(t.groups), "expired": is_expired(t.expires_us, now),
             "reach": ", ".join(t.own.hosts + t.own.plain_http_hosts)} for t in listed]
    providers = sorted({*PROVIDERS, *service.custom_providers()})
    return console.render(request, "tokens.html", rows=rows, providers=providers,
                          groups=[g.name for g in service.groups.list()], **shown)


@ROUTES.get("/providers")
async def providers(request: web.Request, **shown) -> web.Response:
    """Every provider org tokens may be made for, with its org-wide settings; the org's definitions."""
    console = request.app[CONSOLE]
    service = console.service
    reach = service.org_reach()
    custom = service.custom_providers()
    return console.render(request, "providers.html", rows=[(p, reach.get(p)) for p in sorted({*PROVIDERS, *custom})],
                          defined=[(n, describe(d)) for n, d in sorted(custom.items())], **shown)


@ROUTES.get("/quotas")
async def quotas(request: web.Request, **shown) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    listed, _ = service.list()
    return console.render(request, "quotas.html", rows=quota_rows(service), tokens=[t.name for t in listed],
                          users=[u.name for u in service.users()], units=QUOTA_UNITS, **shown)


@dataclasses.dataclass(frozen=True)
class UsageFilter:
    member: str
    token: str
    since: str
    by: str  # what the charts' lines are: member or token
    before: int  # the table's page: records below this position (0: the newest)

    @classmethod
    def of(cls, request: web.Request) -> UsageFilter:
        q = request.query
        by = q.get("by", "member")
        if by not in ("member", "token"):
            raise InvalidArgumentError("by is member or token: what each line of the charts is")
        return cls(q.get("member", "").strip(), q.get("token", "").strip(), q.get("since", "").strip() or "7d", by,
                   _position(q.get("before", "")))

    def query(self, now_us: int) -> UsageQuery:
        return UsageQuery(self.member, self.token, parse_since(self.since, now_us))


def _position(text: str) -> int:
    """An "older" link's position: a record's or an entry's number."""
    if not text:
        return 0
    if not text.isdigit() or len(text) > 18:
        raise InvalidArgumentError(f"before={text[:32]!r} is not a position: follow the page's 'older' link")
    return int(text)


def _record(store: OrgStore) -> AdminRecord:
    """The admin record on the reader's connection (read only: nothing is noted through it)."""
    return AdminRecord(store, _now_us)


def newest_usage(store: OrgStore, query: UsageQuery, most: int) -> list[UsageRecord]:
    """The newest `most` records `query` matches at most, newest first: page after page of the
    store's bounded newest-first reads (on the reader's thread)."""
    out: list[UsageRecord] = []
    before = 0
    while len(out) < most:
        page, before = store.usage_newest(dataclasses.replace(query, limit=most - len(out)), before)
        out += page
        if not before:
            break
    return out


@ROUTES.get("/usage")
async def usage(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    f = UsageFilter.of(request)
    now = _now_us()
    query = f.query(now)
    rows, older = await console.reader.read(
        lambda s: s.usage_newest(dataclasses.replace(query, limit=USAGE_ROWS), f.before))
    charted = await console.reader.read(lambda s: newest_usage(s, query, CHART_READ_MAX))
    cut = len(charted) >= CHART_READ_MAX
    start = charted[-1].at_us if charted and (cut or not query.since_us) else query.since_us or now
    charts = [chart("Requests", "requests", series(charted, f.by, lambda r: 1, start, now), start, now),
              chart("D-Wave QPU time", "QPU µs", series(charted, f.by, lambda r: r.qpu_us, start, now), start, now)]
    listed, _ = service.list()
    return console.render(request, "usage.html", f=f, charts=charts, rows=rows, older=older, charted=len(charted),
                          cut=cut, chart_start=start, users=[u.name for u in service.users()],
                          tokens=[t.name for t in listed])


def _cell(value) -> str:
    """`value` as text that starts no formula where any cell may start: a ' before each such place."""
    return _CSV_CELL_STARTS.sub(r"\1'", str(value))


@ROUTES.get("/usage.csv")
async def usage_csv(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    query = UsageFilter.of(request).query(_now_us())
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                           "Content-Disposition": 'attachment; filename="usage.csv"'})
    await response.prepare(request)
    out = io.StringIO()
    writer = None
    while True:  # oldest first, a page of the store's at a time, each read off the loop
        page = await console.reader.read(lambda s, q=query: s.usage(q))
        for r in page.records:
            row = usage_dict(r)
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row), quoting=csv.QUOTE_ALL)  # every cell text
                writer.writeheader()
            writer.writerow({k: _cell(v) for k, v in row.items()})
        await response.write(out.getvalue().encode())
        out.seek(0)
        out.truncate()
        if not page.more:
            break
        query = dataclasses.replace(query, after_seq=page.after_seq)
    await response.write_eof()
    return response


@ROUTES.get("/audit")
async def audit(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    before = _position(request.query.get("before", ""))
    entries, more = await console.reader.read(lambda s: _record(s).newest(AdminQuery(limit=AUDIT_ROWS), before))
    return console.render(request, "audit.html", entries=entries, older=entries[-1].seq if more else 0)


@ROUTES.get("/static/console.css")
async def stylesheet(request: web.Request) -> web.Response:
    from importlib import resources

    css = resources.files("qpu_broker.orgserver.console").joinpath("static/console.css").read_text()
    return web.Response(text=css, content_type="text/css")


@ROUTES.get("/signin")
async def signin_page(request: web.Request) -> web.Response:
    """The link's landing page: a button that redeems it (a GET never uses a link up, so a link
    previewer or a scanner that fetches it leaves it working for the admin), its form bound to this
    browser by a cookie (sessions.py: signing in)."""
    link = request.query.get("link", "")
    if not link:
        raise UnauthenticatedError("this sign-in address carries no link: ask for one with "
                                   "'qpu-broker org-server console-login --admin NAME'")
    console = request.app[CONSOLE]
    cookie = new_signin_cookie()
    response = console.render(request, "signin.html", link=link, signin_csrf=signin_token(cookie))
    response.set_cookie(console.signin_cookie, cookie, path="/", max_age=SIGNIN_SECONDS, httponly=True,
                        secure=console.secure, samesite="Strict")
    return response
