"""Where a call's use of a stored token is written: an org token's to the org's usage record
(queued on disk for the org server), a personal token's to the local audit log. Inline
tokens are the caller's own and leave no record. Never a secret, a query string or a body.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from qpu_broker_client.usage import UNKNOWN_SIZE, UsageRecord

from qpu_broker.common.url import Url
from qpu_broker.tokens.kinds import ORGANIZATION
from qpu_broker.tokens.resolution import StoredToken
from qpu_broker.tokens.usage_queue import UsageRecorder


@dataclasses.dataclass(frozen=True)
class CallShape:
    """What a call does, as far as it is known before its answer."""

    kind: str  # forward | sign
    method: str
    url: Url
    request_bytes: int = UNKNOWN_SIZE
    # Who made it, where the daemon knows: an exec session's id and the name of its command.
    session: str = ""
    command: str = ""


@dataclasses.dataclass
class Pending:
    """A call's records between `begin` and `finish`: the org queue's ids, by token."""

    shape: CallShape
    tokens: list[StoredToken]
    ids: dict[str, str] = dataclasses.field(default_factory=dict)
    done: bool = False


def _record(token: StoredToken, shape: CallShape) -> UsageRecord:
    """The record's fields the daemon knows up front (id, time and result are the queue's)."""
    return UsageRecord("", "", token.id, token.name, token.provider, shape.kind, shape.method, shape.url.host_header,
                       shape.url.path, 0, "", shape.request_bytes, UNKNOWN_SIZE, 0)


class UseRecords:
    def __init__(self, usage: UsageRecorder, audit: Callable[[dict], None]) -> None:
        self._usage = usage
        self._audit = audit

    def _personal(self, token: StoredToken, shape: CallShape, status: int, outcome: str, answer_bytes: int,
                  qpu_us: int = 0, detail: str = "") -> None:
        entry = {"event": "token-used", "token_id": token.id, "token_name": token.name, "provider": token.provider,
                 "kind": shape.kind, "method": shape.method, "host": shape.url.host_header, "path": shape.url.path,
                 "status": status, "outcome": outcome, "request_bytes": shape.request_bytes, "answer_bytes": answer_bytes}
        for key, value in (("qpu_us", qpu_us), ("detail", detail), ("session", shape.session), ("command", shape.command)):
            if value:
                entry[key] = value
        self._audit(entry)

    async def over(self, tokens: list[StoredToken], shape: CallShape, outcome: str, status: int = 0) -> None:
        """A use that is over as it happens: a refusal, a sign."""
        for token in tokens:
            if token.kind == ORGANIZATION:
                await self._usage.add(_record(token, shape), outcome, status)
            else:
                self._personal(token, shape, status, outcome, UNKNOWN_SIZE)

    async def begin(self, tokens: list[StoredToken], shape: CallShape, if_unfinished: str,
              reservations: dict[str, str] | None = None) -> Pending:
        """Before anything leaves with an org secret: its record is on disk (`if_unfinished` is
        its outcome should the call never finish), naming the org server's reservation for the
        use, if it made one (`reservations`, by token id)."""
        pending = Pending(shape, tokens)
        for token in tokens:
            if token.kind == ORGANIZATION:
                record = dataclasses.replace(_record(token, shape), reservation=(reservations or {}).get(token.id, ""))
                pending.ids[token.id] = await self._usage.begin(record, if_unfinished)
        return pending

    async def finish(self, pending: Pending, status: int, outcome: str, answer_bytes: int = UNKNOWN_SIZE,
               qpu_us: int = 0, detail: str = "") -> None:
        """`detail`: what happened, when the outcome alone does not say (a failure's reason)."""
        if pending.done:
            return
        pending.done = True
        for token in pending.tokens:
            if token.kind == ORGANIZATION:
                await self._usage.finish(pending.ids[token.id], status, outcome, answer_bytes, qpu_us)
            else:
                self._personal(token, pending.shape, status, outcome, answer_bytes, qpu_us, detail)
