"""What bench/ reads from the product's own output: the lines it parses are the ones the code writes."""

from __future__ import annotations

import asyncio
import io
import logging
import pathlib
import sys

import pytest
from qpu_broker.wire.rpc_summary import RpcSummary

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))  # a folder of scripts

import org_scale


def _server_log(tmp_path: pathlib.Path, codes: list[str]) -> pathlib.Path:
    """An org server's log at its default level, as it stands once the server stopped: the rpc
    summary line, written by the server's own RpcSummary, of these RelayForward calls and a Watch."""
    out = io.StringIO()
    log = logging.getLogger("test_bench.rpc")
    log.handlers[:] = [logging.StreamHandler(out)]
    log.setLevel(logging.INFO)
    log.propagate = False

    async def serve() -> None:
        summary = RpcSummary(log)
        for code in codes:
            summary.add("/qpubroker.org.v1.OrgService/RelayForward", code, 1.0)
        summary.add("/qpubroker.org.v1.OrgService/Watch", "OK", 1.0)
        summary.flush()  # as the server does when it stops

    asyncio.run(serve())
    path = tmp_path / "serve-1.log"
    path.write_text(out.getvalue())
    return path


def test_relay_outcomes_are_counted_from_the_servers_rpc_summary(tmp_path):
    # At info (what a bench runs) a server writes no line per call, only the summary: counting per-call
    # lines read "0 OK of 0" for every relay row since the summary came in.
    log = _server_log(tmp_path, ["OK", "OK", "CANCELLED", "OK"])
    assert org_scale.relay_outcomes([log]) == "3 OK of 4 (1 CANCELLED)"


def test_a_relay_run_with_no_call_ok_stops_the_bench(tmp_path):
    log = _server_log(tmp_path, ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"])
    with pytest.raises(RuntimeError, match="no relayed Forward call was OK .*2 RESOURCE_EXHAUSTED"):
        org_scale.relay_outcomes([log])
