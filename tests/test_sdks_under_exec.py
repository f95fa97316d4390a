"""Real SDK packages, running scripts written as their own docs show, unchanged, under
`qpu-broker exec`, with an empty HOME and no SDK config. The fakes check that the real
credential arrived; the scripts' environment holds only session placeholders.
Real daemon, real CLI, real SDKs, fakes on loopback HTTPS."""

from __future__ import annotations

import gzip
import json
import pathlib
import sys
import urllib.error
import urllib.request

import pytest
from luna_quantum.client.schemas.qpu_token.token_provider import RestAPITokenProvider

from testsupport.fakes import FakeServer, Reply
from testsupport.ibm_fake import IbmCloud
from testsupport.qctrl_fake import QCtrlApi
from testsupport.sdk_fakes import (
    SAPI_SOLVER,
    BraketApi,
    DWaveSapi,
    LunaPlatform,
    session_sapi,
)

# What the script reports about itself, appended to each docs example: its environment.
REPORT = "\nimport json as _j, os as _o\nprint('ENV=' + _j.dumps(dict(_o.environ)))\n"

# dwave-cloud-client's README example (0.14): from_config, a QPU solver, an Ising sample.
DWAVE_SCRIPT = """
from dwave.cloud import Client

with Client.from_config() as client:
    print("solvers:", [solver.name for solver in client.get_solvers()])
    solver = client.get_solver(qpu=True)
    computation = solver.sample_ising({0: -1, 1: 1}, {}, num_reads=10)
    print("samples:", computation.samples, "energies:", computation.energies,
          "occurrences:", computation.num_occurrences)
"""

# luna-quantum 1.x's documented way to run a circuit: LunaQ() from the environment, the QPU
# token from LUNA_IBM_TOKEN (the SDK copies it into the request's qpu_tokens itself).
LUNA_SCRIPT = """
from luna_quantum import LunaQ
from luna_quantum.client.schemas.enums.circuit import CircuitProviderEnum

lq = LunaQ()
circuit = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; h q[0]; cx q[0], q[1];'
job = lq.circuit.create(circuit=circuit, provider=CircuitProviderEnum.IBM, params={"backend": "ibm_fake"})
result = lq.circuit.get(job)
print("status:", result.status.value, "result:", result.result)
"""

# boto3's Braket client as the AWS docs use it: several operations, JSON bodies, ARNs in paths.
BRAKET_SCRIPT = """
import json
import boto3

braket = boto3.client("braket")
devices = braket.search_devices(filters=[])["devices"]
print("devices:", [d["deviceName"] for d in devices])
device = braket.get_device(deviceArn="arn:aws:braket:::device/quantum-simulator/amazon/sv1")
program = {"braketSchemaHeader": {"name": "braket.ir.openqasm.program", "version": "1"},
           "source": "OPENQASM 3; qubit[2] q; h q[0]; cnot q[0], q[1];"}
task = braket.create_quantum_task(action=json.dumps(program), deviceArn=device["deviceArn"], shots=100,
                                  outputS3Bucket="amazon-braket-results", outputS3KeyPrefix="tasks")
print("status:", braket.get_quantum_task(quantumTaskArn=task["quantumTaskArn"])["status"])
print("cancel:", braket.cancel_quantum_task(quantumTaskArn=task["quantumTaskArn"],
                                            clientToken="c1")["cancellationStatus"])
try:
    braket.get_device(deviceArn="arn:aws:braket:::device/qpu/nobody/none")
except braket.exceptions.ResourceNotFoundException as exc:
    print("missing:", exc.response["Error"]["Code"])
"""

# qiskit-ibm-runtime's own quick start (0.51), the account from the environment: a Bell
# circuit transpiled for the backend, run by SamplerV2 in job mode, its counts read back.
IBM_SCRIPT = """
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

service = QiskitRuntimeService()
print("backends:", [backend.name for backend in service.backends()])
backend = service.backend("ibm_fake_a")
circuit = QuantumCircuit(2)
circuit.h(0)
circuit.cx(0, 1)
circuit.measure_all()
isa_circuit = generate_preset_pass_manager(backend=backend, optimization_level=1).run(circuit)
job = SamplerV2(mode=backend).run([isa_circuit], shots=1024)
print("job:", job.job_id())
print("counts:", job.result()[0].data.meas.get_counts())
"""
# Q-CTRL as fire-opal 12.4 and boulder-opal 6.1 drive qctrl-client 17.3 (fireopal/config.py's
# get_default_router, qctrlworkflowclient/router/api.py's calls): the key from QCTRL_API_KEY traded
# at QCTRL_API_URL, the organization from the profile, a workflow started and its action polled.
# (fire-opal itself pins packaging<26 through qctrl-workflow-client: docs/sdks/qctrl.md.)
QCTRL_SCRIPT = """
import json, os
from qctrlclient import ApiKeyAuth, GraphQLClient
from qctrlclient.defaults import get_default_api_url

client = GraphQLClient(get_default_api_url(), auth=ApiKeyAuth(get_default_api_url(), os.environ["QCTRL_API_KEY"]))
profile = client.execute("query { profile { profile { organizations { id slug name products { name active } } } "
                         "errors { fields message } } }")
organization = profile["profile"]["profile"]["organizations"][0]
started = client.execute(
    "mutation ($input: StartCoreWorkflowInput!) { startCoreWorkflow(input: $input) { action { modelId status result "
    "errors { exception traceback } } warnings { message } errors { message fields } } }",
    {"input": {"registry": "FIRE_OPAL", "workflow": "execute",
               "data": json.dumps({"circuits": ["OPENQASM 2.0; qreg q[2]; h q[0]; cx q[0], q[1];"], "shot_count": 1024}),
               "clientMetadata": json.dumps({"organization": {k: organization[k] for k in ("id", "slug", "name")}})}})
action = started["startCoreWorkflow"]["action"]
print("started:", action["status"])
while action["status"] not in ("SUCCESS", "FAILURE", "REVOKED"):
    action = client.execute("query($modelId: String!) { action(modelId: $modelId) { action { status errors "
                            "{ exception traceback } result } errors { message } } }",
                            {"modelId": action["modelId"]})["action"]["action"]
print("status:", action["status"], "result:", json.loads(action["result"]))
"""
IBM_INSTANCE = ("crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789abcdef:"
                "11111111-2222-3333-4444-555555555555::")


def _run(d, env: dict[str, str], script: str, *tokens: str):
    args = [a for t in tokens for a in ("--token", t)]
    r = d.cli("exec", *args, "--", sys.executable, "-c", script + REPORT, env=env)
    lines = r.stdout.splitlines()
    child_env = json.loads(next((line[4:] for line in lines if line.startswith("ENV=")), "{}"))
    return r, [line for line in lines if not line.startswith("ENV=")], child_env


def _no_secret(canary: str, child_env: dict, *texts: str) -> None:
    assert child_env, "the script did not run to its end"
    assert canary not in json.dumps(child_env)
    for text in texts:
        assert canary not in text


def test_dwave_cloud_client_lists_solvers_and_samples(sdk_rig):
    d, hw, canary, env = sdk_rig
    sapi = DWaveSapi(lambda: hw.secrets["dwave"], lambda: hw.url("dwave", ""))
    hw.servers["dwave"].handler = sapi
    r, out, child_env = _run(d, env, DWAVE_SCRIPT, "dwave=my-dwave")
    assert r.returncode == 0, r.stderr
    assert out[0] == f"solvers: [{SAPI_SOLVER!r}]"
    assert out[1] == "samples: [[-1, -1, -1, -1]] energies: [0.0] occurrences: [10]", out
    assert len(sapi.problems) == 1 and sapi.problems[0]["params"]["num_reads"] == 10  # the real token carried it
    assert sapi.uploads == ["deflate"]  # the SDK's own compressed upload, as it sent it (SAPI decoded it)
    # Its region's SAPI (the default, na-west-1), found through the Metadata API as without a session.
    paths = [s.path for s in hw.servers["dwave"].seen]
    assert paths[0] == "/metadata/v1/regions/" and "/sapi/v2/problems/" in paths, paths
    assert child_env["DWAVE_API_TOKEN"].startswith("qbs_")
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_dwave_cloud_client_reaches_its_own_regions_sapi_through_the_session(sdk_rig):
    """A region set as the SDK reads it (DWAVE_API_REGION, a dwave.conf `region`) is the region
    whose SAPI gets the problem: the session serves the Metadata API's regional endpoints."""
    from testsupport.hardware import write_config

    d, hw, canary, env = sdk_rig
    regions = {}
    for code in ("na-west-1", "eu-central-1"):
        server = FakeServer(lambda seen: Reply(500, b"unset"), hw.ca)
        server.handler = DWaveSapi(lambda: hw.secrets["dwave"], lambda s=server: s.url(""), f"Advantage_{code}")
        regions[f"{code}.cloud.dwavesys.com"] = server
    try:
        hw.servers["dwave"].handler = DWaveSapi(lambda: hw.secrets["dwave"], lambda: hw.url("dwave", ""))  # metadata
        write_config(d.home, hw, dwave_hosts=regions)
        assert d.cli("reload").returncode == 0
        conf = pathlib.Path(env["XDG_CONFIG_HOME"]) / "dwave" / "dwave.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("[defaults]\nregion = na-west-1\n")  # as `dwave config create` writes it
        for code, extra in (("eu-central-1", {"DWAVE_API_REGION": "eu-central-1"}), ("na-west-1", {})):
            r, out, child_env = _run(d, {**env, **extra}, DWAVE_SCRIPT, "dwave=my-dwave")
            assert r.returncode == 0, r.stderr
            assert out[0] == f"solvers: ['Advantage_{code}']", out
            assert len(regions[f"{code}.cloud.dwavesys.com"].handler.problems) == 1
            _no_secret(canary, child_env, r.stdout, r.stderr)
        assert "DWAVE_API_ENDPOINT" not in child_env  # an endpoint would beat the region in the SDK
    finally:
        for server in regions.values():
            server.close()


def test_a_dwave_session_sends_only_to_official_hosts(sdk_rig):
    d, hw, _, _ = sdk_rig
    with d.broker().hold_session() as session:
        base = session.env["DWAVE_METADATA_API_ENDPOINT"].removesuffix("/metadata/v1/")
        before = len(hw.servers["dwave"].seen)
        for host in ("evil.example", "cloud.dwavesys.com.evil.example", hw.catcher.netloc, "127.0.0.1"):
            request = urllib.request.Request(f"{base}/@{host}/sapi/solvers/remote/",
                                             headers={"X-Auth-Token": session.env["DWAVE_API_TOKEN"]})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403 and "not an official dwave host" in refused.value.read().decode()
        assert len(hw.servers["dwave"].seen) == before and hw.catcher.seen == []


def test_dwave_binary_ref_answers_point_at_the_session(sdk_rig):
    """Hybrid solvers answer with an absolute SAPI URL the SDK fetches with its token: the
    session rewrites it to itself, so the placeholder never goes to the real host."""
    d, hw, _, _ = sdk_rig
    hw.servers["dwave"].handler = DWaveSapi(lambda: hw.secrets["dwave"], lambda: hw.url("dwave", ""))
    with d.broker().hold_session() as session:
        base, key = session_sapi(session.env), session.env["DWAVE_API_TOKEN"]
        request = urllib.request.Request(base + "problems/p1/answer/",
                                         headers={"X-Auth-Token": key, "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as r:
            answer = json.load(r)["answer"]
        assert answer["url"] == base + "problems/p1/answer/data/"  # the session's, not the upstream's
        with urllib.request.urlopen(urllib.request.Request(answer["url"], headers={"X-Auth-Token": key}),
                                    timeout=10) as r:
            assert r.read() == DWaveSapi.ANSWER_DATA
        assert hw.servers["dwave"].seen[-2].header("Accept-Encoding") is None  # asked uncompressed, to rewrite


def test_luna_quantum_runs_a_circuit_with_its_qpu_token_from_the_session(sdk_rig):
    d, hw, canary, env = sdk_rig
    luna = LunaPlatform(lambda: hw.secrets["luna"])
    hw.servers["luna"].handler = luna
    r, out, child_env = _run(d, env, LUNA_SCRIPT, "luna=my-luna", "ibm=my-ibm")
    assert r.returncode == 0, r.stderr
    assert out == ["status: DONE result: {'counts': {'00': 512, '11': 512}}"]
    # The SDK sent its LUNA_IBM_TOKEN placeholder; Luna got the real IBM token, in Luna's wire shape.
    assert child_env["LUNA_IBM_TOKEN"].startswith("qbs_") and child_env["LUNA_API_KEY"].startswith("qbs_")
    sent = luna.circuits[0]["qpu_tokens"]
    assert sent["ibm"] == {"source": "inline", "token": hw.secrets["ibm"]}, sent
    RestAPITokenProvider.model_validate(sent)  # Luna's own model (extra="forbid") takes it
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_a_luna_placeholder_in_another_providers_field_is_refused(sdk_rig):
    d, hw, canary, _ = sdk_rig
    luna = LunaPlatform(lambda: hw.secrets["luna"])
    hw.servers["luna"].handler = luna
    with d.broker().hold_session() as session:
        body = {"circuit": "x", "provider": "ibm", "params": {},
                "qpu_tokens": {"ibm": {"source": "inline", "token": session.env["LUNA_DWAVE_TOKEN"]}}}
        request = urllib.request.Request(session.env["LUNA_BASE_URL"] + "/luna-q/api/v1/circuits",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Luna-API-Key": session.env["LUNA_API_KEY"],
                                                  "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        detail = json.loads(refused.value.read())["detail"]
        assert refused.value.code == 400 and "qpu_tokens.ibm holds the session placeholder of dwave" in detail
        assert luna.circuits == [] and canary not in detail  # the real D-Wave token went nowhere


def test_boto3_braket_calls_are_verified_against_the_placeholder_and_re_signed(sdk_rig):
    d, hw, canary, env = sdk_rig
    braket = BraketApi(hw.aws)
    hw.servers["aws"].handler = braket
    # A user's shell as it may be: a region, and a profile and session token that must not win.
    env = {**env, "AWS_DEFAULT_REGION": "us-east-1", "AWS_PROFILE": "work", "AWS_SESSION_TOKEN": "theirs"}
    r, out, child_env = _run(d, env, BRAKET_SCRIPT, "aws=my-aws")
    assert r.returncode == 0, r.stderr
    assert out == ["devices: ['SV1']", "status: QUEUED", "cancel: CANCELLING", "missing: ResourceNotFoundException"]
    assert hw.aws.mismatches == [] and len(braket.tasks) == 1  # every call arrived signed with the real key
    assert child_env["AWS_ACCESS_KEY_ID"].startswith("QBSA") and child_env["AWS_SECRET_ACCESS_KEY"].startswith("qbs_")
    assert not {"AWS_PROFILE", "AWS_SESSION_TOKEN"} & set(child_env)
    assert child_env["AWS_ENDPOINT_URL_BRAKET"] == child_env["BRAKET_ENDPOINT"]
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_a_sigv4_session_takes_only_a_signature_made_with_the_placeholder_secret(sdk_rig):
    import botocore.session
    from botocore.exceptions import ClientError

    d, hw, canary, _ = sdk_rig
    hw.servers["aws"].handler = BraketApi(hw.aws)
    with d.broker().hold_session() as session:
        before = len(hw.servers["aws"].seen)

        def client(key_id: str, secret: str):
            return botocore.session.get_session().create_client(
                "braket", region_name="us-east-1", endpoint_url=session.env["AWS_ENDPOINT_URL_BRAKET"],
                aws_access_key_id=key_id, aws_secret_access_key=secret)

        key_id, secret = session.env["AWS_ACCESS_KEY_ID"], session.env["AWS_SECRET_ACCESS_KEY"]
        for bad in (client(key_id, secret + "x"), client(key_id, "qbs_" + "A" * 43), client("QBSA" + "0" * 16, secret)):
            with pytest.raises(ClientError) as refused:
                bad.search_devices(filters=[])
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
        # Not signed at all: the key id alone proves nothing.
        request = urllib.request.Request(session.env["AWS_ENDPOINT_URL_BRAKET"] + "/devices", data=b"{}",
                                         headers={"Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/x"})
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(request, timeout=10)
        assert unsigned.value.code == 401
        # A region the SDK made up is no region to re-sign for, even toward a configured endpoint.
        evil = botocore.session.get_session().create_client(
            "braket", region_name="evil-region", endpoint_url=session.env["AWS_ENDPOINT_URL_BRAKET"],
            aws_access_key_id=key_id, aws_secret_access_key=secret)
        with pytest.raises(ClientError) as refused:
            evil.search_devices(filters=[])
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert len(hw.servers["aws"].seen) == before  # nothing refused went on
        good = client(key_id, secret)
        assert good.search_devices(filters=[])["devices"][0]["deviceName"] == "SV1"
        # A body of many reads (a large program): the signature is checked over all of it.
        task = good.create_quantum_task(action="x" * 600_000, deviceArn="arn:aws:braket:::device/quantum-simulator/amazon/sv1",
                                        shots=1, outputS3Bucket="amazon-braket-results", outputS3KeyPrefix="tasks")
        assert task["quantumTaskArn"].startswith("arn:aws:braket:")
        assert canary not in d.log() and secret not in d.log()


def test_qiskit_ibm_runtime_runs_a_sampler_job_through_the_session_proxy(sdk_rig):
    d, hw, canary, env = sdk_rig
    cloud = IbmCloud(lambda: hw.secrets["ibm"], IBM_INSTANCE)
    hw.servers["ibm"].handler = cloud.by_path  # one loopback server for IAM, Search, Catalog and the API
    # The instance is the user's own setting (a CRN names it, it is no secret).
    r, out, child_env = _run(d, {**env, "QISKIT_IBM_INSTANCE": IBM_INSTANCE}, IBM_SCRIPT, "ibm=my-ibm")
    assert r.returncode == 0, r.stderr
    [(job_id, job)] = cloud.quantum.jobs.items()  # the Quantum API took it only with the real bearer
    assert out == ["backends: ['ibm_fake_a', 'ibm_fake_b']", f"job: {job_id}", "counts: {'00': 512, '11': 512}"], \
        (out, r.stderr)
    # What the SDK sent, as its own decoder reads it: SamplerV2's program, the backend, one pub.
    assert (job.payload["program_id"], job.backend, job.payload["params"]["version"]) == ("sampler", "ibm_fake_a", 2)
    [(circuit, _values, shots)] = job.payload["params"]["pubs"]
    assert shots == 1024 and circuit.count_ops()["cz"] == 1  # transpiled for the backend: H+CX became CZ
    called = [(host, method, path.split("?")[0]) for host, method, path in cloud.seen_hosts]
    assert {("iam.cloud.ibm.com", "POST", "/identity/token"), ("quantum.cloud.ibm.com", "GET", "/api/v1/backends"),
            ("api.global-search-tagging.cloud.ibm.com", "POST", "/v3/resources/search"),
            ("quantum.cloud.ibm.com", "GET", "/api/v1/backends/ibm_fake_a/properties")} <= set(called)
    # Submitted, polled while Queued and again once Completed, then its result read.
    job_calls = [("POST", "/api/v1/jobs"), ("GET", f"/api/v1/jobs/{job_id}"), ("GET", f"/api/v1/jobs/{job_id}"),
                 ("GET", f"/api/v1/jobs/{job_id}/results")]
    assert called[-4:] == [("quantum.cloud.ibm.com", *call) for call in job_calls], called
    # Upstream, IAM saw the real key once (the daemon's exchange); the SDK's own exchanges were
    # answered by the session with stand-ins, which never left it; nor did the placeholder.
    assert sum(1 for host, *_ in cloud.seen_hosts if host == "iam.cloud.ibm.com") == 1
    assert child_env["QISKIT_IBM_TOKEN"].startswith("qbs_") and "qbs_" in child_env["HTTPS_PROXY"]
    placeholder = child_env["QISKIT_IBM_TOKEN"].encode()
    assert not any(placeholder in repr(seen.headers).encode() + seen.body for seen in hw.servers["ibm"].seen)
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_the_ibm_fake_refuses_jobs_the_quantum_api_refuses():
    """The fake behind the test above is as strict as the service where a session could break a
    job: a bearer IAM did not issue for the key, a body not labelled JSON, a circuit not in the
    backend's ISA, and results asked for before the job completed."""
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_ibm_runtime import RuntimeEncoder

    cloud = IbmCloud(lambda: "the-key", IBM_INSTANCE)
    server = FakeServer(cloud.by_path)
    try:
        def call(method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, dict]:
            request = urllib.request.Request(server.url(path), data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        _, token = call("POST", "/identity/token", b"grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=the-key")
        api = {"Service-CRN": IBM_INSTANCE, "IBM-API-Version": "2026-04-15"}

        def submit(circuit: QuantumCircuit, bearer: str = token["access_token"], media: str = "application/json"):
            body = json.dumps({"program_id": "sampler", "backend": "ibm_fake_a",
                               "params": {"pubs": [SamplerPub.coerce(circuit, 10)], "version": 2}}, cls=RuntimeEncoder)
            return call("POST", "/api/v1/jobs", body.encode(), **api, Authorization=f"Bearer {bearer}",
                        **{"Content-Type": media})

        isa = QuantumCircuit(2)
        isa.sx(0)
        isa.cz(0, 1)
        isa.measure_all()
        bell = QuantumCircuit(2)
        bell.h(0)
        bell.cx(0, 1)
        bell.measure_all()
        assert submit(isa, bearer="qbs_placeholder")[0] == 401
        assert submit(isa, media="text/plain")[0] == 415
        assert submit(bell)[0] == 400
        assert cloud.quantum.jobs == {}
        status, job = submit(isa)
        assert status == 200 and set(cloud.quantum.jobs) == {job["id"]}
        auth = {**api, "Authorization": f"Bearer {token['access_token']}"}
        assert call("GET", f"/api/v1/jobs/{job['id']}/results", **auth)[0] == 404  # not yet
        assert call("GET", f"/api/v1/jobs/{job['id']}", **auth)[1]["state"] == {"status": "Queued"}
    finally:
        server.close()


def test_a_sessions_luna_hop_uses_only_its_own_tokens_and_never_echoes_one_back(sdk_rig):
    """Attack review: a body naming any stored token by name must not make the daemon fill it
    in; and Luna echoing a request back (a 422 lists its input) must not hand the command the
    real tokens its placeholders were swapped for."""
    from testsupport.fakes import Seen, json_reply

    d, hw, canary, _ = sdk_rig
    d.broker().qpu_token.create("prod-dwave", "dwave", "PROD-" + canary)
    echoed: list[bytes] = []

    def luna_echoing_its_input(seen: Seen):
        if seen.header("Luna-API-Key") != hw.secrets["luna"]:
            return json_reply({"detail": "Invalid API key"}, 401)
        echoed.append(seen.body)
        return json_reply({"detail": [{"type": "extra_forbidden", "input": json.loads(seen.body)}]}, 422)

    hw.servers["luna"].handler = luna_echoing_its_input
    with d.broker().hold_session() as session:
        def post(qpu_tokens: dict, gzip: bool = False):
            headers = {"Luna-API-Key": session.env["LUNA_API_KEY"], "Content-Type": "application/json"}
            if gzip:
                headers["Accept-Encoding"] = "gzip"
            request = urllib.request.Request(session.env["LUNA_BASE_URL"] + "/luna-q/api/v1/circuits", method="POST",
                                             data=json.dumps({"qpu_tokens": qpu_tokens, "junk": 1}).encode(),
                                             headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        for named in ({"dwave": {"source": "personal", "name": "prod-dwave"}},
                      {"ionq": {"source": "organization", "name": "anything"}}):
            status, body = post(named)
            assert status == 403 and "names a stored token" in body and canary not in body, body
        assert echoed == []  # refused before anything was sent
        status, body = post({"ibm": {"source": "inline", "token": session.env["LUNA_IBM_TOKEN"]}}, gzip=True)
        assert status == 422 and len(echoed) == 1 and hw.secrets["ibm"].encode() in echoed[0]  # Luna got it
        assert canary not in body and "[redacted by qpu-broker]" in body, body  # the command did not


def test_qctrl_client_trades_its_key_with_the_session_and_runs_a_workflow(sdk_rig):
    """The SDK's key exchange is answered by the session with a stand-in; its schema introspection
    (no credential at all) is admitted by the placeholder in the session's URL; the API gets the
    real bearer, which the daemon traded the real key for, and never the placeholder."""
    d, hw, canary, env = sdk_rig
    api = QCtrlApi(lambda: hw.secrets["qctrl"])
    hw.servers["qctrl"].handler = api
    r, out, child_env = _run(d, env, QCTRL_SCRIPT, "qctrl=my-qctrl")
    assert r.returncode == 0, r.stderr
    assert out == ["started: PENDING", "status: SUCCESS result: {'results': [{'00': 512, '11': 512}]}"], out
    assert len(api.workflows) == 1 and api.workflows[0]["data"]["shot_count"] == 1024  # the real bearer carried it
    assert any(b"IntrospectionQuery" in s.body for s in hw.servers["qctrl"].seen)  # sent with no credential: relayed
    assert api.exchanges == 1  # the daemon's own; the SDK's was answered by the session
    placeholder = child_env["QCTRL_API_KEY"]
    assert placeholder.startswith("qbs_") and child_env["QCTRL_API_URL"].endswith("/" + placeholder)
    assert not any(placeholder in s.path or placeholder.encode() in s.body or placeholder in str(s.headers)
                   for s in hw.servers["qctrl"].seen)  # it never left the session
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_a_qctrl_session_admits_only_its_url_its_key_and_its_stand_ins(sdk_rig):
    d, hw, canary, _ = sdk_rig
    api = QCtrlApi(lambda: hw.secrets["qctrl"])
    hw.servers["qctrl"].handler = api
    profile = {"query": "query { profile { profile { organizations { slug } } errors { message } } }"}
    with d.broker().hold_session() as session:
        url, key = session.env["QCTRL_API_URL"], session.env["QCTRL_API_KEY"]

        def post(to: str, doc: dict, bearer: str = "") -> tuple[int, dict]:
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
            request = urllib.request.Request(to, data=json.dumps(doc).encode(), headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        def exchange(api_key: str) -> tuple[int, dict]:
            return post(url, {"query": "query($apiKey: String!) { accessToken(apiKey: $apiKey) { accessToken } }",
                              "variables": {"apiKey": api_key}})

        # The endpoint without the placeholder in its path, or with another: nothing is admitted.
        for wrong in (url.rsplit("/", 1)[0] + "/", url[:-1] + ("A" if url[-1] != "A" else "B"), url + "x"):
            assert post(wrong, profile)[0] == 401
        # A wrong key is refused as Q-CTRL refuses it; the real key is no key to a session either.
        for wrong in (key + "x", hw.secrets["qctrl"]):
            status, answer = exchange(wrong)
            assert status == 200 and answer["data"]["accessToken"]["accessToken"] is None
            assert answer["data"]["accessToken"]["errors"]
        status, bogus = post(url, profile, bearer="not-a-stand-in")
        assert status == 401 and "takes only the bearer" in bogus["detail"]
        assert post(url, {"query": "query { profile { errors { message } } }", "variables": {"x": key}})[0] == 400
        # The same, JSON-escaped (the attack review's): one string to Q-CTRL's parser, so refused too.
        escaped = json.dumps({"query": 'query { accessToken(apiKey: "' + key + '") { accessToken } }'})
        escaped = escaped.replace(key, "\\u0071" + key[1:])
        request = urllib.request.Request(url, data=escaped.encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
        # A compressed body cannot be read as sent: refused (neither SDK compresses).
        zipped = urllib.request.Request(url, data=gzip.compress(json.dumps(profile).encode()),
                                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(zipped, timeout=10)
        assert refused.value.code == 415
        assert hw.servers["qctrl"].seen == []  # nothing refused went on, no exchange was made for it
        standin = exchange(key)[1]["data"]["accessToken"]["accessToken"]
        assert post(url, profile, bearer=standin) == (200, {"data": {"profile": {
            "profile": {"organizations": [{"slug": "fake-org"}]}, "errors": []}}})
        assert api.exchanges == 1 and standin not in api.issued  # the API got the real bearer
        assert canary not in d.log()


def test_an_unreachable_provider_is_named_to_the_sdk_the_log_and_the_audit_log(sdk_rig):
    """qiskit-ibm-runtime wraps any failure of its instance search in "Unable to retrieve instances"; the
    session's answer is what it chains under that, so the user reads which host and what failed. The
    daemon's owner reads it in the log, and the audit entry keeps it, with the command that used the token."""
    d, hw, canary, env = sdk_rig
    hw.servers["ibm"].close()  # IAM and every IBM host: a closed port
    netloc = hw.servers["ibm"].netloc
    r, _out, _child_env = _run(d, {**env, "QISKIT_IBM_INSTANCE": IBM_INSTANCE}, IBM_SCRIPT, "ibm=my-ibm")
    assert r.returncode == 1 and "Unable to retrieve instances" in r.stderr
    said = f"cannot reach the ibm token endpoint {netloc}: connection refused (nothing listens there)"
    assert f"Error: qpu-broker: {said}, Status code: 502" in r.stderr, r.stderr  # ibm_cloud_sdk_core's ApiException
    assert len([line for line in d.log().splitlines() if said in line]) == 1, d.log()  # once a minute at most
    entries = [json.loads(line) for line in d.cli("audit", "--json").stdout.splitlines()]
    [used] = [e for e in entries if e.get("event") == "token-used" and e["token_name"] == "my-ibm"]
    assert (used["outcome"], used["detail"], used["command"]) == ("failed", said, pathlib.Path(sys.executable).name)
    assert len(used["session"]) == 16 and f"by {used['command']} (session {used['session']}): {said}" in d.cli("audit").stdout
    assert "-c" not in json.dumps(used)  # the command's name, never its arguments
    _no_secret(canary, {"-": "-"}, r.stdout, r.stderr, d.log(), d.paths.audit_log.read_text())
