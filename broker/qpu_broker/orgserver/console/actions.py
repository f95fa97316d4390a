"""What each console form changes: POSTs only (the application checks the session and its CSRF
token first), each through the call the CLI or the admin RPC makes for the same change (OrgService,
its Groups and Devices, quota_admin), so it is checked, recorded (the admin record names the
console's admin and where from) and pushed to members once, as theirs are. A change answers with
its page and a line saying what was done; an enrollment code is on that answer alone."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web
from qpu_broker_client.errors import InvalidArgumentError, UnauthenticatedError
from qpu_broker_client.usage import EVERY_MEMBER, QPU_US, Quota

from qpu_broker.common.lifetimes import LIFETIME_MAX
from qpu_broker.common.names import canonical_name
from qpu_broker.common.reach import Owner, Reach, make_reach
from qpu_broker.common.since import parse_since, parse_span, parse_until, seconds_in
from qpu_broker.orgserver import quota_admin
from qpu_broker.orgserver.admin_record import code_terms, reach_text
from qpu_broker.orgserver.console import pages
from qpu_broker.orgserver.console.context import CONSOLE, Console, origin
from qpu_broker.orgserver.console.sessions import check_signin
from qpu_broker.orgserver.custom_definitions import definition_text, describe
from qpu_broker.orgserver.store import OrgTokenRecord
from qpu_broker.orgserver.users import CodeTerms, code_terms_of

ROUTES = web.RouteTableDef()
Form = dict[str, str]


def _form(form) -> Form:
    """The form's fields as text (a file upload is no field of any console form)."""
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _names(text: str) -> list[str]:
    return [n for n in text.replace(",", " ").split() if n]


def _lifetime(text: str) -> float:
    """A token's lifetime from a form: '' or 'never' -> 0 (never expires), else 90d, 12h, …"""
    if text.strip().lower() in ("", "never"):
        return 0
    seconds = seconds_in(text.strip())
    if seconds is None:
        raise InvalidArgumentError(f"the lifetime {text[:32]!r} is not like 90d, 12h, 30m or 3600s (at most "
                                   f"{LIFETIME_MAX // (365 * 86400)} years), nor 'never'")
    return seconds


def _access(form: Form) -> list[str] | None:
    """Who may use a token: everyone (None), admins only ([]), or the named groups."""
    who = form.get("access", "everyone")
    if who == "everyone":
        return None
    if who == "admins":
        return []
    if who == "groups":
        groups = _names(form.get("groups", ""))
        if not groups:
            raise InvalidArgumentError("name the groups whose members may use the token (or choose everyone)")
        return groups
    raise InvalidArgumentError("access is everyone, admins or groups")


def _reach(form: Form, where: str) -> Reach:
    """Where tokens may go besides the official hosts, as `--host`, `--plain-http-host` (loopback
    only), `--ca-file` (here the PEM pasted) and `--token-url` give it; checked as the CLI checks."""
    pem = form.get("ca", "").replace("\r\n", "\n").strip()  # a textarea sends CRLF line ends
    return make_reach(hosts=_names(form.get("hosts", "")), plain_http_hosts=_names(form.get("plain_http_hosts", "")),
                      ca_pem=(pem + "\n").encode() if pem else b"", token_url=form.get("token_url", "").strip(),
                      owner=Owner.ORG, where=where)


def _terms(form: Form) -> CodeTerms:
    """An enrollment code's terms from a form, as `--uses`, `--expires-in` and `--device-ttl`."""
    uses = form.get("uses", "").strip()
    if uses and not (uses.isdigit() and len(uses) < 10):
        raise InvalidArgumentError(f"uses {uses[:32]!r} is not a number of devices")
    return code_terms_of(int(uses) if uses else None, form.get("expires_in", "").strip(),
                         form.get("device_ttl", "").strip())


# -- signing in and out ------------------------------------------------------------------------
@ROUTES.post("/signin")
async def signin(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    form = await request.post()
    check_signin(request.cookies.get(console.signin_cookie, ""), str(form.get("csrf", "")))  # before the link is used
    link = str(form.get("link", ""))
    if not link:
        raise UnauthenticatedError("no sign-in link was sent: open the link 'org-server console-login' printed")
    _, cookie = console.sessions.redeem(link, origin(request))
    response = web.HTTPSeeOther("/")
    response.set_cookie(console.cookie, cookie, path="/", httponly=True, secure=console.secure, samesite="Strict")
    return response


@ROUTES.post("/signout")
async def signout(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    console.sessions.end(request.cookies.get(console.cookie, ""))
    request.pop("session", None)
    response = console.render(request, "refused.html", message="You are signed out of the console.", signed_out=True)
    response.del_cookie(console.cookie, path="/", secure=console.secure, samesite="Strict")
    return response


# -- members, devices, groups ----------------------------------------------------------------------
@ROUTES.post("/members/add")
async def add_member(request: web.Request) -> web.Response:
    """As `user add NAME --role ROLE [--uses N --device-ttl T --expires-in E]`."""
    form = _form(await request.post())
    [(user, code, text)] = request.app[CONSOLE].service.add_users([(form.get("name", ""), form.get("role", "member"))],
                                                                  _terms(form))
    return await pages.members(request, notice=f"added {user.role} {user.name!r}", code=text, code_for=user.name,
                               code_terms=code_terms(code))


@ROUTES.post("/members/{verb:code|rotate-key}")
async def new_code(request: web.Request) -> web.Response:
    """As `user code NAME` (their devices stay) and `user rotate-key NAME` (every code and device of
    theirs withdrawn first): a new code, shown on this answer alone."""
    form = _form(await request.post())
    name = form.get("name", "")
    rotate = request.match_info["verb"] == "rotate-key"
    code, text = request.app[CONSOLE].service.new_code(name, _terms(form), withdraw_others=rotate)
    said = (f"withdrew every enrollment code and device of {name!r}: their daemons lose org access at once; a new code"
            if rotate else f"a further enrollment code for {name!r}; their devices stay")
    return await pages.members(request, notice=said, code=text, code_for=name, code_terms=code_terms(code))


@ROUTES.post("/members/role")
async def set_role(request: web.Request) -> web.Response:
    """As `user set-role NAME ROLE`."""
    form = _form(await request.post())
    name, role = form.get("name", ""), form.get("role", "")
    request.app[CONSOLE].service.set_role(name, role)
    return await pages.members(request, notice=f"{name!r} is now {'an admin' if role == 'admin' else 'a ' + role}")


@ROUTES.post("/members/remove")
async def remove_member(request: web.Request) -> web.Response:
    name = _form(await request.post()).get("name", "")
    request.app[CONSOLE].service.remove_users([name])
    return await pages.members(request, notice=f"removed {name!r}: their codes and devices no longer work")


@ROUTES.post("/devices/remove")
async def remove_device(request: web.Request) -> web.Response:
    device_id = _form(await request.post()).get("id", "")
    request.app[CONSOLE].service.remove_device(device_id)
    return await pages.members(request, notice=f"removed device {device_id}: its daemon loses org access at once")


@ROUTES.post("/groups/{verb}")
async def group(request: web.Request) -> web.Response:
    form = _form(await request.post())
    groups = request.app[CONSOLE].service.groups
    name, members = form.get("group", ""), _names(form.get("members", ""))
    verb = request.match_info["verb"]
    if verb == "add":
        groups.add(name, members)
    elif verb == "remove":
        groups.remove(name)
    elif verb == "add-member":
        groups.add_members(name, members)
    elif verb == "rm-member":
        groups.remove_members(name, members)
    else:
        raise web.HTTPNotFound()
    return await pages.members(request, notice=f"group {name!r}: {verb} done")


# -- tokens ------------------------------------------------------------------------------------------
@ROUTES.post("/tokens/create")
async def create_token(request: web.Request) -> web.Response:
    form = _form(await request.post())
    service = request.app[CONSOLE].service
    name = form.get("name", "")
    made = service.create(name, form.get("provider", ""), form.get("secret", "").encode(),
                          _reach(form, f"organization token {name[:128]!r}"), relay=form.get("mode") != "cached",
                          groups=_access(form), expires_in=_lifetime(form.get("expires", "")))
    return await pages.tokens(request, notice=f"created {made.name!r} ({'relay' if made.relay else 'cached'}); "
                                              "its secret is sealed on the server and shown nowhere")


def _rename(c: Console, t: OrgTokenRecord, form: Form) -> str:
    new = c.service.update(t, name=form.get("new_name", ""), secret=None, own=None)
    return f"renamed {t.name!r} to {new.name!r}"


def _rotate(c: Console, t: OrgTokenRecord, form: Form) -> str:
    if not form.get("secret"):
        raise InvalidArgumentError(f"type the new secret of {t.name!r} to rotate it")
    c.service.update(t, name=None, secret=form["secret"].encode(), own=None)
    return f"rotated the secret of {t.name!r}: members' daemons drop what they held of it at once"


def _mode(c: Console, t: OrgTokenRecord, form: Form) -> str:
    relay = form.get("mode") != "cached"
    c.service.update(t, name=None, secret=None, own=None, relay=relay)
    return f"{t.name!r} is now {'relay' if relay else 'cached'}"


def _access_change(c: Console, t: OrgTokenRecord, form: Form) -> str:
    c.service.groups.set_access(t, _access(form))
    return f"changed who may use {t.name!r}"


def _expiry(c: Console, t: OrgTokenRecord, form: Form) -> str:
    c.service.update(t, name=None, secret=None, own=None, expires_in=_lifetime(form.get("expires", "")))
    return f"changed when {t.name!r} expires"


def _own_reach(c: Console, t: OrgTokenRecord, form: Form) -> str:
    c.service.update(t, name=None, secret=None, own=_reach(form, f"organization token {t.name!r}"))
    return f"changed where {t.name!r} may go"


def _delete(c: Console, t: OrgTokenRecord, form: Form) -> str:
    c.service.delete(t)
    return f"deleted {t.name!r}"


# One entry per change of an existing token: its form's action, and what makes it.
TOKEN_CHANGES: dict[str, Callable[[Console, OrgTokenRecord, Form], str]] = {
    "rename": _rename, "rotate": _rotate, "mode": _mode, "access": _access_change, "expiry": _expiry,
    "reach": _own_reach, "delete": _delete,
}


@ROUTES.post("/tokens/{change}")
async def change_token(request: web.Request) -> web.Response:
    change = TOKEN_CHANGES.get(request.match_info["change"])
    if change is None:
        raise web.HTTPNotFound()
    form = _form(await request.post())
    console = request.app[CONSOLE]
    said = change(console, console.service.find(token_id=form.get("id", "")), form)
    return await pages.tokens(request, notice=said)


# -- quotas ------------------------------------------------------------------------------------------
def _quota_member(form: Form) -> str:
    """Whose use a quota limits: everyone's together (''), each member's own, or the one named,
    which only 'one member's' takes (a name with another choice, or none with it, is a mistake)."""
    who, named = form.get("who", ""), form.get("member", "").strip()
    if who == "member":
        if not named:
            raise InvalidArgumentError("choose the member whose use the quota limits (or another choice of whose use)")
        return named
    if who not in ("everyone", "each"):
        raise InvalidArgumentError("whose use is everyone's together, each member's own, or one member's")
    if named:
        raise InvalidArgumentError(f"a member ({named[:128]!r}) is chosen but whose use is not 'one member's': "
                                   "choose one member's, or leave the member empty")
    return "" if who == "everyone" else EVERY_MEMBER


@ROUTES.post("/quotas/set")
async def set_quota(request: web.Request) -> web.Response:
    """As `quota set`: a new limit for the same member, token and unit replaces the old one and keeps
    its windows (and this window's count)."""
    form = _form(await request.post())
    console = request.app[CONSOLE]
    store = console.service.store
    token = form.get("token", "").strip()
    token_id = store.token(name=canonical_name(token)).id if token else ""
    member = _quota_member(form)
    try:
        amount = float(form.get("limit", ""))
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        raise InvalidArgumentError(f"the limit {form.get('limit', '')[:32]!r} is not a number of requests or QPU seconds")
    unit = form.get("unit", "")
    if unit not in pages.QUOTA_UNITS:  # never taken for another: a unit misread would limit the wrong thing
        raise InvalidArgumentError(f"a quota counts {' or '.join(pages.QUOTA_UNITS.values())}, not {unit[:32]!r}: "
                                   "choose one in the form")
    limit = math.ceil(amount * 1_000_000) if unit == QPU_US else int(amount)
    now = int(time.time() * 1_000_000)
    # As --from and --until: the span outside which the uses it binds are refused.
    valid_from = parse_since(form["valid_from"].strip(), now, "from") if form.get("valid_from", "").strip() else 0
    valid_until = parse_until(form["until"].strip(), now, "until") if form.get("until", "").strip() else 0
    start = quota_admin.first_window(store, member, token_id, unit, now, valid_from)
    q = console.service.write_quota(Quota(0, member, token_id, token, unit, limit, parse_span(form.get("per", ""), "per"),
                                          start, valid_from_us=valid_from, valid_until_us=valid_until))
    return await pages.quotas(request, notice=f"quota #{q.id}: {q.describe()}")


@ROUTES.post("/quotas/remove")
async def remove_quota(request: web.Request) -> web.Response:
    form = _form(await request.post())
    console = request.app[CONSOLE]
    quota_id = int(form["id"]) if form.get("id", "").isdigit() else 0
    console.service.remove_quota_id(quota_id)
    return await pages.quotas(request, notice=f"removed quota #{quota_id}")



# -- providers: org-wide settings and the org's own definitions -----------------------------------
@ROUTES.post("/providers/set")
async def set_provider(request: web.Request) -> web.Response:
    """As `provider set NAME --host … --plain-http-host … --ca-file … --token-url …` (replaces)."""
    form = _form(await request.post())
    provider = form.get("provider", "")
    reach = _reach(form, f"provider {provider[:40]}")
    before = request.app[CONSOLE].service.set_provider_reach(provider, reach)
    return await pages.providers(request, notice=_replaced(
        f"{provider}: org tokens may also reach {', '.join(reach.hosts + reach.plain_http_hosts) or 'no extra host'}",
        before, reach, reach_text))


@ROUTES.post("/providers/clear")
async def clear_provider(request: web.Request) -> web.Response:
    provider = _form(await request.post()).get("provider", "")
    before = request.app[CONSOLE].service.clear_provider_reach(provider)
    return await pages.providers(request, notice=f"{provider}: org tokens go to the official hosts only" if before
                                 else f"{provider}: no org-wide settings to clear; nothing changed")


@ROUTES.post("/providers/define")
async def define_provider(request: web.Request) -> web.Response:
    """As `provider define NAME --file NAME.toml`: the TOML pasted, read by the same parser."""
    form = _form(await request.post())
    name = form.get("name", "").strip()
    definition = definition_text(name, form.get("toml", ""), f"the definition of {name[:40]!r}")
    before = request.app[CONSOLE].service.define_provider(definition)
    return await pages.providers(request, notice=_replaced(f"{definition.name}: {describe(definition)}", before,
                                                           definition, describe))


def _replaced(said: str, before, now, told: Callable) -> str:
    """A replacing change's line, saying what went (as the CLI does), so nothing is lost unseen."""
    return said + (f" (replaced: {told(before)})" if before is not None and before != now else "")


@ROUTES.post("/providers/undefine")
async def undefine_provider(request: web.Request) -> web.Response:
    name = _form(await request.post()).get("name", "")
    request.app[CONSOLE].service.undefine_provider(name)
    return await pages.providers(request, notice=f"{name}: no longer defined; its org tokens are refused from now on")
