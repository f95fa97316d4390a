"""Why a provider could not be reached, in words: the phrase each kind of connection failure
becomes (in-process: an aiohttp client against loopback servers of this test's own)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import certifi
import pytest
from qpu_broker.forward.upstream_failures import unreachable, what_failed

from testsupport.fakes import FakeServer, Reply, make_ca


def _failure(url: str, ca_file: str | None = None) -> str:
    async def call() -> str:
        context = ssl.create_default_context(cafile=ca_file or certifi.where())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as client:
            with pytest.raises(aiohttp.ClientError) as err:
                await client.get(url)
        return what_failed(err.value)

    return asyncio.run(call())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_failure_is_named(short_tmp):
    assert _failure(f"https://127.0.0.1:{_closed_port()}/") == "connection refused (nothing listens there)"
    server = FakeServer(lambda seen: Reply(200, b"{}"), make_ca(short_tmp / "ca"))
    try:  # a CA the client does not trust
        assert _failure(server.url()) == ("its TLS certificate is not trusted (unable to get local issuer certificate): "
                                          "is the CA in the provider's ca_file?")
    finally:
        server.close()
    plain = FakeServer(lambda seen: Reply(200, b"{}"))
    try:  # https to a server that speaks plain http
        assert _failure(f"https://{plain.netloc}/").startswith("the TLS handshake failed (")
    finally:
        plain.close()
    key = aiohttp.client_reqrep.ConnectionKey("nowhere.invalid", 443, True, True, None, None, None)
    dns = aiohttp.ClientConnectorDNSError(key, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert what_failed(dns) == "its host name does not resolve (DNS)"
    assert str(unreachable("api.ionq.co (ionq)", dns)) == "cannot reach api.ionq.co (ionq): its host name does not resolve (DNS)"
