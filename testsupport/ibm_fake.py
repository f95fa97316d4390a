"""Loopback fake of the IBM Cloud hosts qiskit-ibm-runtime (0.51) calls for
`QiskitRuntimeService()`, `service.backends()` and a SamplerV2 job.

One server answers every host; it dispatches on the Host header, so the SDK must reach it
under the real names (e.g. through an HTTPS proxy that tunnels every CONNECT here, with a CA
whose leaf names the IBM hosts). The order the SDK calls them in:

  POST iam.cloud.ibm.com/identity/token                        api key -> bearer (JWT-shaped)
  POST api.global-search-tagging.cloud.ibm.com/v3/resources/search?limit=100
                                                               lists instances, even when
                                                               QISKIT_IBM_INSTANCE is a CRN
  GET  globalcatalog.cloud.ibm.com/api/v1/<plan id>            plan name and pricing type
  POST iam.cloud.ibm.com/identity/token                        runtime client's own token manager
  GET  quantum.cloud.ibm.com/api/v1/backends?include_mocks=True
  GET  quantum.cloud.ibm.com/api/v1/backends/<name>/configuration   once per backend
  then the backend's properties, usage, status, and the job: see testsupport.ibm_quantum_api

A CRN in region eu-de sends the runtime calls to eu-de.quantum.cloud.ibm.com instead.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable

from testsupport.fakes import Reply, Seen, json_reply
from testsupport.ibm_quantum_api import QuantumApi, error

PLAN_ID = "fake-open-plan-id"


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


class IbmCloud:
    """IAM, Global Search, Global Catalog and the Quantum API, each checking what the real one checks."""

    def __init__(self, api_key: Callable[[], str], instance_crn: str) -> None:
        self.api_key = api_key
        self.instance_crn = instance_crn
        self.issued: dict[str, int] = {}  # bearer -> exp (epoch seconds, the clock the SDK also uses)
        self.seen_hosts: list[tuple[str, str, str]] = []  # (host, method, path with query)
        self.quantum = QuantumApi()
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        return self._dispatch((seen.header("Host") or "").rsplit(":", 1)[0].lower(), seen)  # a port only shows off 443

    def by_path(self, seen: Seen) -> Reply:
        """For one loopback server standing in for every host (the Host header then names the
        server): the host is known from the path, as no two of the hosts share one."""
        path = urllib.parse.urlsplit(seen.path).path
        host = ("iam.cloud.ibm.com" if path == "/identity/token" else
                "api.global-search-tagging.cloud.ibm.com" if path.startswith("/v3/resources/") else
                "globalcatalog.cloud.ibm.com" if path == f"/api/v1/{PLAN_ID}" else "quantum.cloud.ibm.com")
        return self._dispatch(host, seen)

    def _dispatch(self, host: str, seen: Seen) -> Reply:
        path = urllib.parse.urlsplit(seen.path).path
        with self._lock:
            self.seen_hosts.append((host, seen.method, seen.path))
        if host.startswith("iam."):
            return self._iam(seen, path)
        if not self._authorized(seen):
            return error(401, "unauthorized", "missing or unknown bearer token")
        if host.startswith("api.global-search-tagging."):
            return self._search(seen, path)
        if host.startswith("globalcatalog."):
            return self._catalog(seen, path)
        if host.split(".", 1)[0] == "quantum" or ".quantum." in host:  # quantum. or <region>.quantum.
            return self._quantum(seen, path)
        return error(404, "not_found", f"no such host {host}")

    # -- IAM ------------------------------------------------------------------------
    def _iam(self, seen: Seen, path: str) -> Reply:
        if seen.method != "POST" or path != "/identity/token":
            return error(404, "not_found", path)
        form = urllib.parse.parse_qs(seen.body.decode())
        if form.get("grant_type") != ["urn:ibm:params:oauth:grant-type:apikey"] or form.get("apikey") != [self.api_key()]:
            return json_reply({"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.",
                               "context": {"requestId": secrets.token_hex(8)}}, 400)
        now = int(time.time())
        # ibm-cloud-sdk-core decodes the token (no signature check) and needs exactly exp and iat:
        # refresh_time = exp - 0.2 * (exp - iat). The rest only makes it look like IAM's.
        claims = {"iss": "https://iam.cloud.ibm.com/identity", "sub": "iam-ServiceId-fake", "grant_type":
                  "urn:ibm:params:oauth:grant-type:apikey", "iat": now, "exp": now + 3600, "jti": secrets.token_hex(8)}
        bearer = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.{secrets.token_urlsafe(32)}"
        with self._lock:
            self.issued[bearer] = claims["exp"]
        return json_reply({"access_token": bearer, "refresh_token": "not_supported", "token_type": "Bearer",
                           "expires_in": 3600, "expiration": claims["exp"], "scope": "ibm openid"})

    def _authorized(self, seen: Seen) -> bool:
        # When IAM fails the SDK falls back to "Authorization: apikey <key>"; that must not pass.
        auth = seen.header("Authorization") or ""
        exp = self.issued.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        return exp is not None and time.time() < exp

    # -- Global Search and Global Catalog (instance discovery) ---------------------------------
    def _search(self, seen: Seen, path: str) -> Reply:
        if seen.method != "POST" or path != "/v3/resources/search":
            return error(404, "not_found", path)
        if "service_name:quantum-computing" not in json.loads(seen.body or b"{}").get("query", ""):
            return json_reply({"items": [], "limit": 100})
        # An item is only kept when doc.extensions is truthy ("has a backend allocation");
        # no search_cursor in the reply ends the SDK's paging loop.
        item = {"crn": self.instance_crn, "name": "fake-instance", "service_plan_unique_id": PLAN_ID,
                "tags": [], "doc": {"extensions": {"quantum": {"allocation": "fake"}}}}
        return json_reply({"items": [item], "limit": 100})

    def _catalog(self, seen: Seen, path: str) -> Reply:
        if seen.method != "GET" or path != f"/api/v1/{PLAN_ID}":
            return error(404, "not_found", path)
        # pricing type must be one of free/trial/paygo/paid/subscription: the SDK sorts by that list.
        return json_reply({"id": PLAN_ID, "name": "open", "overview_ui": {"en": {"display_name": "Open"}},
                           "metadata": {"pricing": {"type": "free"}}})

    # -- Quantum API ----------------------------------------------------------------------
    def _quantum(self, seen: Seen, path: str) -> Reply:
        if seen.header("Service-CRN") != self.instance_crn:
            return error(403, "forbidden", "Service-CRN does not name an instance this key can use")
        if not seen.header("IBM-API-Version"):
            return error(400, "bad_request", "IBM-API-Version header is required")
        return self.quantum(seen, path)
