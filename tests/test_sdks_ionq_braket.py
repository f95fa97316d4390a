"""qiskit-ionq, cirq-ionq and amazon-braket-sdk, the real packages, running their documented
scripts unchanged under `qpu-broker exec` through to a job's or task's result, with an empty
HOME; the fakes check the real credential, and the scripts' environment holds only placeholders."""

from __future__ import annotations

import re

import pytest
from test_sdks_under_exec import _no_secret, _run

from testsupport.ionq_fake import IonQApi
from testsupport.sdk_fakes import RESULTS_BUCKET, SV1_ARN, BraketApi, S3Bucket

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


# amazon-braket-sdk's README (1.127): a device by ARN, a circuit run with an S3 folder, its result.
BRAKET_SDK_SCRIPT = """
from braket.aws import AwsDevice
from braket.circuits import Circuit

device = AwsDevice("arn:aws:braket:::device/quantum-simulator/amazon/sv1")
bell = Circuit().h(0).cnot(0, 1)
task = device.run(bell, s3_destination_folder=("amazon-braket-results", "tasks"), shots=100)
print("counts:", dict(task.result().measurement_counts))
"""


def test_amazon_braket_sdk_runs_a_task_and_reads_its_result_from_s3(sdk_rig):
    d, hw, canary, env = sdk_rig
    bucket = S3Bucket(RESULTS_BUCKET)
    hw.servers["aws"].handler = BraketApi(hw.aws, bucket)
    r, out, child_env = _run(d, {**env, "AWS_DEFAULT_REGION": "us-east-1"}, BRAKET_SDK_SCRIPT, "aws=my-aws")
    assert r.returncode == 0, r.stderr
    assert out == ["counts: {'00': 50, '11': 50}"], (out, r.stderr)
    # Read from the directory Braket named, signed with the real key (the fake judged it with botocore).
    [read] = bucket.reads
    assert re.fullmatch(r"tasks/[0-9a-f-]{36}/results\.json", read) and hw.aws.mismatches == []
    assert child_env["AWS_ENDPOINT_URL_S3"] == child_env["AWS_ENDPOINT_URL"] == child_env["BRAKET_ENDPOINT"]
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_a_session_reads_from_s3_only_the_results_of_tasks_it_looked_up(sdk_rig):
    import boto3
    from botocore.exceptions import ClientError

    d, hw, canary, _ = sdk_rig
    bucket = S3Bucket(RESULTS_BUCKET)
    hw.servers["aws"].handler = BraketApi(hw.aws, bucket)
    bucket.objects["private/secrets.txt"] = b"not for a session"
    with d.broker().hold_session() as session:
        aws = boto3.Session(aws_access_key_id=session.env["AWS_ACCESS_KEY_ID"], region_name="us-east-1",
                            aws_secret_access_key=session.env["AWS_SECRET_ACCESS_KEY"])
        braket = aws.client("braket", endpoint_url=session.env["AWS_ENDPOINT_URL_BRAKET"])
        s3 = aws.client("s3", endpoint_url=session.env["AWS_ENDPOINT_URL_S3"])
        sts = aws.client("sts", endpoint_url=session.env["AWS_ENDPOINT_URL"])
        arn = braket.create_quantum_task(action='{"braketSchemaHeader": {"name": "braket.ir.openqasm.program", '
                                                '"version": "1"}, "source": "OPENQASM 3;"}', deviceArn=SV1_ARN,
                                         shots=2, outputS3Bucket=RESULTS_BUCKET,
                                         outputS3KeyPrefix="tasks")["quantumTaskArn"]
        results = f"tasks/{arn.rsplit('/', 1)[1]}/results.json"

        def refused(call, *args, **kwargs) -> str:
            with pytest.raises(ClientError) as denied:
                call(*args, **kwargs)
            assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            return denied.value.response["Error"].get("Message", "")

        # Named in the request only, not yet in an answer of Braket's: not readable.
        assert "not in the results directory of a Braket task this session has looked up" in refused(
            s3.get_object, Bucket=RESULTS_BUCKET, Key=results)
        assert braket.get_quantum_task(quantumTaskArn=arn)["status"] == "COMPLETED"
        assert s3.get_object(Bucket=RESULTS_BUCKET, Key=results)["Body"].read().startswith(b"{")
        for message in (refused(s3.get_object, Bucket=RESULTS_BUCKET, Key="private/secrets.txt"),
                        refused(s3.get_object, Bucket="someone-elses", Key=results),
                        refused(s3.get_object, Bucket=RESULTS_BUCKET, Key=results.replace("/results", "/../x")),
                        refused(s3.put_object, Bucket=RESULTS_BUCKET, Key=results, Body=b"x"),
                        refused(s3.list_objects_v2, Bucket=RESULTS_BUCKET, Prefix="tasks/"),
                        refused(sts.get_caller_identity)):
            assert message.startswith("qpu-broker: ") and "\n" not in message and "outside `qpu-broker exec`" in message
        assert bucket.reads == [results] and hw.aws.mismatches == []  # nothing refused went on
        assert canary not in d.log()
