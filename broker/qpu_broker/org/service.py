"""The org server's domain: org tokens sealed at rest, users, and change pushes.

No grpc here. Who may call what (admin or member) is decided once, in
`qpu_broker.org.auth`; this module trusts the caller it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable

from qpu_broker_client.errors import InvalidArgumentError, UnauthenticatedError
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret

from .. import crypto
from ..config import split_host_port
from ..secrets_format import normalize_secret
from . import apikeys
from .store import OrgStore, OrgTokenRecord, User

log = logging.getLogger(__name__)
NAME_MAX, SECRET_MAX = 128, 16 * 1024

CREATED, UPDATED, DELETED = "created", "updated", "deleted"


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str  # created | updated | deleted
    token: OrgTokenRecord
    revision: int


def _ad(token_id: str, provider: str) -> bytes:
    return b"\0".join([b"qpu-broker/org/v1/token", token_id.encode(), provider.encode()])


def _check_name(name: str) -> str:
    if not name or not name.strip() or len(name) > NAME_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidArgumentError(f"an organization token name must be 1 to {NAME_MAX} characters, no control characters")
    return name


def _check_hosts(hosts: list[str]) -> tuple[str, ...]:
    out = []
    for entry in hosts:
        try:
            host, port = split_host_port(entry, 443)
        except ValueError as exc:
            raise InvalidArgumentError(f"allowed host {entry!r}: {exc}") from None
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tuple(out)


class OrgService:
    def __init__(self, store: OrgStore, server_key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._key = server_key
        self._clock = clock
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self.org = store.meta("org") or "org"

    # -- callers -------------------------------------------------------------------
    def authenticate(self, api_key: str) -> User:
        parsed = apikeys.parse(api_key)
        user = self._store.user_by_key_id(parsed[0]) if parsed else None
        if user is None or not apikeys.matches(parsed[1], user.key_hash):
            raise UnauthenticatedError(f"the API key is not valid for the organization {self.org!r}: "
                                       "check it, or ask an org admin for a new one")
        return user

    # -- tokens (admins; the interceptor checks) -------------------------------
    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def _seal(self, token_id: str, provider: str, secret: bytes) -> tuple[bytes, bytes]:
        return crypto.seal(self._key, normalize_secret(provider, secret, SECRET_MAX), _ad(token_id, provider))

    def create(self, name: str, provider: str, secret: bytes, allowed_hosts: list[str]) -> OrgTokenRecord:
        check_provider(provider)
        now = self._now()
        record = OrgTokenRecord(secrets.token_hex(12), _check_name(name), provider, _check_hosts(allowed_hosts),
                                1, now, now)
        self._store.insert_token(record, *self._seal(record.id, provider, secret))
        self._publish(CREATED, record)
        return record

    def find(self, *, token_id: str = "", name: str = "") -> OrgTokenRecord:
        if not token_id and not name:
            raise InvalidArgumentError("name an organization token by id or by name")
        return self._store.token(token_id=token_id, name=name)

    def update(self, record: OrgTokenRecord, *, name: str | None, secret: bytes | None,
               allowed_hosts: list[str] | None) -> OrgTokenRecord:
        if name is None and secret is None and allowed_hosts is None:
            raise InvalidArgumentError("nothing to update: give a new name, a new secret or allowed hosts")
        new = dataclasses.replace(
            record, name=_check_name(name) if name is not None else record.name,
            allowed_hosts=_check_hosts(allowed_hosts) if allowed_hosts is not None else record.allowed_hosts,
            version=record.version + 1, updated_us=self._now())
        sealed = self._seal(record.id, record.provider, secret) if secret is not None else None
        self._store.replace_token(new, sealed)
        self._publish(UPDATED, new)
        return new

    def delete(self, record: OrgTokenRecord) -> None:
        self._store.delete_token(record.id)
        self._publish(DELETED, record)

    # -- members -------------------------------------------------------------------
    def list(self) -> tuple[list[OrgTokenRecord], int]:
        return self._store.tokens(), self._store.revision()

    def secrets(self, ids: list[str]) -> list[tuple[OrgTokenRecord, Secret]]:
        records = self._store.tokens() if not ids else [self._store.token(token_id=i) for i in ids]
        out = []
        for record in records:
            nonce, ciphertext = self._store.sealed(record.id)
            try:
                out.append((record, Secret(crypto.open_sealed(self._key, nonce, ciphertext, _ad(record.id, record.provider)))))
            except crypto.DecryptionError:
                log.error("organization token id=%s name=%r does not open: altered on disk", record.id, record.name)
        return out

    # -- push ------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Change]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, kind: str, record: OrgTokenRecord) -> None:
        change = Change(kind, record, self._store.revision())
        log.info("organization token %s id=%s name=%r (revision %d)", kind, record.id, record.name, change.revision)
        for queue in self._subscribers:
            queue.put_nowait(change)
