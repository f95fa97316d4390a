"""The org admin's web console over HTTP(S): the real org server with `serve --console`, driven by
an HTTP client. Sign-in links work once; sessions are safe cookies that end at sign-out and when
their admin is demoted; every change needs the session's CSRF token; every answer carries the
security headers; names are shown as text; no secret reaches a page, an answer or the log.
(The sessions' clock rules, on both store backends: test_org_store.py; a real browser end to
end: test_console_browser.py.)"""

from __future__ import annotations

import re
import secrets

import pytest
import requests
from conftest import DEADLINE

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
        assert (r.headers["X-Frame-Options"], r.headers["Referrer-Policy"], r.headers["Cache-Control"]) == (
            "DENY", "no-referrer", "no-store"), path
        return r

    landing = call("GET", link)  # a GET never uses the link up (previewers fetch links)
    assert landing.status_code == 200 and 'name="link"' in landing.text
    signed_in = call("POST", "/signin", data={"link": secret})
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/"
    cookie = signed_in.headers["Set-Cookie"]
    assert cookie.startswith("__Host-qpu-console=") and {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= {
        part.strip() for part in cookie.split(";")}
    stranger = requests.Session()
    stranger.verify, stranger.trust_env = browser.verify, False
    again = call("POST", "/signin", stranger, data={"link": secret})
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

    _, second = server.console_link().split("/signin?link=")
    assert call("POST", "/signin", data={"link": second}).status_code == 303
    assert call("GET", "/").status_code == 200
    assert server.cli("user", "set-role", "alice", "member").returncode == 0  # demoted: the session ends
    demoted = call("GET", "/")
    assert demoted.status_code == 401 and "no longer an org admin" in demoted.text

    held = [secret, second, canary, code, cookie.split(";")[0].split("=", 1)[1]]
    meant = {id(landing): secret, id(added): code}  # the link's own landing page; the code's one showing
    for r in seen:
        for value in held:
            if meant.get(id(r)) != value:
                assert value not in r.text and value not in str(r.headers.get("Location", "")), r.url
    log = server.log()
    assert "console POST /signin 303" in log
    assert not [value for value in held if value in log]


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
