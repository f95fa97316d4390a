"""Relayed calls multiplexed on one stream (OrgService.Relay): a relayed call costs a message on a
stream the daemon keeps open, not a gRPC call of its own (about 200 µs less a call at p50 through the daemon:
docs/performance.md, issue 21 item 7).

Each message is one call, admitted and answered as its unary twin (RelayForward, RelaySign) would
be: its device's access token (the stream's) checked again and the CLI's changes applied first
(`admit`), the same relay with its limits and usage record, its error mapped by the one mapping
(wire/interceptors.status_of) into a RelayFailure, and its own line in the rpc summary. Answers
go back in the order calls finish, one write at a time (gRPC takes one message at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from qpu_broker_client.errors import InvalidArgumentError, UnavailableError
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from qpu_broker.wire.interceptors import Policy

# Calls one stream has in flight at once; past it the stream is not read (gRPC's flow control then
# holds the sender back). The relay's own limits (relay.py: per member, per server) refuse first.
STREAM_IN_FLIGHT = 32
_SERVICE = "/qpubroker.org.v1.OrgService/"
Admit = Callable[[grpc.aio.ServicerContext], None]
Handler = Callable[[Any], Awaitable[Any]]


class RelayStream:
    """One Relay stream's calls: `forward` and `sign` are the unary twins' bodies (request in,
    response out), `admit` the auth's check of one call (orgserver/wire/auth.OrgAuth.admit_relayed)."""

    def __init__(self, admit: Admit, forward: Handler, sign: Handler, ended: Callable[[], Awaitable[str]]) -> None:
        self._admit = admit
        self._kinds: dict[str, tuple[str, Handler]] = {"forward": (_SERVICE + "RelayForward", forward),
                                                        "sign": (_SERVICE + "RelaySign", sign)}
        self._ended = ended

    async def serve(self, requests: AsyncIterator[org_pb2.RelayCall], context: grpc.aio.ServicerContext) -> None:
        work: dict[int, asyncio.Task] = {}  # by id: each call's relay, which `cancel` cancels
        answering: set[asyncio.Task] = set()  # each call's work then its answer's write, which nothing but the stream's end cancels
        reading = asyncio.ensure_future(self._take(requests, context, work, answering))
        ending = asyncio.ensure_future(self._ended())
        try:
            await asyncio.wait((reading, ending), return_when=asyncio.FIRST_COMPLETED)
            # The server shutting down takes no more calls on the stream, and ends it once those in
            # flight are answered (within its grace): a stream kept open would hold the stop for
            # the whole grace, and calls sent meanwhile would run and be cut off at its end.
            stopping = not reading.done()
            if stopping:
                reading.cancel()
            else:
                reading.result()  # a repeated id: INVALID_ARGUMENT
            while answering:  # the client is done sending, or the server stopping: the calls in flight still answer
                await asyncio.wait(list(answering))
            if stopping:
                raise UnavailableError(f"{ending.result()}: a relayed call it did not answer was not run; call again")
        finally:  # the stream ended early (cancelled, broken): so do its calls
            for task in (reading, ending, *work.values(), *answering):
                task.cancel()

    async def _take(self, requests: AsyncIterator[org_pb2.RelayCall], context: grpc.aio.ServicerContext,
                    work: dict[int, asyncio.Task], answering: set[asyncio.Task]) -> None:
        """Each call the client sends started, at most STREAM_IN_FLIGHT at once; a cancel cancels its work."""
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        writing = asyncio.Lock()
        async for message in requests:
            which = message.WhichOneof("call")
            if which == "cancel":
                task = work.get(message.id)
                if task is not None:
                    task.cancel()
                continue
            if message.id in work:  # a daemon never does: which answer would be whose?
                raise InvalidArgumentError(f"relayed call {message.id} is in flight already: each call on a "
                                           "stream has an id of its own")
            await room.acquire()
            task = work[message.id] = asyncio.create_task(self._one(message, which, context))
            answer = asyncio.create_task(self._answer(task, context, writing))
            answering.add(answer)
            answer.add_done_callback(lambda answer, id=message.id, task=task: (
                answering.discard(answer), work.pop(id) if work.get(id) is task else None, room.release()))

    async def _one(self, message: org_pb2.RelayCall, which: str | None, context: grpc.aio.ServicerContext
                   ) -> org_pb2.RelayResult:
        method, handler = self._kinds.get(which or "", (_SERVICE + "Relay", None))
        policy = Policy(method)
        try:
            if handler is None:
                raise InvalidArgumentError("a relayed call on the stream is a forward, a sign or a cancel: "
                                           "this one is none of them (check the client's generated code against proto/)")
            self._admit(context)  # in this call's own task: the caller it sets is this call's
            answer = await handler(getattr(message, which))
            return org_pb2.RelayResult(id=message.id, **{which: answer})
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - mapped to its status (a `cancel` goes on)
            code, text, mark = policy.mapped(exc)
            return org_pb2.RelayResult(id=message.id, failure=org_pb2.RelayFailure(
                code=code.value[0], message=text, mark=mark))
        finally:
            policy.done()

    @staticmethod
    async def _answer(work: asyncio.Task, context: grpc.aio.ServicerContext, writing: asyncio.Lock) -> None:
        """`work`'s result written, unless it was cancelled. A write is never cancelled by a call's
        `cancel`: grpc.aio leaves a cancelled write's operation pending, and every later write on
        the stream then fails (too many operations), so the other calls' answers would be lost."""
        await asyncio.wait((work,))
        if work.cancelled():
            return  # abandoned: no answer; its record says so
        async with writing:
            # A stream the client ended meanwhile takes no more answers: the call's record stands.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                await context.write(work.result())
