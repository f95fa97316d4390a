"""`org-server console-login --admin NAME`: a one-time sign-in link to the web console, printed once
(stdout, for the admin to open; never in argv, a log or the store, which keeps its hash)."""

from __future__ import annotations

import sys
import urllib.parse

from qpu_broker_client.errors import FailedPreconditionError, InvalidArgumentError

from qpu_broker.common.reach import is_loopback
from qpu_broker.orgserver.admin_record import AdminRecord
from qpu_broker.orgserver.console.sessions import (
    LINK_SECONDS,
    URL_META,
    Sessions,
    sign_in_link,
)
from qpu_broker.orgserver.store import OrgStore


def console_login(store: OrgStore, record: AdminRecord, admin: str, url: str) -> int:
    base = (url or store.meta(URL_META) or "").rstrip("/")
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise InvalidArgumentError(f"--url {url[:200]!r} is not the console's address, like "
                                       "https://console.acme.example or https://org.acme.example:8443")
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):  # serve's rule for the console
            raise FailedPreconditionError(f"--url {url[:200]!r} is plain http off loopback: the link's secret would "
                                          "cross the network in clear; give the console's https:// address")
    secret = Sessions(store).new_link(admin, record)
    print(f"a sign-in link to the web console for {admin!r}, shown this once; it works once, within "
          f"{LINK_SECONDS // 60} minutes:" + ("" if base else " (no console has been served from this store yet: "
                                              "open this path on the console's address, or give --url)"),
          file=sys.stderr)
    print(sign_in_link(base, secret))
    return 0
