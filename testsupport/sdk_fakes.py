"""Fakes shaped like the services real SDKs talk to, so the SDKs themselves run against them
unchanged: the D-Wave SAPI (solvers, problems, qp answers), Amazon Braket's JSON API and its
results bucket in S3, and LunaSolve. Each checks the real credential first, like the provider would."""

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


RESULTS_BUCKET = "amazon-braket-results"  # where the tests' tasks put their results
SV1_ARN = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
# SV1's capabilities as Braket describes them (trimmed): amazon-braket-sdk parses them with its
# schemas before it runs anything, and checks the program's gates against them.
SV1_CAPABILITIES = {
    "braketSchemaHeader": {"name": "braket.device_schema.simulators.gate_model_simulator_device_capabilities",
                           "version": "1"},
    "service": {"braketSchemaHeader": {"name": "braket.device_schema.device_service_properties", "version": "1"},
                "executionWindows": [{"executionDay": "Everyday", "windowStartHour": "00:00",
                                      "windowEndHour": "23:59:59"}],
                "shotsRange": [0, 100000], "deviceLocation": "us-east-1", "updatedAt": "2024-01-01T00:00:00"},
    "action": {"braket.ir.openqasm.program": {
        "actionType": "braket.ir.openqasm.program", "version": ["1"],
        "supportedOperations": ["h", "cnot", "x", "y", "z", "rx", "ry", "rz", "cz", "swap"],
        "supportedResultTypes": [{"name": "Probability", "minShots": 0, "maxShots": 100000}]}},
    "paradigm": {"braketSchemaHeader": {"name": "braket.device_schema.simulators.gate_model_simulator_paradigm_properties",
                                        "version": "1"}, "qubitCount": 34},
    "deviceParameters": {},
}


def _s3_error(status: int, code: str, message: str) -> Reply:
    body = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return Reply(status, body.encode(), [("Content-Type", "application/xml")])


class S3Bucket:
    """One S3 bucket, reached virtual-hosted (the path is the key), serving GetObject and
    HeadObject as S3 does; what is in it Braket wrote (BraketApi)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []

    def __call__(self, seen: Seen) -> Reply:
        split = urllib.parse.urlsplit(seen.path)
        key = urllib.parse.unquote(split.path[1:])
        if seen.method not in ("GET", "HEAD") or split.query:
            return _s3_error(501, "NotImplemented", "this fake serves GetObject and HeadObject only")
        body = self.objects.get(key)
        if body is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        self.reads.append(key)
        return Reply(200, body if seen.method == "GET" else b"", [("Content-Type", "application/json")])


class BraketApi:
    """Amazon Braket's REST API (restJson1), after AwsFake checked the SigV4 signature with the
    real key: devices, quantum tasks by ARN. With a `bucket`, S3 calls (by the signature's
    scope) go to it, and a task is done when first looked up, its result (the Bell pair's
    measurements) written to `outputS3Directory/results.json` as Braket writes it."""

    def __init__(self, signature: AwsFake, bucket: S3Bucket | None = None) -> None:
        self.signature = signature
        self.bucket = bucket
        self.tasks: dict[str, dict] = {}
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        checked = self.signature(seen)
        if checked.status != 200:
            return checked
        if json.loads(checked.body)["service"] == "s3":
            return self.bucket(seen) if self.bucket is not None else _s3_error(403, "AccessDenied", "no bucket here")
        path = urllib.parse.unquote(urllib.parse.urlsplit(seen.path).path)
        if seen.method == "POST" and path == "/devices":
            return json_reply({"devices": [self._device()]})
        if seen.method == "GET" and path.startswith("/device/"):
            arn = path[len("/device/"):]
            return json_reply(self._device()) if arn == self._device()["deviceArn"] else self._missing(arn)
        if seen.method == "POST" and path == "/quantum-task":
            doc = json.loads(seen.body)
            task_id = str(uuid.uuid4())
            arn = f"arn:aws:braket:us-east-1:123456789012:quantum-task/{task_id}"
            with self.lock:
                # Braket's own directory for the task: the prefix asked for, then the task's id.
                self.tasks[arn] = {"quantumTaskArn": arn, "status": "QUEUED", "deviceArn": doc["deviceArn"],
                                   "shots": doc["shots"], "outputS3Bucket": doc["outputS3Bucket"],
                                   "outputS3Directory": f"{doc['outputS3KeyPrefix']}/{task_id}",
                                   "createdAt": datetime.datetime.now(datetime.UTC).isoformat(),
                                   "action": doc["action"]}
            return json_reply({"quantumTaskArn": arn}, 201)
        if path.startswith("/quantum-task/"):
            arn = path[len("/quantum-task/"):].removesuffix("/cancel")
            task = self.tasks.get(arn)
            if task is None:
                return self._missing(arn)
            if seen.method == "PUT" and path.endswith("/cancel"):
                task["status"] = "CANCELLING"
                return json_reply({"quantumTaskArn": arn, "cancellationStatus": "CANCELLING"})
            if self.bucket is not None and task["status"] == "QUEUED":
                self._complete(task)
            return json_reply({k: v for k, v in task.items() if k != "action"})
        return json_reply({"message": f"no route {seen.method} {path}"}, 404)

    def _complete(self, task: dict) -> None:
        task["status"] = "COMPLETED"
        shots = task["shots"]
        result = {"braketSchemaHeader": {"name": "braket.task_result.gate_model_task_result", "version": "1"},
                  "measurements": [[0, 0]] * (shots // 2) + [[1, 1]] * (shots - shots // 2), "measuredQubits": [0, 1],
                  "taskMetadata": {"braketSchemaHeader": {"name": "braket.task_result.task_metadata", "version": "1"},
                                   "id": task["quantumTaskArn"], "shots": shots, "deviceId": task["deviceArn"]},
                  "additionalMetadata": {"action": json.loads(task["action"])}}
        if task["outputS3Bucket"] == self.bucket.name:
            self.bucket.objects[f"{task['outputS3Directory']}/results.json"] = json.dumps(result).encode()

    @staticmethod
    def _device() -> dict:
        return {"deviceArn": SV1_ARN, "deviceName": "SV1", "providerName": "Amazon Braket", "deviceType": "SIMULATOR",
                "deviceStatus": "ONLINE", "deviceCapabilities": json.dumps(SV1_CAPABILITIES)}

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
