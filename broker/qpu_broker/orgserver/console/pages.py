"""What each console page reads (GET: nothing here changes anything but a sign-in), from the same
store and through the same domain objects as the CLI and the RPCs."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time
from collections.abc import Iterator

from aiohttp import web
from qpu_broker_client.errors import InvalidArgumentError, UnauthenticatedError
from qpu_broker_client.providers import PROVIDERS
from qpu_broker_client.usage import QPU_US, REQUESTS, UNCOUNTED, UsageRecord, usage_dict

from qpu_broker.common.lifetimes import is_expired
from qpu_broker.common.since import parse_since
from qpu_broker.orgserver.admin_record import AdminQuery
from qpu_broker.orgserver.console.chart import chart, series
from qpu_broker.orgserver.console.context import CONSOLE
from qpu_broker.orgserver.groups import describe_access
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.roles import ROLES
from qpu_broker.orgserver.store import UsageQuery

ROUTES = web.RouteTableDef()
NEAR_LIMIT = 0.8  # a quota this used (or more) is shown on the overview
USAGE_READ_MAX = 20_000  # records one usage page charts at most (the newest shown in its table)
USAGE_ROWS = 200  # records its table lists, newest first
AUDIT_ROWS = 200  # admin record entries the page lists, newest first
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
        recent=list(reversed(service.record.entries(AdminQuery(since_us=now - 86_400_000_000))[0]))[:10])


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

    @classmethod
    def of(cls, request: web.Request) -> UsageFilter:
        q = request.query
        by = q.get("by", "member")
        if by not in ("member", "token"):
            raise InvalidArgumentError("by is member or token: what each line of the charts is")
        return cls(q.get("member", "").strip(), q.get("token", "").strip(), q.get("since", "").strip() or "7d", by)

    def query(self, now_us: int) -> UsageQuery:
        return UsageQuery(self.member, self.token, parse_since(self.since, now_us))


def read_usage(store, query: UsageQuery, most: int) -> Iterator[UsageRecord]:
    """The records `query` matches, oldest first, `most` at most (page after page of the store's)."""
    given = 0
    while given < most:
        page = store.usage(query)
        yield from page.records[:most - given]
        given += len(page.records)
        if not page.more:
            return
        query = dataclasses.replace(query, after_seq=page.after_seq)


@ROUTES.get("/usage")
async def usage(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    service = console.service
    f = UsageFilter.of(request)
    now = _now_us()
    query = f.query(now)
    records = list(read_usage(service.store, query, USAGE_READ_MAX))
    start = query.since_us or (records[0].at_us if records else now)
    charts = [chart("Requests", "requests", series(records, f.by, lambda r: 1, start, now), start, now),
              chart("D-Wave QPU time", "QPU µs", series(records, f.by, lambda r: r.qpu_us, start, now), start, now)]
    listed, _ = service.list()
    return console.render(request, "usage.html", f=f, charts=charts, rows=records[::-1][:USAGE_ROWS],
                          count=len(records), cut=len(records) >= USAGE_READ_MAX,
                          users=[u.name for u in service.users()], tokens=[t.name for t in listed])


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
    for r in read_usage(console.service.store, query, 1 << 62):
        row = usage_dict(r)
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), quoting=csv.QUOTE_ALL)  # every cell text
            writer.writeheader()
        writer.writerow({k: _cell(v) for k, v in row.items()})
        if out.tell() > 1 << 16:
            await response.write(out.getvalue().encode())
            out.seek(0)
            out.truncate()
    await response.write(out.getvalue().encode())
    await response.write_eof()
    return response


@ROUTES.get("/audit")
async def audit(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    record = console.service.record
    entries, after = [], 0
    while True:  # the newest AUDIT_ROWS: pages kept to the last ones
        page, more = record.entries(AdminQuery(after_seq=after))
        entries = (entries + page)[-AUDIT_ROWS:]
        if not more:
            break
        after = page[-1].seq
    return console.render(request, "audit.html", entries=entries[::-1])


@ROUTES.get("/static/console.css")
async def stylesheet(request: web.Request) -> web.Response:
    from importlib import resources

    css = resources.files("qpu_broker.orgserver.console").joinpath("static/console.css").read_text()
    return web.Response(text=css, content_type="text/css")


@ROUTES.get("/signin")
async def signin_page(request: web.Request) -> web.Response:
    """The link's landing page: a button that redeems it (a GET never uses a link up, so a link
    previewer or a scanner that fetches it leaves it working for the admin)."""
    link = request.query.get("link", "")
    if not link:
        raise UnauthenticatedError("this sign-in address carries no link: ask for one with "
                                   "'qpu-broker org-server console-login --admin NAME'")
    return request.app[CONSOLE].render(request, "signin.html", link=link)
