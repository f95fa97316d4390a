"""Existing SDK stacks running through the broker: httpx, requests, botocore."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import requests
from qpu_broker_client import QpuToken, TokenProvider
from qpu_broker_client.transports.botocore_signer import use_broker
from qpu_broker_client.transports.httpx_transport import (
    AsyncBrokerTransport,
    BrokerTransport,
)
from qpu_broker_client.transports.requests_adapter import BrokerAdapter

from testsupport.fakes import decoded_body


def _tp(provider):
    return TokenProvider(**{provider: QpuToken("personal", name=f"my-{provider}")})


def test_httpx_sync_and_async(rig):
    d, hw, _canary = rig
    with httpx.Client(transport=BrokerTransport("ionq", _tp("ionq"), broker=d.broker())) as client:
        r = client.post(hw.url("ionq", "/v0.3/jobs"), json={"target": "simulator"},
                        headers={"Authorization": "apiKey smuggled"})
    assert r.status_code == 200 and r.json()["ok"] is True
    assert hw.servers["ionq"].seen[-1].header("Authorization") == "apiKey " + hw.secrets["ionq"]

    async def run():
        async with httpx.AsyncClient(transport=AsyncBrokerTransport("dwave", _tp("dwave"), broker=d.broker())) as client:
            return await asyncio.gather(*(client.get(hw.url("dwave", f"/sapi/v2/problems/{i}")) for i in range(5)))

    assert [r.status_code for r in asyncio.run(run())] == [200] * 5
    # A refused destination surfaces as the broker's error, and nothing is sent.
    import pytest
    from qpu_broker_client import PermissionDeniedError

    with httpx.Client(transport=BrokerTransport("ionq", _tp("ionq"), broker=d.broker())) as client, \
            pytest.raises(PermissionDeniedError):
        client.get(hw.catcher.url("/"))
    assert hw.catcher.seen == []


def test_httpx_decodes_what_the_provider_encoded(rig):
    d, hw, _ = rig
    from testsupport.fakes import Reply

    hw.servers["fujitsu"].handler = lambda seen: Reply(200, gzip.compress(b'{"zipped": true}'),
                                                       [("Content-Type", "application/json"), ("Content-Encoding", "gzip")])
    with httpx.Client(transport=BrokerTransport("fujitsu", _tp("fujitsu"), broker=d.broker())) as client:
        assert client.get(hw.url("fujitsu")).json() == {"zipped": True}
    s = requests.Session()
    s.mount("https://", BrokerAdapter("fujitsu", _tp("fujitsu"), broker=d.broker()))
    assert s.get(hw.url("fujitsu")).json() == {"zipped": True}


def test_requests_session_like_dwave_cloud_client(rig):
    d, hw, _ = rig
    session = requests.Session()
    session.mount("https://", BrokerAdapter("dwave", _tp("dwave"), broker=d.broker()))
    session.headers["X-Auth-Token"] = "smuggled"  # what an SDK without a token might still send
    r = session.post(hw.url("dwave", "/sapi/v2/problems/"), json=[{"solver": "Advantage"}], timeout=10)
    assert r.status_code == 200 and r.json()["ok"] is True
    seen = hw.servers["dwave"].seen[-1]
    assert seen.header("X-Auth-Token") == hw.secrets["dwave"] and b"Advantage" in seen.body


def test_dwave_cloud_clients_compressed_upload_goes_through_the_adapter_as_it_was_made(rig):
    """dwave-cloud-client uploads problems deflated, as a generator of chunks (api/client.py,
    PayloadCompressingSessionMixin.send): the adapter sends those bytes, not the generator."""
    from dwave.cloud.api.client import PayloadCompressingSessionMixin

    class Compressing(PayloadCompressingSessionMixin, requests.Session):  # as its SAPI client is made
        pass

    d, hw, _ = rig
    session = Compressing(compress=True)
    session.mount("https://", BrokerAdapter("dwave", _tp("dwave"), broker=d.broker()))
    r = session.post(hw.url("dwave", "/sapi/problems/"), data=b'[{"solver": "Advantage"}]', timeout=10)
    assert r.status_code == 200, r.text
    seen = hw.servers["dwave"].seen[-1]
    assert seen.header("Content-Encoding") == "deflate"
    assert decoded_body(seen) == b'[{"solver": "Advantage"}]'


def test_botocore_braket_client_signs_through_the_daemon(rig):
    d, hw, _ = rig
    import botocore.session

    client = botocore.session.get_session().create_client(
        "braket", region_name="us-east-1", endpoint_url=hw.url("aws", ""),
        verify=str(hw.ca.ca_file), aws_access_key_id="unused", aws_secret_access_key="unused")
    use_broker(client, _tp("aws"), broker=d.broker())
    client.get_device(deviceArn="arn:aws:braket:::device/quantum-simulator/amazon/sv1")
    seen = hw.servers["aws"].seen[-1]
    assert seen.header("Authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/")
    assert "unused" not in seen.header("Authorization")
    assert hw.aws.mismatches == []
