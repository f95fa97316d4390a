"""SessionService: exec sessions opened, held for as long as the caller's stream, and ended."""

from __future__ import annotations

import asyncio

from qpu_broker_client.proto.qpubroker.v1 import sessions_pb2, sessions_pb2_grpc

from qpu_broker.forward.session_model import Session
from qpu_broker.forward.sessions import Sessions
from qpu_broker.wire.request_servicer import refs_from_proto


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def _opened(self, session: Session) -> sessions_pb2.SessionOpened:
        return sessions_pb2.SessionOpened(
            session_id=session.id,
            env=[sessions_pb2.EnvVar(name=k, value=v) for k, v in sorted(session.env().items())],
            endpoints=[sessions_pb2.SessionEndpoint(provider=e.provider, url=e.url, token_name=e.chosen.token_name)
                       for e in session.endpoints.values()],
            skipped=session.skipped, unset=session.unset())

    async def Hold(self, request, context):
        session = await self._sessions.open(refs_from_proto(request.tokens), persistent=False, command=request.command)
        try:
            yield sessions_pb2.SessionEvent(opened=self._opened(session))
            await asyncio.Event().wait()  # until the caller's stream ends: grpc cancels this call then
        finally:
            await asyncio.shield(self._sessions.end(session.id))  # a second cancel must not leave it open

    async def Open(self, request, context):
        return self._opened(await self._sessions.open(refs_from_proto(request.tokens), persistent=True,
                                                      command=request.command))

    async def End(self, request, context):
        if request.session_id:
            ended = int(await self._sessions.end(request.session_id))
        else:
            ended = await self._sessions.end_persistent()
        return sessions_pb2.EndSessionResponse(ended=ended)
