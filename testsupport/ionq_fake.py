"""IonQ's REST API as qiskit-ionq 1.1 and cirq-ionq 1.7 call it (v0.4; v0.3 paths too): jobs
submitted as JSON, their status, and their results at the URL the job names.

As strict as the service where the SDKs could get it wrong: `Authorization: apiKey KEY` and no
other scheme, a JSON body labelled application/json, a version prefix it knows. Every job is
done when first looked up, and its result is the Bell pair's: half |00>, half |11>."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable

from testsupport.fakes import Reply, Seen

VERSIONS = ("v0.3", "v0.4")
BELL = {"0": 0.5, "3": 0.5}  # IonQ's keys: the measured state as an integer, qubit 0 the lowest bit
_JOB = re.compile(r"/(?P<version>v\d+\.\d+)/jobs(?:/(?P<id>[0-9a-f-]{36})(?P<rest>/.*)?)?")


def _json(doc: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(doc).encode(), [("Content-Type", "application/json; charset=utf-8")])


def _error(status: int, kind: str, message: str) -> Reply:
    return _json({"error": {"type": kind, "message": message}, "statusCode": status}, status)


class IonQApi:
    def __init__(self, api_key: Callable[[], str]) -> None:
        self.api_key = api_key
        self.jobs: dict[str, dict] = {}  # id -> the job as IonQ keeps it
        self.submitted: list[dict] = []  # the bodies, as the SDKs sent them
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        if seen.header("Authorization") != f"apiKey {self.api_key()}":
            return _error(401, "authorization_error", "Invalid API key, or not in the form 'apiKey KEY'")
        path = urllib.parse.urlsplit(seen.path).path
        m = _JOB.fullmatch(path)
        if m is None or m["version"] not in VERSIONS:
            return _error(404, "not_found_error", f"no route {seen.method} {path}")
        if m["id"] is None:
            return self._submit(seen, m["version"]) if seen.method == "POST" else _error(405, "method_error", "POST a job")
        job = self.jobs.get(m["id"])
        if job is None:
            return _error(404, "not_found_error", f"no job {m['id']}")
        if seen.method == "GET" and m["rest"] is None:
            job["status"] = "completed"  # done when first looked up: no test waits on a clock
            return _json(job)
        if seen.method == "GET" and m["rest"] in ("/results/probabilities", "/results/histogram"):
            if job["status"] != "completed":
                return _error(400, "invalid_request_error", "the job has no results yet")
            return _json(BELL)
        if seen.method == "PUT" and m["rest"] == "/status/cancel":
            job["status"] = "canceled"
            return _json({"id": job["id"], "status": "canceled"})
        return _error(404, "not_found_error", f"no route {seen.method} {path}")

    def _submit(self, seen: Seen, version: str) -> Reply:
        media = (seen.header("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/json":
            return _error(415, "invalid_request_error", f"a job is JSON (Content-Type: application/json), not {media!r}")
        try:
            doc = json.loads(seen.body)
        except ValueError:
            return _error(400, "invalid_request_error", "the body is not JSON")
        if not isinstance(doc, dict) or not isinstance(doc.get("input"), dict) or "backend" not in doc:
            return _error(400, "invalid_request_error", "a job names its backend and has an input")
        job_id = str(uuid.uuid4())
        qubits = int(doc["input"].get("qubits", 0))
        results = {kind: {"url": f"/{version}/jobs/{job_id}/results/{kind}"} for kind in ("probabilities", "histogram")}
        with self._lock:
            self.submitted.append(doc)
            self.jobs[job_id] = {"id": job_id, "type": doc.get("type", "ionq.circuit.v1"), "status": "submitted",
                                 "backend": doc["backend"], "name": doc.get("name", ""), "shots": doc.get("shots"),
                                 "metadata": doc.get("metadata") or {}, "settings": doc.get("settings") or {},
                                 "stats": {"qubits": qubits, "circuits": 1}, "results": results,
                                 "execution_duration_ms": 12}
        return _json({"id": job_id, "status": "submitted", "request": 1700000000})
