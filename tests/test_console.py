"""The org admin's web console over HTTP(S): the real org server with `serve --console`, driven by
an HTTP client. Sign-in links work once; sessions are safe cookies that end at sign-out and when
their admin is demoted; every change needs the session's CSRF token; every answer carries the
security headers; names are shown as text; no secret reaches a page, an answer or the log.
(The sessions' clock rules, on both store backends: test_org_store.py; a real browser end to
end: test_console_browser.py.)"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import secrets
import time

import pytest
import requests
from conftest import DEADLINE

from testsupport.console import sign_in, signin_csrf
from testsupport.orgserver import OrgServer

pytest.importorskip("jinja2", reason="the web console needs its extra: pip install 'qpu-broker[console]'")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
EVIL = "<script>alert(1)</script>"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def test_console_over_https_signs_in_once_with_safe_cookies_csrf_headers_escaping_and_no_secret(console_org):
    server = console_org
    link = server.console_link()
    base, secret = link.split("/signin?link=")
    assert base == server.console_url() and base.startswith("https://localhost:")
    seen: list[requests.Response] = []  # every answer, to look for secrets in at the end
    browser = requests.Session()
    browser.verify, browser.trust_env = str(server.ca.ca_file), False  # the org's CA, not the environment's bundle

    def call(method: str, path: str, session: requests.Session = browser, **kw) -> requests.Response:
        r = session.request(method, path if path.startswith("https") else base + path, allow_redirects=False,
                            timeout=DEADLINE, **kw)
        seen.append(r)
        assert r.headers["Content-Security-Policy"] == CSP, path
        assert (r.headers["X-Frame-Options"], r.headers["Referrer-Policy"], r.headers["Cache-Control"],
                r.headers["Strict-Transport-Security"]) == ("DENY", "no-referrer", "no-store", "max-age=31536000"), path
        return r

    landing = call("GET", link)  # a GET never uses the link up (previewers fetch links)
    assert landing.status_code == 200 and 'name="link"' in landing.text
    assert call("POST", "/signin", data={"link": secret}).status_code == 403  # not from the landing page
    signed_in = call("POST", "/signin", data={"link": secret, "csrf": signin_csrf(landing.text)})
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/"
    cookie = signed_in.headers["Set-Cookie"]
    assert cookie.startswith("__Host-qpu-console=") and {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= {
        part.strip() for part in cookie.split(";")}
    stranger = requests.Session()
    stranger.verify, stranger.trust_env = browser.verify, False
    again = call("POST", "/signin", stranger, data={"link": secret,
                                                    "csrf": signin_csrf(call("GET", link, stranger).text)})
    assert again.status_code == 401 and "used already" in again.text
    assert call("GET", "/", stranger).status_code == 401  # no session: no page

    members = call("GET", "/members")
    assert members.status_code == 200 and "alice" in members.text
    token = csrf_of(members.text)
    for form in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("0" if token[-1] != "0" else "1")}):
        refused = call("POST", "/members/add", data={"name": "mallory", **form})
        assert refused.status_code == 403 and "CSRF" in refused.text and "nothing was changed" in refused.text
    assert "mallory" not in call("GET", "/members").text

    added = call("POST", "/members/add", data={"name": EVIL, "csrf": token})
    assert added.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in added.text and "<script" not in added.text
    code = re.search(r'id="enrollment-code">([^<]+)<', added.text).group(1)
    assert code not in call("GET", "/members").text  # shown once
    canary = f"canary-console-{secrets.token_hex(8)}"
    made = call("POST", "/tokens/create", data={"name": f"IonQ {EVIL}", "provider": "ionq", "secret": canary,
                                                "mode": "relay", "access": "everyone", "csrf": token})
    assert made.status_code == 200 and "<script" not in made.text
    for path in ("/", "/tokens", "/quotas", "/usage", "/usage.csv", "/audit"):
        page = call("GET", path)
        assert page.status_code == 200 and "<script" not in page.text, path
    audit = seen[-1].text
    assert "console:127.0.0.1" in audit and "token.create" in audit and "console.link" in audit

    assert call("POST", "/signout", data={"csrf": token}).status_code == 200
    ended = call("GET", "/", cookies={"__Host-qpu-console": cookie.split(";")[0].split("=", 1)[1]})
    assert ended.status_code == 401 and "has ended" in ended.text

    second_link = server.console_link()
    _, second = second_link.split("/signin?link=")
    assert call("POST", "/signin", data={"link": second, "csrf": signin_csrf(call("GET", second_link).text)}
                ).status_code == 303
    assert call("GET", "/").status_code == 200
    assert server.cli("user", "set-role", "alice", "member").returncode == 0  # demoted: the session ends
    demoted = call("GET", "/")
    assert demoted.status_code == 401 and "no longer an org admin" in demoted.text

    held = [secret, second, canary, code, cookie.split(";")[0].split("=", 1)[1]]
    meant = {id(added): code}  # the code's one showing; each link's own landing pages:
    meant |= {id(r): secret for r in seen if r.url == link} | {id(r): second for r in seen if r.url == second_link}
    for r in seen:
        for value in held:
            if meant.get(id(r)) != value:
                assert value not in r.text and value not in str(r.headers.get("Location", "")), r.url
    log = server.log()
    assert "console POST /signin 303" in log
    assert not [value for value in held if value in log]


def test_console_in_plain_text_on_loopback_pins_no_https_and_its_cookie_is_for_plain_http(short_tmp):
    """Strict-Transport-Security is for HTTPS answers only: a loopback test console in plain text would
    otherwise bind 'localhost' to HTTPS in the browser for a year."""
    server = OrgServer(short_tmp, None)
    server.console = True
    server.start(tls=False)
    try:
        link = server.console_link()
        assert link.startswith("http://127.0.0.1:")
        r = sign_in(requests.Session(), link)
        assert r.status_code == 303 and r.headers["Content-Security-Policy"] == CSP
        assert "Strict-Transport-Security" not in r.headers
        assert r.headers["Set-Cookie"].startswith("qpu-console=") and "Secure" not in r.headers["Set-Cookie"]
    finally:
        server.stop()


def test_console_is_refused_without_tls_off_loopback(short_tmp):
    server = OrgServer(short_tmp, None)  # no certificate at all
    r = server.cli("serve", "--listen", "127.0.0.1:0", "--console", "0.0.0.0:0")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "refusing to serve the console without TLS on 0.0.0.0:0: console sign-in links and session cookies" in r.stderr


def test_usage_charts_bucket_by_member_or_token_and_sum_the_rest():
    from qpu_broker.orgserver.console.chart import (
        BUCKETS,
        OTHERS,
        SERIES_MAX,
        chart,
        series,
    )
    from qpu_broker_client.usage import UsageRecord

    def use(member: str, token: str, at: int, qpu: int = 0) -> UsageRecord:
        return UsageRecord("id", member, "t-" + token, token, "dwave", "forward", "POST", "h", "/", 200, "answered",
                           1, 1, at, qpu_us=qpu)

    records = [use("bob", "D", 0, 5), use("bob", "D", 99, 7), use("carol", "E", 50)]
    assert series(records, "member", lambda r: 1, 0, 100) == {
        "bob": [1] + [0] * (BUCKETS - 2) + [1], "carol": [0] * (BUCKETS // 2) + [1] + [0] * (BUCKETS // 2 - 1)}
    assert {n: sum(v) for n, v in series(records, "token", lambda r: r.qpu_us, 0, 100).items()} == {"D": 12, "E": 0}
    many = [use(f"m{i}", "D", 10) for i in range(SERIES_MAX + 3)]
    lines = series(many, "member", lambda r: 1, 0, 100)
    assert len(lines) == SERIES_MAX + 1 and sum(lines[OTHERS]) == 3
    drawn = chart("Requests", "requests", lines, 0, 100)
    assert drawn.top == 3 and len(drawn.lines) == SERIES_MAX + 1 and len(drawn.lines[0].points.split()) == BUCKETS


def signed_in(server) -> tuple[requests.Session, str, str]:
    """A browser session signed in as alice: (session, the console's address, the CSRF token)."""
    link = server.console_link()
    base = link.split("/signin?link=")[0]
    browser = requests.Session()
    browser.verify, browser.trust_env = str(server.ca.ca_file), False
    assert sign_in(browser, link).status_code == 303
    return browser, base, csrf_of(browser.get(base + "/members", timeout=DEADLINE).text)


def test_usage_and_admin_record_pages_read_the_newest_page_of_a_long_record_and_page_on(console_org,
                                                                                       as_local_operator):
    """50 000 usage records: the usage page lists the newest USAGE_ROWS, newest first, with an
    "older" link that goes on below them; its charts are drawn from the newest CHART_READ_MAX the
    filter matches, and say so. (Each read is a bounded search: test_org_store.py.)"""
    from qpu_broker.orgserver.admin_record import AdminRecord
    from qpu_broker.orgserver.console.pages import (
        AUDIT_ROWS,
        CHART_READ_MAX,
        USAGE_ROWS,
    )
    from qpu_broker.orgserver.store import OrgStore
    from qpu_broker_client.usage import UsageRecord

    server = console_org
    store = OrgStore.open("sqlite", str(server.data / "store" / "org.db"))
    now = int(time.time() * 1e6)
    rows = [UsageRecord(f"r{i:05}", "bob" if i % 2 else "carol", "id-t", "t", "ionq", "forward", "GET",
                        "api.ionq.co", f"/v0.3/jobs/{i:05}", 200, "answered", 1, 1, now - 50_000 + i) for i in range(50_000)]
    store.add_usage(rows, now)
    record = AdminRecord(store, lambda: now)
    with store.db.writing():  # one commit for them all
        for i in range(AUDIT_ROWS + 5):
            with record.changing() as note:
                store.add_group(f"g{i:03}", [], now)
                note("group.add", f"g{i:03}")
    store.close()
    browser, base, _ = signed_in(server)

    def listed(html: str) -> list[str]:
        return re.findall(r"<td>/v0\.3/jobs/(\d+)</td>", html)

    page = browser.get(base + "/usage", params={"since": "1h"}, timeout=DEADLINE)
    assert page.status_code == 200
    newest = listed(page.text)
    assert newest == [f"{i:05}" for i in range(49_999, 49_999 - USAGE_ROWS, -1)]
    assert f"The charts: {CHART_READ_MAX} records" in page.text and "the newest" in page.text
    older = re.search(r'href="(/usage\?[^"]+)" id="older"', page.text).group(1).replace("&amp;", "&")
    next_page = listed(browser.get(base + older, timeout=DEADLINE).text)
    assert next_page == [f"{i:05}" for i in range(49_999 - USAGE_ROWS, 49_999 - 2 * USAGE_ROWS, -1)]
    carol = listed(browser.get(base + "/usage", params={"member": "carol", "since": "1h"}, timeout=DEADLINE).text)
    assert carol[:2] == ["49998", "49996"] and len(carol) == USAGE_ROWS
    bad = browser.get(base + "/usage", params={"before": "x<b>"}, timeout=DEADLINE)
    assert bad.status_code == 400 and "is not a position" in bad.text and "<b>" not in bad.text

    audit = browser.get(base + "/audit", timeout=DEADLINE).text
    shown = re.findall(r"<td>group\.add</td><td>(g\d+)</td>", audit)
    # The newest AUDIT_ROWS entries, newest first: the sign-in's and its link's, then the groups'.
    assert audit.count('<tr><td>') == AUDIT_ROWS and shown == [f"g{i:03}" for i in range(AUDIT_ROWS + 4, 6, -1)]
    older = re.search(r'href="(/audit\?before=\d+)" id="older"', audit).group(1)
    rest = browser.get(base + older, timeout=DEADLINE).text
    assert re.findall(r"<td>group\.add</td><td>(g\d+)</td>", rest) == [f"g{i:03}" for i in range(6, -1, -1)]


def test_each_form_changes_what_the_cli_would_with_one_console_entry_and_refuses_bad_input_whole(console_org):
    """Reach (plain-HTTP hosts, a pasted CA, a token URL), a quota's validity span, service members'
    codes, rotate-key, set-role, provider settings and definitions: each form makes the change the
    CLI shows, with one admin record entry naming the console's admin; bad input is one clear line
    with its status, and changes nothing; markup is text; no secret in any answer."""
    from qpu_broker.orgserver.admin_record import AdminQuery, AdminRecord
    from qpu_broker.orgserver.store import OrgStore

    server = console_org
    browser, base, csrf = signed_in(server)
    answers: list[requests.Response] = []

    def post(path: str, status: int = 200, **form) -> str:
        r = browser.post(base + path, data={**form, "csrf": csrf}, allow_redirects=False, timeout=DEADLINE)
        answers.append(r)
        assert r.status_code == status, (path, r.status_code, re.findall(r'id="refused">([^<]*)', r.text))
        assert "<script" not in r.text and "Traceback" not in r.text
        return r.text

    def state() -> tuple:
        """What the org is, read from its store as the CLI reads it: tokens, providers, users, quotas,
        codes and devices, the admin record."""
        store = OrgStore.open("sqlite", str(server.data / "store" / "org.db"))
        try:
            return (store.tokens(), store.org_reach(), store.custom_providers(), store.users(), store.quotas(),
                    store.open_code_count(0), store.devices(), AdminRecord(store, int).entries(AdminQuery())[0])
        finally:
            store.close()

    def refused(path: str, said: str, status: int = 400, **form) -> None:
        before = state()
        text = post(path, status, **form)
        assert said in html.unescape(re.search(r'id="refused">([^<]*)<', text).group(1)), text
        assert state() == before  # nothing changed, nothing recorded

    def cli_json(*args: str):
        r = server.cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def audit() -> list[dict]:
        return [dataclasses.asdict(e) for e in state()[-1]]

    def changed(action: str, subject: str, make) -> dict:
        """`make()` adds exactly one admin record entry: `action` on `subject`, by the console's admin."""
        seen = len(audit())
        make()
        new = audit()[seen:]
        assert [(e["action"], e["subject"], e["actor"], e["origin"].split(":")[0]) for e in new] == [
            (action, subject, "alice", "console")], new
        return new[0]

    ca_pem = server.ca.ca_file.read_text()
    canary = f"canary-forms-{secrets.token_hex(8)}"
    reach = {"hosts": "eu.api.ionq.co", "plain_http_hosts": "127.0.0.1:8099", "ca": ca_pem.replace("\n", "\r\n"),
             "token_url": "https://auth.ionq.example/token"}
    changed("token.create", "Lab", lambda: post("/tokens/create", name="Lab", provider="ionq", secret=canary,
                                                 mode="relay", access="everyone", **reach))
    [lab] = cli_json("token", "list")
    assert lab["own"] == {"hosts": ["eu.api.ionq.co:443"], "plain_http_hosts": ["127.0.0.1:8099"], "ca": "set",
                          "token_url": "https://auth.ionq.example/token"}
    assert state()[0][0].own.ca_pem == ca_pem.encode()  # the PEM as pasted, its line ends as a file's
    refused("/tokens/create", "is not a loopback host:port", name="Lab2", provider="ionq", secret=canary,
            plain_http_hosts="10.0.0.5:80")
    refused("/tokens/create", "is not a PEM certificate", name="Lab2", provider="ionq", secret=canary, ca="not <b>pem")
    refused("/tokens/create", "must be an https:// URL", name="Lab2", provider="ionq", secret=canary,
            token_url="http://auth.example/token")
    lab_id = re.search(r"<small>([0-9a-f]{24}) ·", browser.get(base + "/tokens", timeout=DEADLINE).text).group(1)
    refused("/tokens/reach", "is not a PEM certificate", id=lab_id, ca="-----BEGIN CERTIFICATE-----\nxx")
    changed("token.update", "Lab", lambda: post("/tokens/reach", id=lab_id, hosts="", plain_http_hosts="", ca="",
                                                 token_url=""))
    assert cli_json("token", "list")[0]["own"] == {"hosts": [], "plain_http_hosts": [], "ca": "", "token_url": ""}

    # A quota with a validity span, as --from and --until.
    changed("quota.set", "#1", lambda: post("/quotas/set", who="everyone", token="Lab", unit="requests", limit="5",
                                             per="1d", valid_from="2026-01-01T00:00Z", until="2099-01-01T00:00Z"))
    [q] = [json.loads(line) for line in server.cli("quota", "list", "--json").stdout.splitlines()]
    assert (q["valid_from_us"], q["valid_until_us"], q["start_us"]) == (1767225600_000_000, 4070908800_000_000,
                                                                         1767225600_000_000)
    refused("/quotas/set", "ends before it begins", who="everyone", token="Lab", unit="requests", limit="5", per="1d",
            valid_from="2099-01-01T00:00Z", until="2098-01-01T00:00Z")
    refused("/quotas/set", "until", who="everyone", token="Lab", unit="requests", limit="5", per="1d", until="soon<b>")

    # Service members: a code for several devices that expire; a person's code enrolls one.
    name = "ci<b>x</b>"
    shown = post("/members/add", name=name, role="service", uses="3", device_ttl="1d")
    assert "ci&lt;b&gt;x&lt;/b&gt;" in shown and "enrolls 3 devices, each expiring 86400 s after it enrolls" in shown
    entry = audit()[-1]
    assert (entry["action"], entry["subject"], entry["actor"]) == ("user.add", name, "alice")
    assert "role service" in entry["detail"] and "enrolls 3 devices" in entry["detail"]
    code = re.search(r'id="enrollment-code">([^<]+)<', shown).group(1)
    refused("/members/add", "are for service members", name="dave", role="member", uses="3")
    refused("/members/add", "uses 'x' is not a number of devices", name="dave", role="service", uses="x")

    # rotate-key: every code and device of bob's withdrawn, a new code shown once.
    bob_code = server.add_user("bob")
    server.enroll(bob_code)
    assert server.cli("user", "devices", "bob").stdout.strip()
    rotated = {}
    changed("user.rotate-key", "bob", lambda: rotated.update(text=post("/members/rotate-key", name="bob")))
    assert "withdrew every enrollment code and device of &#39;bob&#39;" in rotated["text"]
    new_code = re.search(r'id="enrollment-code">([^<]+)<', rotated["text"]).group(1)
    assert not server.cli("user", "devices", "bob").stdout.strip()
    refused("/members/rotate-key", "no user named 'nobody'", 404, name="nobody")

    changed("user.set-role", "bob", lambda: post("/members/role", name="bob", role="admin"))
    assert "admin   bob\n" in server.cli("user", "list").stdout
    refused("/members/role", "the role is member, admin, service, not 'root'", name="bob", role="root")
    refused("/members/role", "no user named 'nobody'", 404, name="nobody", role="member")

    # Providers: org-wide settings, and the org's own definitions from pasted TOML.
    changed("provider.set", "ionq", lambda: post("/providers/set", provider="ionq", **reach))
    assert cli_json("provider", "show")["ionq"] == lab["own"]
    refused("/providers/set", "is not a loopback host:port", provider="ionq", plain_http_hosts="192.0.2.1:80")
    refused("/providers/set", "no provider this organization defines", provider="nosuch")
    changed("provider.clear", "ionq", lambda: post("/providers/clear", provider="ionq"))
    assert "ionq" not in cli_json("provider", "show")
    definition = 'official_hosts = ["api.acme.example"]\r\nauth = "bearer"\r\n'
    changed("provider.define", "acme", lambda: post("/providers/define", name="acme", toml=definition))
    assert cli_json("provider", "show")["_custom"]["acme"]["official_hosts"] == ["api.acme.example"]
    assert "acme" in browser.get(base + "/providers", timeout=DEADLINE).text
    refused("/providers/define", "is not valid TOML", name="acme", toml="official_hosts = [")
    refused("/providers/define", "hosts is not part of a definition", name="acme",
            toml='official_hosts = ["a.example"]\nhosts = ["127.0.0.1:9"]')
    refused("/providers/define", "acme<b>", name="acme<b>", toml=definition)
    changed("provider.undefine", "acme", lambda: post("/providers/undefine", name="acme"))

    for page in ("/", "/members", "/tokens", "/quotas", "/providers", "/audit"):
        answers.append(browser.get(base + page, timeout=DEADLINE))
    for r in answers:
        assert canary not in r.text and canary not in str(r.headers)
    assert sum(code in r.text for r in answers) == 1 and sum(new_code in r.text for r in answers) == 1  # shown once
    assert canary not in server.log() and code not in server.log()


def test_an_admin_asks_for_a_sign_in_link_over_grpc_for_themself_recorded_and_members_are_refused(console_org):
    """ConsoleLink: the admin RPC beside `console-login`: a link for the calling admin only, on the
    console's address, that works once; recorded with the admin's device; PERMISSION_DENIED to others."""
    import grpc
    from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

    server = console_org
    stub, md = server.admin_client()
    answer = stub.ConsoleLink(org_pb2.ConsoleLinkRequest(), metadata=md)
    base, secret = answer.link.split("/signin?link=")
    assert base == server.console_url() and answer.expires.seconds > time.time()
    browser = requests.Session()
    browser.verify, browser.trust_env = str(server.ca.ca_file), False
    assert sign_in(browser, answer.link).status_code == 303
    assert "<span>alice</span>" in browser.get(base + "/", timeout=DEADLINE).text
    again = sign_in(browser, answer.link)
    assert again.status_code == 401 and "used already" in again.text
    entry, signin = [json.loads(line) for line in server.cli("audit", "--json", "--action", "console").stdout.splitlines()]
    assert (signin["action"], signin["actor"]) == ("console.signin", "alice")
    assert (entry["actor"], entry["subject"], bool(entry["device"]), entry["origin"].startswith("ipv")) == (
        "alice", "alice", True, True)
    member_stub, member_md = server.client(server.add_user("bob"))
    with pytest.raises(grpc.RpcError) as refused:
        member_stub.ConsoleLink(org_pb2.ConsoleLinkRequest(), metadata=member_md)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "signing in to the web console" in \
        refused.value.details()
    assert secret not in server.log()
