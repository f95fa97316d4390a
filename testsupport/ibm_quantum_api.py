"""Loopback fake of the Quantum API (quantum.cloud.ibm.com/api/v1) as qiskit-ibm-runtime 0.51
calls it to transpile for a backend and run SamplerV2 on it in job mode:

  GET  /backends[?include_mocks=True]          list (service.backends(), service.backend(name))
  GET  /backends/<name>/configuration          once per backend (QasmBackendConfiguration)
  GET  /backends/<name>/properties             backend.target (calibration data)
  GET  /backends/<name>/status                 before each job
  GET  /instances/usage                        before each job (usage-limit warning)
  POST /jobs                                   program_id, backend, params (RuntimeEncoder JSON)
  GET  /jobs/<id>                              polled: Queued on the first look, Completed after
  GET  /jobs/<id>/results                      a PrimitiveResult in RuntimeEncoder's JSON

The submitted pubs are decoded with the SDK's own RuntimeDecoder and the answer made with its
RuntimeEncoder from real qiskit objects, so both shapes are the SDK's, not guessed. It does not
simulate: each classical register reads all zeros for half the shots and all ones for the rest
(a Bell pair's counts). Auth (bearer, Service-CRN) is IbmCloud's, checked before this is called.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import threading

from qiskit.primitives import BitArray, DataBin, PrimitiveResult, SamplerPubResult
from qiskit_ibm_runtime import RuntimeDecoder, RuntimeEncoder
from qiskit_ibm_runtime.execution_span import DoubleSliceSpan, ExecutionSpans

from testsupport.fakes import Reply, Seen, json_reply

BACKENDS = ("ibm_fake_a", "ibm_fake_b")
BASIS_GATES = ("cz", "rz", "sx", "x")
COUPLING = [[0, 1], [1, 0]]
CALIBRATED = "2024-01-01T00:00:00Z"
PREFIX = "/api/v1"


def error(status: int, code: str, message: str) -> Reply:
    # The shape the Quantum API uses; the SDK reads errors from a JSON body when there is one.
    return json_reply({"errors": [{"code": code, "message": message}], "status_code": status}, status)


@dataclasses.dataclass
class Job:
    backend: str
    payload: dict  # the POST body as the SDK's RuntimeDecoder reads it
    result: PrimitiveResult
    looks: int = 0  # status polls so far

    @property
    def status(self) -> str:
        return "Queued" if self.looks <= 1 else "Completed"


class QuantumApi:
    """The backend and job routes; `jobs` holds every job submitted, by id."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def __call__(self, seen: Seen, path: str) -> Reply:
        if not path.startswith(PREFIX + "/"):
            return error(404, "not_found", path)
        parts = path.removeprefix(PREFIX + "/").split("/")
        if seen.method == "GET" and parts == ["backends"]:
            return json_reply({"devices": [{"name": n, "status": {"name": "online"}, "qubits": 2,
                                            "is_simulator": False} for n in BACKENDS]})
        if seen.method == "GET" and len(parts) == 3 and parts[0] == "backends" and parts[1] in BACKENDS:
            about = {"configuration": _configuration, "properties": _properties, "status": _status}.get(parts[2])
            return json_reply(about(parts[1])) if about else error(404, "not_found", path)
        if seen.method == "GET" and parts == ["instances", "usage"]:
            return json_reply({"usage_consumed_seconds": 0, "usage_limit_seconds": 600, "usage_limit_reached": False})
        if seen.method == "POST" and parts == ["jobs"]:
            return self._submit(seen)
        if seen.method == "GET" and parts[0] == "jobs" and len(parts) in (2, 3):
            with self._lock:
                job = self.jobs.get(parts[1])
            if job is None:
                return error(404, "not_found", f"job {parts[1]} not found")
            if len(parts) == 2:
                return self._look(parts[1], job)
            if parts[2] == "results" and job.status == "Completed":
                return Reply(200, json.dumps(job.result, cls=RuntimeEncoder).encode())
        return error(404, "not_found", path)

    def _submit(self, seen: Seen) -> Reply:
        media = (seen.header("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/json":
            return error(415, "unsupported_media_type", f"Content-Type {media or 'none'} is not application/json")
        try:
            payload = json.loads(seen.body, cls=RuntimeDecoder)
            program, backend, params = payload["program_id"], payload["backend"], payload["params"]
            pubs = [(circuit, shots) for circuit, _values, shots in params["pubs"]]
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, "bad_request", f"unreadable job: {exc!r}")
        if program != "sampler" or params.get("version") != 2:
            return error(400, "bad_request", f"this fake runs SamplerV2 only, not {program!r}")
        if backend not in BACKENDS:
            return error(404, "not_found", f"backend {backend!r} not found")
        for circuit, _ in pubs:
            # The service takes only circuits already in the backend's ISA.
            foreign = {i.operation.name for i in circuit.data} - {*BASIS_GATES, "measure", "barrier", "delay"}
            if foreign or circuit.num_qubits > 2:
                return error(400, "bad_request", f"circuit is not ISA for {backend}: {sorted(foreign)}")
        job_id = secrets.token_hex(10)  # IBM's job ids: 20 lowercase alphanumerics
        with self._lock:
            self.jobs[job_id] = Job(backend, payload, _result(pubs))
        return json_reply({"id": job_id, "backend": backend})

    def _look(self, job_id: str, job: Job) -> Reply:
        with self._lock:
            job.looks += 1
        state = {"status": job.status}
        return json_reply({"id": job_id, "backend": job.backend, "state": state, "status": job.status,
                           "program": {"id": "sampler"}, "created": CALIBRATED, "private": False, "tags": [],
                           "session_id": None, "usage": {"quantum_seconds": 1, "seconds": 1}})


def _result(pubs: list) -> PrimitiveResult:
    now = datetime.datetime.now(datetime.UTC)
    results, slices = [], {}
    for index, (circuit, shots) in enumerate(pubs):
        registers = {creg.name: BitArray.from_counts({"0" * creg.size: shots // 2, "1" * creg.size: shots - shots // 2},
                                                     num_bits=creg.size) for creg in circuit.cregs}
        results.append(SamplerPubResult(DataBin(**registers, shape=()), metadata={"circuit_metadata": {}}))
        slices[index] = ((shots,), slice(0, 1), slice(0, shots))  # (pub shape..., shots)
    spans = ExecutionSpans([DoubleSliceSpan(now, now, slices)])
    return PrimitiveResult(results, metadata={"execution": {"execution_spans": spans}, "version": 2})


def _configuration(name: str) -> dict:
    # The fields QasmBackendConfiguration requires, plus online_date (the decoder parses it) and
    # dt (the transpiler reads target.dt).
    return {"backend_name": name, "backend_version": "1.0.0", "n_qubits": 2, "basis_gates": list(BASIS_GATES),
            "gates": [{"name": "cz", "parameters": [], "qasm_def": "", "coupling_map": COUPLING}],
            "supported_instructions": [*BASIS_GATES, "measure", "delay"],
            "local": False, "simulator": False, "conditional": False, "open_pulse": False, "memory": True,
            "coupling_map": COUPLING, "max_shots": 100000, "dt": 5e-10, "online_date": CALIBRATED}


def _properties(name: str) -> dict:
    # BackendProperties as the API sends it: per qubit T1/T2/frequency/readout, per gate error and length.
    def nduv(field: str, unit: str, value: float) -> dict:
        return {"date": CALIBRATED, "name": field, "unit": unit, "value": value}

    qubits = [[nduv("T1", "us", 200.0), nduv("T2", "us", 150.0), nduv("frequency", "GHz", 4.9),
               nduv("readout_error", "", 0.01), nduv("readout_length", "ns", 1000.0)] for _ in range(2)]
    gates = [{"gate": g, "name": f"{g}{q}", "qubits": [q], "parameters": [nduv("gate_error", "", 0.0 if g == "rz" else 2e-4),
                                                                         nduv("gate_length", "ns", 0.0 if g == "rz" else 36.0)]}
             for g in ("rz", "sx", "x") for q in (0, 1)]
    gates += [{"gate": "cz", "name": f"cz{a}_{b}", "qubits": [a, b], "parameters": [nduv("gate_error", "", 3e-3),
                                                                                 nduv("gate_length", "ns", 68.0)]}
              for a, b in COUPLING]
    gates += [{"gate": "measure", "name": f"measure{q}", "qubits": [q],
               "parameters": [nduv("gate_error", "", 0.01), nduv("gate_length", "ns", 1000.0)]} for q in (0, 1)]
    return {"backend_name": name, "backend_version": "1.0.0", "last_update_date": CALIBRATED, "qubits": qubits,
            "gates": gates, "general": []}


def _status(name: str) -> dict:
    return {"state": True, "status": "active", "message": "available", "length_queue": 0, "backend_version": "1.0.0"}
