"""Real SDK packages, running scripts written as their own docs show, unchanged, under
`qpu-broker exec`, with an empty HOME and no SDK config. The fakes check that the real
credential arrived; the scripts' environment holds only session placeholders.
Real daemon, real CLI, real SDKs, fakes on loopback HTTPS."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from testsupport.sdk_fakes import SAPI_SOLVER, DWaveSapi

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
