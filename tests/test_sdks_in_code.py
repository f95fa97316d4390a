"""The in-code way for each SDK (docs/sdks/): a session held by the Python client, its values
given to the SDK in code, or its environment for a block with `session.environ()`. Real SDKs,
in this process, against the same loopback fakes as under exec."""

from __future__ import annotations

import json
import os

from test_sdks_under_exec import IBM_INSTANCE

from testsupport.ibm_fake import IbmCloud
from testsupport.sdk_fakes import (
    SAPI_SOLVER,
    BraketApi,
    DWaveSapi,
    LunaPlatform,
    session_sapi,
)


def test_dwave_cloud_client_given_the_session_in_code(sdk_rig):
    from dwave.cloud import Client

    d, hw, canary, _ = sdk_rig
    hw.servers["dwave"].handler = DWaveSapi(lambda: hw.secrets["dwave"], lambda: hw.url("dwave", ""))
    with d.broker().hold_session() as session, \
            Client(metadata_api_endpoint=session.env["DWAVE_METADATA_API_ENDPOINT"],
                   token=session.env["DWAVE_API_TOKEN"], region="eu-central-1") as client:
        solver = client.get_solver(qpu=True)
        assert solver.name == SAPI_SOLVER
        assert list(solver.sample_ising({0: 1}, {}, num_reads=3).num_occurrences) == [3]
        assert client.config.endpoint == session_sapi(session.env).replace("/sapi/", "/@eu-central-1.cloud.dwavesys.com/sapi/v2/")
    assert canary not in d.log()


def test_boto3_braket_given_the_session_in_code(sdk_rig):
    import boto3

    d, hw, _, _ = sdk_rig
    hw.servers["aws"].handler = BraketApi(hw.aws)
    with d.broker().hold_session() as session:
        braket = boto3.client("braket", region_name="eu-west-2", endpoint_url=session.env["AWS_ENDPOINT_URL_BRAKET"],
                              aws_access_key_id=session.env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=session.env["AWS_SECRET_ACCESS_KEY"])
        assert braket.search_devices(filters=[])["devices"][0]["deviceName"] == "SV1"
    assert hw.aws.mismatches == []


def test_luna_quantum_inside_session_environ(sdk_rig):
    from luna_quantum import LunaQ
    from luna_quantum.client.schemas.enums.circuit import CircuitProviderEnum

    d, hw, canary, _ = sdk_rig
    luna = LunaPlatform(lambda: hw.secrets["luna"])
    hw.servers["luna"].handler = luna
    before = dict(os.environ)
    with d.broker().hold_session() as session, session.environ():
        lq = LunaQ()
        job = lq.circuit.create(circuit="OPENQASM 2.0;", provider=CircuitProviderEnum.QCTRL)
        assert lq.circuit.get(job).status.value == "DONE"
    assert dict(os.environ) == before  # the block's variables are gone with it
    assert luna.circuits[0]["qpu_tokens"]["qctrl"] == {"source": "inline", "token": hw.secrets["qctrl"]}
    assert canary not in json.dumps(dict(os.environ))


def test_qiskit_ibm_runtime_inside_session_environ(sdk_rig):
    from qiskit_ibm_runtime import QiskitRuntimeService

    d, hw, _, _ = sdk_rig
    cloud = IbmCloud(lambda: hw.secrets["ibm"], IBM_INSTANCE)
    hw.servers["ibm"].handler = cloud.by_path
    with d.broker().hold_session() as session, session.environ():
        service = QiskitRuntimeService(instance=IBM_INSTANCE)
        assert [b.name for b in service.backends()] == ["ibm_fake_a", "ibm_fake_b"]
