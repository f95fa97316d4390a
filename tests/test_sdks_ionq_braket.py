"""qiskit-ionq, cirq-ionq and amazon-braket-sdk, the real packages, running their documented
scripts unchanged under `qpu-broker exec` through to a job's or task's result, with an empty
HOME; the fakes check the real credential, and the scripts' environment holds only placeholders."""

from __future__ import annotations

from test_sdks_under_exec import _no_secret, _run

from testsupport.ionq_fake import IonQApi

# qiskit-ionq's README (1.1): the provider from the environment, the cloud simulator, counts.
QISKIT_IONQ_SCRIPT = """
from qiskit import QuantumCircuit
from qiskit_ionq import IonQProvider

backend = IonQProvider().get_backend("simulator")
qc = QuantumCircuit(2, 2, name="bell")
qc.h(0)
qc.cx(0, 1)
qc.measure([0, 1], [0, 1])
job = backend.run(qc, shots=1000)
print("probabilities:", job.get_probabilities())
"""

# cirq-ionq's docs (1.7): a Service from the environment, a job, its results.
CIRQ_IONQ_SCRIPT = """
import cirq
import cirq_ionq as ionq

service = ionq.Service(default_target="simulator")
q0, q1 = cirq.LineQubit.range(2)
circuit = cirq.Circuit(cirq.H(q0), cirq.CNOT(q0, q1), cirq.measure(q0, q1, key="x"))
job = service.create_job(circuit=circuit, repetitions=100)
print("status:", job.status(), "probabilities:", job.results().probabilities())
"""


def test_qiskit_ionq_submits_a_job_and_reads_its_result(sdk_rig):
    d, hw, canary, env = sdk_rig
    ionq = IonQApi(lambda: hw.secrets["ionq"])
    hw.servers["ionq"].handler = ionq
    r, out, child_env = _run(d, env, QISKIT_IONQ_SCRIPT, "ionq=my-ionq")
    assert r.returncode == 0, r.stderr
    assert out == ["probabilities: {'00': 0.5, '11': 0.5}"], (out, r.stderr)
    [job] = ionq.submitted  # the real key carried it, as JSON on the v0.4 path the SDK builds
    assert job["backend"] == "simulator" and {g["gate"] for g in job["input"]["circuit"]} == {"h", "x"}
    assert hw.servers["ionq"].seen[-1].path.startswith("/v0.4/jobs/")
    assert child_env["IONQ_API_KEY"].startswith("qbs_") and child_env["QISKIT_IONQ_API_TOKEN"] == child_env["IONQ_API_KEY"]
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_cirq_ionq_submits_a_job_and_reads_its_result(sdk_rig):
    d, hw, canary, env = sdk_rig
    ionq = IonQApi(lambda: hw.secrets["ionq"])
    hw.servers["ionq"].handler = ionq
    r, out, child_env = _run(d, env, CIRQ_IONQ_SCRIPT, "ionq=my-ionq")
    assert r.returncode == 0, r.stderr
    assert out == ["status: completed probabilities: {0: 0.5, 3: 0.5}"], (out, r.stderr)
    [job] = ionq.submitted
    assert job["backend"] == "simulator" and job["input"]["qubits"] == 2
    assert child_env["CIRQ_IONQ_API_KEY"].startswith("qbs_")
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())
