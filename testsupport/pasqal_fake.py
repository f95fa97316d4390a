"""Loopback fakes of what pasqal-cloud 0.24 calls for `SDK(username=, password=, project_id=)`,
`create_batch(..., wait=True)` and a job's `result` (read in its source, pasqal_cloud/):

  POST pasqal.eu.auth0.com/oauth/token              Auth0's password-realm grant, a form
                                                    (authentication.py:144, endpoints.py:71-91)
  POST apis.pasqal.cloud/core-fast/api/v1/batches   the batch, gzip-compressed JSON (http_client.py:254)
  GET  .../api/v1/batches/ID/status                 polled until no job is PENDING or RUNNING
  GET  .../api/v2/batches/ID, .../api/v2/jobs?batch_id=ID&order_by=...
  GET  .../api/v1/jobs/ID/results_link              a presigned URL of the result on object storage,
  GET  <that URL>                                   fetched with no credential (http_client.py:359)

The API answers in JSend (`{"status", "code", "message", "data"}`, utils/jsend.py) and takes only
bearers Auth0 issued; Auth0 takes only the account's password, for Pasqal's public client id,
realm and audience; object storage only the links the API gave out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable

from testsupport.fakes import BadCoding, Reply, Seen, decoded_body, json_reply, make_jwt

# pasqal_cloud/endpoints.py: the prod tenant's public client, realm, audience and grant.
PUBLIC_CLIENT_ID = "PeZvo7Atx7IVv3iel59asJSb4Ig7vuSB"
REALM = "pcs-users"
AUDIENCE = "https://apis.pasqal.cloud/account/api/v1"
GRANT_TYPE = "http://auth0.com/oauth/grant-type/password-realm"
CORE = "/core-fast"
FORM = "application/x-www-form-urlencoded"


class Auth0:
    """Auth0's /oauth/token for the password-realm grant: a wrong password is 403 invalid_grant."""

    def __init__(self, account: Callable[[], tuple[str, str]]) -> None:
        self.account = account
        self.issued: set[str] = set()
        self.grants = 0
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        if seen.method != "POST" or urllib.parse.urlsplit(seen.path).path != "/oauth/token":
            return json_reply({"error": "not_found"}, 404)
        if seen.header("Content-Type") != FORM:
            return json_reply({"error": "invalid_request", "error_description": "a form is expected"}, 400)
        form = dict(urllib.parse.parse_qsl(seen.body.decode()))
        if form.get("grant_type") != GRANT_TYPE:
            return json_reply({"error": "unsupported_grant_type"}, 403)
        if form.get("client_id") != PUBLIC_CLIENT_ID:
            return json_reply({"error": "access_denied", "error_description": "Unauthorized"}, 401)
        if (form.get("realm"), form.get("audience")) != (REALM, AUDIENCE):
            return json_reply({"error": "invalid_request", "error_description": "unknown realm or audience"}, 400)
        if (form.get("username"), form.get("password")) != self.account():
            return json_reply({"error": "invalid_grant", "error_description": "Wrong email or password."}, 403)
        token = make_jwt(time.time() + 86400) + secrets.token_hex(8)
        with self._lock:
            self.grants += 1
            self.issued.add(token)
        return json_reply({"access_token": token, "expires_in": 86400, "token_type": "Bearer"})


@dataclasses.dataclass
class Stored:
    """A batch as the service keeps it: its request, as the SDK sent it, and its jobs."""

    batch: dict
    jobs: list[dict]
    request: dict


class PasqalApi:
    """The core API (apis.pasqal.cloud/core-fast): batches run at once on the fake's emulator,
    each job's counts kept on `storage` (a `ResultStorage`) behind a presigned link."""

    def __init__(self, auth0: Auth0, storage: ResultStorage, project_id: str) -> None:
        self.auth0 = auth0
        self.storage = storage
        self.project_id = project_id
        self.batches: dict[str, Stored] = {}

    def __call__(self, seen: Seen) -> Reply:
        bearer = (seen.header("Authorization") or "").removeprefix("Bearer ")
        if bearer not in self.auth0.issued:
            return _jsend({"description": "Unauthorized"}, 401, "fail")
        split = urllib.parse.urlsplit(seen.path)
        path, query = split.path.removeprefix(CORE), dict(urllib.parse.parse_qsl(split.query))
        if seen.method == "POST" and path == "/api/v1/batches":
            return self._create(seen)
        if seen.method == "GET" and (m := re.fullmatch(r"/api/v1/batches/([0-9a-f-]{36})/status", path)):
            stored = self.batches.get(m.group(1))
            return _jsend({"status": stored.batch["status"], "jobs_count_per_status": {"DONE": len(stored.jobs)}}) \
                if stored else _jsend({"description": "Batch not found"}, 404, "fail")
        if seen.method == "GET" and (m := re.fullmatch(r"/api/v2/batches/([0-9a-f-]{36})", path)):
            stored = self.batches.get(m.group(1))
            return _jsend(stored.batch) if stored else _jsend({"description": "Batch not found"}, 404, "fail")
        if seen.method == "GET" and path == "/api/v2/jobs":
            stored = self.batches.get(query.get("batch_id", ""))
            jobs = stored.jobs if stored else []
            return _jsend(jobs, pagination={"total": len(jobs), "offset": 0, "end": len(jobs)})
        if seen.method == "GET" and (m := re.fullmatch(r"/api/v1/jobs/([0-9a-f-]{36})/results_link", path)):
            job = next((j for s in self.batches.values() for j in s.jobs if j["id"] == m.group(1)), None)
            if job is None:
                return _jsend({"description": "Job not found"}, 404, "fail")
            return _jsend({"results_link": self.storage.results_link(job)})
        return _jsend({"description": f"no route {seen.method} {path}"}, 404, "fail")

    def _create(self, seen: Seen) -> Reply:
        from pulser import Sequence

        if seen.header("Content-Type") != "application/json":
            return _jsend({"description": "expected JSON"}, 415, "fail")
        try:
            doc = json.loads(decoded_body(seen, ("gzip",)))  # the SDK gzips batches unless told not to
        except BadCoding as exc:
            return _jsend({"description": str(exc)}, exc.status, "fail")
        if doc.get("project_id") != self.project_id:
            return _jsend({"description": "Project not found"}, 403, "fail")
        try:  # the service takes only a sequence pulser reads back
            atoms = len(Sequence.from_abstract_repr(doc["sequence_builder"]).register.qubit_ids)
        except Exception as exc:  # noqa: BLE001 - pulser raises many kinds; the service answers 400 to all
            return _jsend({"description": f"invalid sequence: {type(exc).__name__}"}, 400, "fail")
        now, batch_id = "2026-01-01T00:00:00.000000+00:00", _uuid()
        jobs = [{"id": _uuid(), "batch_id": batch_id, "project_id": self.project_id, "status": "DONE",
                 "runs": job["runs"], "variables": job.get("variables"), "created_at": now, "updated_at": now,
                 "counter": {"0" * atoms: job["runs"] - job["runs"] // 4, "1" * atoms: job["runs"] // 4}}
                for job in doc["jobs"]]
        batch = {"id": batch_id, "project_id": self.project_id, "user_id": "user-1", "status": "DONE",
                 "open": bool(doc.get("open")), "complete": not doc.get("open"), "created_at": now,
                 "updated_at": now, "device_type": doc.get("device_type") or "FRESNEL",
                 "jobs_count": len(jobs), "jobs_count_per_status": {"DONE": len(jobs)}}
        self.batches[batch_id] = Stored(batch, jobs, doc)
        return _jsend({**batch, "jobs": [{k: v for k, v in j.items() if k != "counter"} for j in jobs]})


class ResultStorage:
    """Object storage behind presigned links: a GET of a link the API gave out, with no credential."""

    def __init__(self, base: Callable[[], str]) -> None:
        self.base = base
        self._links: dict[str, dict] = {}  # path with query -> the job

    def results_link(self, job: dict) -> str:
        path = f"/pasqal-results/{job['id']}.json?X-Amz-Expires=3600&X-Amz-Signature={secrets.token_hex(32)}"
        self._links[path] = job
        return self.base() + path

    def __call__(self, seen: Seen) -> Reply:
        job = self._links.get(seen.path)
        if seen.method != "GET" or job is None or seen.header("Authorization"):
            return Reply(403, b"<Error><Code>AccessDenied</Code></Error>", [("Content-Type", "application/xml")])
        return json_reply({"counter": job["counter"], "raw": [], "serialised_results": None})


def _jsend(data: object, code: int = 200, status: str = "success", pagination: dict | None = None) -> Reply:
    doc = {"status": status, "code": code, "message": "OK" if code == 200 else "Error", "data": data}
    if pagination is not None:
        doc["pagination"] = pagination
    return json_reply(doc, code)


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())
