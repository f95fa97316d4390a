"""Cross-cutting policy for every RPC: its log line (wire/rpc_summary.py), and the one error mapping.

Handlers raise the QpuBrokerError subclasses of qpu_broker_client.errors; this
is the only place that turns them into gRPC status codes. A LockedError is also
marked in trailing metadata so clients can raise LockedError rather than its
parent. Anything else becomes INTERNAL with a message that carries no detail
(the detail goes to the log, by type and traceback only).

A message that does not decode (anyone on the socket can send bytes) is
INVALID_ARGUMENT naming the message type, with one warning line, at most one
per peer every `WARN_EVERY` seconds: no traceback, no log that grows at will.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from qpu_broker_client.error_mapping import ERROR_MARK_KEY
from qpu_broker_client.errors import (
    LOCKED_MARK,
    THROTTLED_MARK,
    InvalidArgumentError,
    LockedError,
    QpuBrokerError,
)

from qpu_broker.wire.rpc_summary import RpcSummary

log = logging.getLogger("qpu_broker.rpc")
# The client strips this prefix; it tells our statuses from the transport's own.
PREFIX = "qpu-broker: "
WARN_EVERY = 10.0
RPC_LOG = RpcSummary(log)  # each call at debug, a summary a minute at info
UNDECODABLE_MARK = "undecodable"  # logged by the rate-limited warning, not one line per call


@dataclasses.dataclass(frozen=True)
class _Undecodable:
    """What a request that did not parse becomes, so the handler can refuse it properly."""

    type_name: str


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = method.rsplit("/", 1)[-1] + " request"

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 - DecodeError and kin: refused by the handler
            return _Undecodable(type_name)

    return parse


class _Warnings:
    """At most one warning per peer and `WARN_EVERY` seconds; the rest are counted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, peer: str, message: str) -> None:
        now = self._clock()
        last, suppressed = self._last.get(peer, (-WARN_EVERY, 0))
        if now - last < WARN_EVERY:
            self._last[peer] = (last, suppressed + 1)
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[peer] = (now, 0)
        log.warning("%s from %s%s", message, peer if peer not in ("", "unix:") else "a local client",
                    f" ({suppressed} more like it suppressed)" if suppressed else "")


_WARNINGS = _Warnings()


def _refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        _WARNINGS.warn(context.peer(), f"undecodable {request.type_name}")
        raise InvalidArgumentError(f"the {request.type_name} is not a valid protobuf message: "
                                   "check the client's generated code against proto/", mark=UNDECODABLE_MARK)


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        _refuse_undecodable(request, context)
        yield request


def with_policy(handler: grpc.RpcMethodHandler, method: str,
                on_call: Callable[[str], None] | None = None) -> grpc.RpcMethodHandler:
    """`handler` with the policy around each call (its error mapping and log line); a call to
    one of our services is also told to `on_call(method)` (the daemon's auto-lock counts use)."""
    ours = method.startswith("/qpubroker.")
    if handler.unary_unary is None and not ours:
        return handler  # other streams (health Watch, reflection) pass as they are
    told = on_call if ours else None
    return rewrap(handler, lambda inner: _unary(inner, method, told),
                  lambda inner, streamed: _stream(inner, method, told, streamed=streamed),
                  _tolerant(handler.request_deserializer, method))


def rewrap(handler: grpc.RpcMethodHandler, unary: Callable[[Any], Any], stream: Callable[[Any, bool], Any],
           request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped: `unary(inner)` for a unary call,
    `stream(inner, streamed)` for a server stream (`streamed`: the requests stream too)."""
    parse = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), parse, handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream, False), parse,
                                                    handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream, True), parse,
                                                     handler.response_serializer)
    return handler


def status_of(method: str, exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """The status for `exc`: (code, message without PREFIX, mark), for a call's status or for one
    call multiplexed on a stream (orgserver/wire/relay_stream.py). Anything but our errors is
    logged here, and answered without its detail."""
    if isinstance(exc, QpuBrokerError):
        return grpc.StatusCode[exc.code], str(exc), exc.mark or (LOCKED_MARK if isinstance(exc, LockedError) else "")
    log.error("internal error in %s", method, exc_info=exc)
    where = "the org server's" if method.startswith("/qpubroker.org.") else "the daemon's"
    return grpc.StatusCode.INTERNAL, f"internal error: see {where} log", ""


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """Abort the call with the status for `exc`."""
    code, message, mark = status_of(method, exc)
    if mark:
        context.set_trailing_metadata(((ERROR_MARK_KEY, mark),))
    await context.abort(code, PREFIX + message)


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, QpuBrokerError) else "INTERNAL"


_LOGGED = "_logged_where_raised"


def logged_where_raised(exc: Exception) -> Exception:
    """Mark an error its raiser logged (or counted) already: no second line per call (a flood
    of wrong org API keys is logged within a budget by the org server's auth, not once more here)."""
    setattr(exc, _LOGGED, True)
    return exc


def _quiet(exc: Exception) -> bool:
    """Refusals inside a back-off are counted where they are refused, not logged one by one."""
    return (isinstance(exc, QpuBrokerError) and exc.mark in (THROTTLED_MARK, UNDECODABLE_MARK)) or getattr(
        exc, _LOGGED, False)


class Policy:
    """Around one call, the policy: any error mapped to its status (_fail), and the call counted in
    the rpc log. Each wrapper writes its try out rather than using a context manager, which cost
    every call an async generator and two awaits (docs/performance.md)."""

    __slots__ = ("code", "method", "quiet", "start")

    def __init__(self, method: str) -> None:
        self.method, self.start, self.code, self.quiet = method, time.perf_counter(), "OK", False

    def _noted(self, exc: BaseException) -> None:
        """`exc` as the call's outcome in the rpc log. A cancellation (the client went away, or the
        call was abandoned) is counted as such and goes on as it came."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = "CANCELLED"
            raise exc
        self.code, self.quiet = _code(exc), _quiet(exc)

    async def failed(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc  # the handler aborted the call itself: its status stands
        self._noted(exc)
        await _fail(context, self.method, exc)

    def mapped(self, exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
        """`exc`'s status for a call that is a message on a stream (no call of its own to abort)."""
        self._noted(exc)
        return status_of(self.method, exc)

    def done(self) -> None:
        if not self.quiet:
            RPC_LOG.add(self.method, self.code, (time.perf_counter() - self.start) * 1000)


def _unary(inner: Callable[..., Awaitable[Any]], method: str,
           on_call: Callable[[str], None] | None) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if on_call is not None:
            on_call(method)
        policy = Policy(method)
        try:
            _refuse_undecodable(request, context)
            return await inner(request, context)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - mapped to a status, in one place
            await policy.failed(context, exc)
        finally:
            policy.done()

    return call


def _stream(inner: Callable[..., AsyncIterator[Any]], method: str, on_call: Callable[[str], None] | None, *,
            streamed: bool = False) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if on_call is not None:
            on_call(method)
        policy = Policy(method)
        try:
            if streamed:
                request = _checked(request, context)
            else:
                _refuse_undecodable(request, context)
            async for item in inner(request, context):
                yield item
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - mapped to a status, in one place
            await policy.failed(context, exc)
        finally:
            policy.done()

    return call
