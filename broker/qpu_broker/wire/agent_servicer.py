"""AgentService: status, lock and unlock, passphrase, check, stop, reload, the audit log's check."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from qpu_broker_client.errors import LockedError
from qpu_broker_client.proto.qpubroker.v1 import agent_pb2, agent_pb2_grpc

from qpu_broker import __version__
from qpu_broker.common import hardening
from qpu_broker.keys.kek import KeySource
from qpu_broker.tokens.agent_lock import AgentLock
from qpu_broker.tokens.audit_log import AuditLog
from qpu_broker.tokens.personal import PersonalTokens

_SOURCE_TO_PROTO = {
    KeySource.KEY_FILE: agent_pb2.KEY_SOURCE_KEY_FILE,
    KeySource.PASSPHRASE: agent_pb2.KEY_SOURCE_PASSPHRASE,
    KeySource.CREDENTIAL: agent_pb2.KEY_SOURCE_CREDENTIAL,
}


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: AgentLock, personal: PersonalTokens, store_path: str, socket_path: str, hardening_problems: list[str],
                 stop: asyncio.Event, reload: Callable[[], object], audit: AuditLog) -> None:
        self._agent = agent
        self._personal = personal
        self._audit = audit
        self._stop = stop
        self._reload = reload
        self._store_path = store_path
        self._socket_path = socket_path
        self._hardening_problems = hardening_problems
        self._started = time.monotonic()

    async def VerifyAudit(self, request, context):
        if self._agent.locked:
            raise LockedError("the agent is locked: the audit log's chain is checked with a key only the unlocked "
                              "agent has; run 'qpu-broker unlock' first")
        verdict = self._audit.verify()
        return agent_pb2.VerifyAuditResponse(entries=verdict.entries, problem=verdict.problem, path=str(self._audit.path))

    async def Status(self, request, context):
        warnings = list(self._hardening_problems)
        keys = self._agent.key_status()
        if not keys.locked and not keys.memory_locked:
            warnings.append("the data key's memory could not be locked (mlock): it may be swapped out; "
                            "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)")
        if hardening.unlocked_buffers:
            warnings.append(f"{hardening.unlocked_buffers} cached secret buffer(s) could not be locked in memory "
                            "(mlock): they may be swapped out; raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)")
        return agent_pb2.StatusResponse(
            locked=keys.locked, lock_reason=keys.lock_reason,
            key_source=_SOURCE_TO_PROTO[keys.source], personal_tokens=self._personal.count(),
            version=__version__, pid=os.getpid(), uptime_seconds=time.monotonic() - self._started,
            store_path=self._store_path, socket_path=self._socket_path, warnings=warnings,
            key_memory_locked=keys.memory_locked,
        )

    async def Reload(self, request, context):
        self._reload()  # a bad config is INVALID_ARGUMENT naming the key; the running one stays
        return agent_pb2.ReloadResponse()

    async def Stop(self, request, context):
        asyncio.get_running_loop().call_soon(self._stop.set)  # after this answer is on its way
        return agent_pb2.StopResponse()

    async def Lock(self, request, context):
        self._agent.lock()
        return agent_pb2.LockResponse()

    async def Unlock(self, request, context):
        await self._agent.unlock(request.passphrase)
        return agent_pb2.UnlockResponse()

    async def ChangePassphrase(self, request, context):
        source = await self._agent.change_passphrase(request.old_passphrase, request.new_passphrase)
        return agent_pb2.ChangePassphraseResponse(key_source=_SOURCE_TO_PROTO[source])

    async def Check(self, request, context):
        if request.accept_rollback:
            await self._agent.accept_rollback()
        if self._agent.rollback:
            return agent_pb2.CheckResponse(rollback=self._agent.rollback)
        checked, damaged = await self._personal.check()
        return agent_pb2.CheckResponse(checked=checked, damaged=[
            agent_pb2.DamagedToken(id=d.record.id, name=d.record.name, provider=d.record.provider, reason=d.reason)
            for d in damaged
        ])
