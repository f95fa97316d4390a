"""Real SDK packages, running scripts written as their own docs show, unchanged, under
`qpu-broker exec`, with an empty HOME and no SDK config. The fakes check that the real
credential arrived; the scripts' environment holds only session placeholders.
Real daemon, real CLI, real SDKs, fakes on loopback HTTPS."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest
from luna_quantum.client.schemas.qpu_token.token_provider import RestAPITokenProvider

from testsupport.sdk_fakes import SAPI_SOLVER, DWaveSapi, LunaPlatform

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


@pytest.fixture
def sdk_rig(rig, short_tmp):
    d, hw, canary = rig
    empty_home = short_tmp / "empty-home"
    empty_home.mkdir(mode=0o700)
    # Only what a user's shell has: no SDK config, no credentials, no XDG config to find.
    env = {"HOME": str(empty_home), "XDG_CONFIG_HOME": str(empty_home / ".config"),
           "XDG_DATA_HOME": str(empty_home / ".local/share")}
    return d, hw, canary, env


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
    assert child_env["DWAVE_API_TOKEN"].startswith("qbs_")
    _no_secret(canary, child_env, r.stdout, r.stderr, d.log())


def test_dwave_binary_ref_answers_point_at_the_session(sdk_rig):
    """Hybrid solvers answer with an absolute SAPI URL the SDK fetches with its token: the
    session rewrites it to itself, so the placeholder never goes to the real host."""
    d, hw, _, _ = sdk_rig
    hw.servers["dwave"].handler = DWaveSapi(lambda: hw.secrets["dwave"], lambda: hw.url("dwave", ""))
    with d.broker().hold_session() as session:
        base, key = session.env["DWAVE_API_ENDPOINT"], session.env["DWAVE_API_TOKEN"]
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
