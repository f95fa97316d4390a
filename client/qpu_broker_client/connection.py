"""The client's channel to its daemon: stubs, autostart, and reconnecting at once.

grpc keeps a channel whose daemon went away in connect back-off, and by default
shares that back-off with every other channel to the same socket in the
process. A client would then fail for up to a back-off period after a
restarted daemon already answers. So each connection has its own subchannel,
and a call that failed *before it was sent* (grpc's "failed to connect") is
retried once on a fresh channel when the socket answers again (or after
autostart). A call that may have reached the daemon is never retried: Forward
may be a POST that starts a paid QPU job.

grpc is handed only a socket that daemon_socket.reach() checked and holds: its
directory stays open for the channel's life, and grpc's connects (reconnects to a
restarted daemon included) go through it, never through the name again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from . import autostart, daemon_socket
from .daemon_socket import DaemonSocket
from .error_mapping import NOT_SENT, no_daemon, translate_rpc_errors
from .paths import Paths
from .proto.qpubroker.v1 import (
    agent_pb2_grpc,
    organization_pb2_grpc,
    requests_pb2_grpc,
    sessions_pb2_grpc,
    tokens_pb2_grpc,
)

T = TypeVar("T")

CHANNEL_OPTIONS = [
    # Our own subchannel: another channel's back-off must not fail our calls.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Not grpc.min_reconnect_backoff_ms: grpc also takes it as the connect timeout (at least
    # 100 ms), so a daemon busy for longer than that before its HTTP/2 SETTINGS (just started,
    # on a loaded machine) failed every attempt with "connection attempt timed out before
    # receiving SETTINGS frame", for as long as it stayed busy. The default is 20 s.
]


@dataclasses.dataclass(frozen=True)
class Stubs:
    tokens: tokens_pb2_grpc.TokenServiceStub
    agent: agent_pb2_grpc.AgentServiceStub
    requests: requests_pb2_grpc.RequestServiceStub
    org: organization_pb2_grpc.OrganizationServiceStub
    sessions: sessions_pb2_grpc.SessionServiceStub


def never_sent(exc: grpc.RpcError) -> bool:
    """Whether grpc failed this call before any byte of it reached the daemon."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    return code is grpc.StatusCode.UNAVAILABLE and details.startswith(NOT_SENT)


class Connection:
    """One channel to the daemon at `paths.socket`, opened on first use."""

    def __init__(self, paths: Paths, *, autostart_daemon: bool | None) -> None:
        """`autostart_daemon`: None as QPU_BROKER_NO_AUTOSTART says."""
        self._paths = paths
        self._autostart = autostart.autostart_enabled() if autostart_daemon is None else autostart_daemon
        # What to unset for a daemon to be started, when that is what kept one from starting.
        self._off_by = autostart.NO_AUTOSTART if autostart_daemon is None and not self._autostart else ""
        self._channel: grpc.Channel | None = None
        self._stubs: Stubs | None = None
        self._socket: DaemonSocket | None = None

    @property
    def socket(self) -> str:
        return str(self._paths.socket)

    def _reach(self) -> DaemonSocket | None:
        """Our daemon's socket, checked and held (started first if allowed); None when none answers.

        Nothing is sent before the socket is shown to be ours (a stranger's fake daemon would get
        every secret and passphrase we send), and grpc gets no other way to it."""
        found = daemon_socket.reach(self._paths.socket)
        if found is None and self._autostart:
            found = autostart.start_daemon(self._paths)
        return found

    def _open(self) -> Stubs:
        if self._stubs is None:
            found = self._reach()
            if found is None:
                raise no_daemon(self.socket, self._off_by)
            self._connect(found)
        assert self._stubs is not None
        return self._stubs

    def _connect(self, found: DaemonSocket) -> None:
        self._socket = found
        self._channel = grpc.insecure_channel(f"unix:{found.address}", options=CHANNEL_OPTIONS)
        self._stubs = Stubs(
            tokens_pb2_grpc.TokenServiceStub(self._channel),
            agent_pb2_grpc.AgentServiceStub(self._channel),
            requests_pb2_grpc.RequestServiceStub(self._channel),
            organization_pb2_grpc.OrganizationServiceStub(self._channel),
            sessions_pb2_grpc.SessionServiceStub(self._channel),
        )

    def call(self, rpc: Callable[[Stubs, float], T], timeout: float) -> T:
        """Run `rpc(stubs, timeout)`, mapping grpc errors to qpu-broker errors.

        `rpc` must do all of its network work before returning (consume any
        response stream), so a retry never follows a partly delivered call.
        """
        deadline = time.monotonic() + timeout
        with translate_rpc_errors(self.socket, self._off_by):
            try:
                return rpc(self._open(), timeout)
            except grpc.RpcError as exc:
                if not never_sent(exc) or not self._reachable_again():
                    raise
            return rpc(self._open(), max(deadline - time.monotonic(), 0.001))

    def _reachable_again(self) -> bool:
        """Drop the failed channel; whether our daemon answers now (starting one if allowed)."""
        self.close()
        found = self._reach()
        if found is None:
            return False
        self._connect(found)
        return True

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._socket is not None:
            self._socket.close()  # after the channel: its descriptor number is in the channel's address
        self._channel = None
        self._stubs = None
        self._socket = None

    def __del__(self) -> None:
        # A Broker dropped without close() (as most scripts do) must not keep the socket's
        # directory open: a long-lived process making Brokers would run out of descriptors.
        # The channel first, as in close(): the descriptor's number is in its address.
        with contextlib.suppress(Exception):
            self.close()
