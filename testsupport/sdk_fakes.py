"""Fakes shaped like the services real SDKs talk to, so the SDKs themselves run against them
unchanged: the D-Wave SAPI (solvers, problems, qp answers), Amazon Braket's JSON API, and
LunaSolve. Each checks the real credential first, like the provider would."""

from __future__ import annotations

import base64
import datetime
import json
import math
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Callable

from testsupport.fakes import AwsFake, BadCoding, Reply, Seen, decoded_body, json_reply

SAPI_SOLVER = "Advantage_fake4.1"


def session_sapi(env: dict[str, str]) -> str:
    """A session's SAPI base URL for D-Wave's default host: a session gives the SDK its Metadata
    API (DWAVE_METADATA_API_ENDPOINT, .../metadata/v1/), and serves SAPI's /sapi/ beside it."""
    return env["DWAVE_METADATA_API_ENDPOINT"].removesuffix("metadata/v1/") + "sapi/"


def _sapi(doc: object, media: str, status: int = 200) -> Reply:
    # dwave-cloud-client checks the media type and its version on every answer.
    return Reply(status, json.dumps(doc).encode(), [("Content-Type", f"application/vnd.dwave.sapi.{media}+json; version=3.0.0")])


# What D-Wave's Metadata API (GET https://cloud.dwavesys.com/metadata/v1/regions/) lists: each
# region's code, name and SAPI endpoint on its own official host (dwave-cloud-client 0.14.8,
# regions.py get_regions docstring).
SAPI_REGIONS = (("na-west-1", "North America (West)"), ("eu-central-1", "Europe"),
                ("na-east-1", "North America (East)"))


class DWaveSapi:
    """SAPI 3: one 4-qubit clique QPU (`solver_name`); every problem is solved at once (all
    spins down). `GET /sapi/problems/ID/answer/` answers in binary-ref form, as hybrid solvers
    do: an absolute URL on this server (`base`) where the answer's bytes are. Also the Metadata
    API's region list, with the official regional endpoints, as the real one answers."""

    ANSWER_DATA = b"binary answer data"

    def __init__(self, token: Callable[[], str], base: Callable[[], str], solver_name: str = SAPI_SOLVER) -> None:
        self.token = token
        self.base = base
        self.solver_name = solver_name
        self.problems: list[dict] = []
        self.uploads: list[str | None] = []  # each problem upload's Content-Encoding, as it arrived

    def solver(self) -> dict:
        edges = [[a, b] for a in range(4) for b in range(a + 1, 4)]
        return {"identity": {"name": self.solver_name}, "status": "ONLINE", "description": "a fake QPU", "avg_load": 0.1,
                "properties": {"num_qubits": 4, "qubits": [0, 1, 2, 3], "couplers": edges, "h_range": [-2, 2],
                               "j_range": [-1, 1], "supported_problem_types": ["ising", "qubo"],
                               "parameters": {"num_reads": "Number of samples"}, "topology": {"type": "chimera",
                                                                                               "shape": [1, 1, 4]},
                               "category": "qpu", "tags": [], "problem_run_duration_range": [0, 1000000]}}

    def __call__(self, seen: Seen) -> Reply:
        path = urllib.parse.urlsplit(seen.path).path
        if seen.method == "GET" and path == "/metadata/v1/regions/":  # public: no token needed
            regions = [{"code": code, "name": name, "endpoint": f"https://{code}.cloud.dwavesys.com/sapi/v2/"}
                       for code, name in SAPI_REGIONS]
            return Reply(200, json.dumps(regions).encode(),
                         [("Content-Type", "application/vnd.dwave.metadata.regions+json; version=1.0.0")])
        if seen.header("X-Auth-Token") != self.token():
            return json_reply({"error_code": 401, "error_msg": "Invalid token or access denied"}, 401)
        sapi = path.replace("/sapi/v2/", "/sapi/", 1)  # a regional endpoint's (/sapi/v2/) or the default one's
        if seen.method == "GET" and sapi == "/sapi/solvers/remote/":
            return _sapi([self.solver()], "solver-definition-list")
        if seen.method == "GET" and sapi == f"/sapi/solvers/remote/{self.solver_name}/":
            return _sapi(self.solver(), "solver-definition")
        if seen.method == "POST" and sapi == "/sapi/problems/":
            self.uploads.append(seen.header("Content-Encoding"))
            try:
                body = decoded_body(seen)  # SAPI takes deflate (what the SDK sends) and gzip
            except BadCoding as exc:
                return json_reply({"error_code": exc.status, "error_msg": str(exc)}, exc.status)
            return _sapi([self._solve(p) for p in json.loads(body)], "problems")
        if seen.method == "GET" and sapi.startswith("/sapi/problems/") and sapi.endswith("/answer/"):
            return _sapi({"answer": {"format": "binary-ref", "auth_method": "sapi-token",
                                     "url": f"{self.base()}{path}data/"}}, "problem-answer")
        if seen.method == "GET" and sapi.startswith("/sapi/problems/") and sapi.endswith("/answer/data/"):
            return Reply(200, self.ANSWER_DATA, [("Content-Type", "application/octet-stream")])
        return json_reply({"error_code": 404, "error_msg": f"no such resource {path}"}, 404)

    def _solve(self, problem: dict) -> dict:
        self.problems.append(problem)
        reads = int(problem.get("params", {}).get("num_reads", 1))
        lin = struct.unpack("<4d", base64.b64decode(problem["data"]["lin"]))
        # Every spin -1: E = sum(h_i * -1) over the active qubits (NaN marks the others); the
        # tests' problems have no couplers.
        energy = sum(-h for h in lin if not math.isnan(h))
        now = datetime.datetime.now(datetime.UTC).isoformat()
        b64 = lambda raw: base64.b64encode(raw).decode()
        answer = {"format": "qp", "num_variables": 4, "active_variables": b64(struct.pack("<4i", 0, 1, 2, 3)),
                  "energies": b64(struct.pack("<d", energy)), "solutions": b64(bytes([0])),
                  "num_occurrences": b64(struct.pack("<i", reads)), "timing": {}}
        return {"id": str(uuid.uuid4()), "status": "COMPLETED", "type": problem["type"], "solver": self.solver_name,
                "submitted_on": now, "solved_on": now, "answer": answer}


class BraketApi:
    """Amazon Braket's REST API (restJson1), after AwsFake checked the SigV4 signature with the
    real key: devices, quantum tasks by ARN."""

    def __init__(self, signature: AwsFake) -> None:
        self.signature = signature
        self.tasks: dict[str, dict] = {}
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        checked = self.signature(seen)
        if checked.status != 200:
            return checked
        path = urllib.parse.unquote(urllib.parse.urlsplit(seen.path).path)
        if seen.method == "POST" and path == "/devices":
            return json_reply({"devices": [self._device()]})
        if seen.method == "GET" and path.startswith("/device/"):
            arn = path[len("/device/"):]
            return json_reply(self._device()) if arn == self._device()["deviceArn"] else self._missing(arn)
        if seen.method == "POST" and path == "/quantum-task":
            doc = json.loads(seen.body)
            arn = f"arn:aws:braket:us-east-1:123456789012:quantum-task/{uuid.uuid4()}"
            with self.lock:
                self.tasks[arn] = {"quantumTaskArn": arn, "status": "QUEUED", "deviceArn": doc["deviceArn"],
                                   "shots": doc["shots"], "outputS3Bucket": doc["outputS3Bucket"],
                                   "outputS3Directory": doc["outputS3KeyPrefix"],
                                   "createdAt": datetime.datetime.now(datetime.UTC).isoformat()}
            return json_reply({"quantumTaskArn": arn}, 201)
        if path.startswith("/quantum-task/"):
            arn = path[len("/quantum-task/"):].removesuffix("/cancel")
            task = self.tasks.get(arn)
            if task is None:
                return self._missing(arn)
            if seen.method == "PUT" and path.endswith("/cancel"):
                task["status"] = "CANCELLING"
                return json_reply({"quantumTaskArn": arn, "cancellationStatus": "CANCELLING"})
            return json_reply(task)
        return json_reply({"message": f"no route {seen.method} {path}"}, 404)

    @staticmethod
    def _device() -> dict:
        return {"deviceArn": "arn:aws:braket:::device/quantum-simulator/amazon/sv1", "deviceName": "SV1",
                "providerName": "Amazon Braket", "deviceType": "SIMULATOR", "deviceStatus": "ONLINE",
                "deviceCapabilities": "{}"}

    @staticmethod
    def _missing(arn: str) -> Reply:
        return Reply(404, json.dumps({"message": f"{arn} not found"}).encode(),
                     [("Content-Type", "application/json"), ("x-amzn-ErrorType", "ResourceNotFoundException")])


class LunaPlatform:
    """LunaQ's REST API as luna-quantum 1.x calls it: the user behind the key (every client
    checks it when made), circuits submitted with their qpu_tokens, and their results."""

    def __init__(self, api_key: Callable[[], str]) -> None:
        self.api_key = api_key
        self.circuits: list[dict] = []

    def __call__(self, seen: Seen) -> Reply:
        if seen.header("Luna-API-Key") != self.api_key():
            return json_reply({"detail": "Invalid API key"}, 401)
        path = urllib.parse.urlsplit(seen.path).path
        if seen.method == "GET" and path == "/luna-q/api/v1/users/me":
            return json_reply({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"})
        if seen.method == "POST" and path == "/luna-q/api/v1/circuits":
            self.circuits.append(json.loads(seen.body))
            return json_reply(f"circuit-{len(self.circuits)}", 201)
        if seen.method == "GET" and path.startswith("/luna-q/api/v1/circuits/circuit-"):
            return json_reply({"status": "DONE", "result": {"counts": {"00": 512, "11": 512}}})
        return json_reply({"detail": f"no route {seen.method} {path}"}, 404)
