"""Signing in to the org server's web console as a browser does: open the link, press Sign in."""

from __future__ import annotations

import re

import requests
from conftest import DEADLINE


def signin_csrf(landing: str) -> str:
    """The token the landing page's form carries (bound to the cookie it set)."""
    return re.search(r'name="csrf" value="([0-9a-f]+)"', landing).group(1)


def sign_in(browser: requests.Session, link: str) -> requests.Response:
    """Open `link` in `browser` and press Sign in: the sign-in's answer (303 and a session cookie)."""
    landing = browser.get(link, timeout=DEADLINE)
    assert landing.status_code == 200, landing.text[:300]
    base, secret = link.split("/signin?link=")
    return browser.post(base + "/signin", data={"link": secret, "csrf": signin_csrf(landing.text)},
                        allow_redirects=False, timeout=DEADLINE)
