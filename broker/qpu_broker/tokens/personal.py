"""Personal tokens: created, found, listed, updated, deleted and opened, sealed under the data key.

Reads of metadata run inline on the store's reader (they never need a key); every write goes
through StoreIntegrity (its writer thread, its counter and MAC). A row's secret is sealed with
every field of the row (tokens/seals), so an edited row fails alone, naming itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import TypeVar

from qpu_broker_client.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret

from qpu_broker.common.config import Config
from qpu_broker.common.lifetimes import (
    check_lifetime,
    expired_error,
    expiry_us,
    is_expired,
)
from qpu_broker.common.names import canonical_name, check_name
from qpu_broker.keys import crypto
from qpu_broker.keys.data_key import Keyring
from qpu_broker.providers import normalize_secret
from qpu_broker.store.db import Sealed, Store, TokenRecord
from qpu_broker.tokens.events import Audited, Events, TokenChanged
from qpu_broker.tokens.integrity import StoreIntegrity
from qpu_broker.tokens.kinds import INLINE, ORGANIZATION, PERSONAL
from qpu_broker.tokens.seals import open_token, seal_token

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_MAX = 1000


@dataclasses.dataclass(frozen=True)
class Damaged:
    record: TokenRecord
    reason: str


def _defaults(store: Store) -> dict[str, str]:
    # The state MAC covers this value: a hand edit holds the store before anything reads it.
    try:
        doc = json.loads(store.meta("default_tokens") or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise FailedPreconditionError("the store's default tokens are unreadable: set them again with "
                                      "'qpu-broker token default NAME'")
    return doc


class PersonalTokens:
    def __init__(self, config: Config, integrity: StoreIntegrity, keys: Keyring, events: Events, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._integrity = integrity
        self._reader = integrity.reader
        self._writer = integrity.writer  # only on the writer thread, inside a commit
        self._keys = keys
        self._events = events
        self._clock = clock
        # (kind, provider) -> count. Counting a million rows costs 60 ms, so a count is kept and
        # moved by each create and delete; one is taken (and kept) only while no write is in
        # flight, so a write never lands both in a count and as a move of it.
        self._totals: dict[tuple[str, str], int] = {}
        self._totals_accepted = integrity.accepted  # a store accepted since: the counts are of another store
        self._writes_in_flight = 0

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: limits apply from the next call."""
        self._config = config

    @property
    def locked(self) -> bool:
        """No secret opens: the agent is locked (or held)."""
        return self._keys.locked

    def _audit(self, action: str, record: TokenRecord, **more: object) -> None:
        self._events.publish(Audited(action, {"token_id": record.id, "token_name": record.name,
                                              "provider": record.provider, **more}))

    def _check_kind(self, kind: str) -> None:
        if kind == ORGANIZATION:
            raise FailedPreconditionError(
                "organization tokens need an organization server, and this daemon is not logged in to one"
            )
        if kind == INLINE:
            raise InvalidArgumentError("inline tokens are passed per call and never stored: use personal")

    def _check_name(self, name: str) -> str:
        return check_name(name, self._config.name_max_chars)

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def _seal(self, record: TokenRecord, secret: bytes) -> Sealed:
        return seal_token(self._keys.key(), self._keys.key_term, record, secret)

    def _open(self, key: bytes, record: TokenRecord, sealed: Sealed) -> bytes:
        return open_token(key, record, sealed, old_seals=self._integrity.first_release)

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        self._writes_in_flight += 1
        try:
            return await self._integrity.write(fn, *args)
        except BaseException:
            self._totals.clear()  # whether it landed is not known for sure: count afresh
            raise
        finally:
            self._writes_in_flight -= 1

    async def create(self, kind: str, name: str, provider: str, secret: bytes, request_id: str = "",
                     expires_in: float = 0) -> TokenRecord:
        self._check_kind(kind)
        provider = self._config.known_provider(check_provider(provider))
        name = self._check_name(name)
        plaintext = normalize_secret(provider, secret, self._config.secret_max_bytes)
        if request_id:
            earlier = self._reader.by_request_id(request_id)
            if earlier is not None:
                if (earlier.kind, earlier.name, earlier.provider) != (kind, name, provider):
                    raise AlreadyExistsError("this request_id was already used for another token; use a new one")
                return earlier
        now = self._now_us()
        record = TokenRecord(secrets.token_hex(12), kind, name, provider, now, now, expiry_us(now, expires_in))
        sealed = self._seal(record, plaintext)
        await self._write(self._writer.insert, record, sealed, request_id or None)
        self._counted(kind, provider, +1)
        log.info("created %s token id=%s name=%r provider=%s", kind, record.id, name, provider)
        self._audit("token-created", record)
        return record

    def find(self, kind: str, *, token_id: str = "", name: str = "") -> TokenRecord:
        self._check_kind(kind)
        if token_id:
            record = self._reader.by_id(token_id)
            if record is None or (kind and record.kind != kind):
                raise NotFoundError(f"no {kind or 'stored'} token with id {token_id!r}: see 'qpu-broker token list'")
            return record
        if not name:
            raise InvalidArgumentError("name a token by id or by name")
        record = self._reader.by_name(kind, canonical_name(name))
        if record is None:
            raise NotFoundError(f"no {kind} token named {name!r}: see 'qpu-broker token list'")
        return record

    def list(self, provider: str, limit: int, offset: int) -> tuple[list[TokenRecord], int]:
        """One page of personal tokens (organization tokens live on the org link) and their total."""
        if provider:
            provider = check_provider(provider)
        records = self._reader.list(PERSONAL, provider or None, min(limit or PAGE_MAX, PAGE_MAX), offset)
        return records, self._total(PERSONAL, provider)

    def _total(self, kind: str, provider: str = "") -> int:
        if self._totals_accepted != self._integrity.accepted:
            self._totals.clear()
            self._totals_accepted = self._integrity.accepted
        key = (kind, provider)
        total = self._totals.get(key)
        if total is None:
            total = self._reader.count(kind, provider or None)
            if not self._writes_in_flight:
                self._totals[key] = total
        return total

    def _counted(self, kind: str, provider: str, delta: int) -> None:
        for key in ((kind, provider), (kind, "")):
            if key in self._totals:
                self._totals[key] += delta

    def count(self) -> int:
        return self._total(PERSONAL)

    def check_expiry(self, name: str, expires_us: int) -> None:
        """Refuse an expired token, saying how to renew it (the way ssh-add -t bounds a key)."""
        if is_expired(expires_us, self._now_us()):
            raise expired_error(name, expires_us)

    async def update(self, record: TokenRecord, *, name: str | None, secret: bytes | None,
                     expires_in: float | None = None) -> TokenRecord:
        self._check_kind(record.kind)
        if name is None and secret is None and expires_in is None:
            raise InvalidArgumentError("nothing to update: give a new name, a new secret, or a lifetime")
        if name is not None:
            name = self._check_name(name)
        if expires_in is not None:
            check_lifetime(expires_in)  # refused before anything is written
        plaintext = normalize_secret(record.provider, secret, self._config.secret_max_bytes) \
            if secret is not None else None
        renamed = await self._write(self._update, record.id, name, plaintext, expires_in)
        self._events.publish(TokenChanged(record.id))
        if name is not None and name != record.name:
            self._audit("token-renamed", renamed, old_name=record.name)
        if secret is not None:
            self._audit("token-rotated", renamed)
        if expires_in is not None:
            self._audit("token-lifetime-set", renamed, expires_us=renamed.expires_us)
        log.info("updated %s token id=%s%s%s", record.kind, record.id,
                 f" renamed {record.name!r} -> {name!r}" if name is not None and name != record.name else "",
                 " secret rotated" if secret is not None else "")
        return renamed

    def _update(self, token_id: str, name: str | None, plaintext: bytes | None, expires_in: float | None) -> TokenRecord:
        """Read, re-seal and write the row in one write transaction: two updates at once (a rename
        and a rotate) each start from what the other wrote, never from a stale copy."""
        current = self._writer.by_id(token_id)
        if current is None:
            raise NotFoundError(f"no token with id {token_id!r}: see 'qpu-broker token list'")
        # Each version of a row has a later updated_us than the last, even if the clock went back:
        # the store's state digest tells versions apart by it.
        now = max(self._now_us(), current.updated_us + 1)
        expires_us = current.expires_us if expires_in is None else expiry_us(now, expires_in)
        renamed = dataclasses.replace(current, name=current.name if name is None else name, updated_us=now,
                                      expires_us=expires_us)
        if plaintext is None:  # the name and times are sealed with the secret: a rename re-seals it too
            try:
                plaintext = self._open(self._keys.key(), current, self._writer.sealed(token_id))
            except crypto.DecryptionError:
                raise FailedPreconditionError(
                    f"the stored record of token {current.name!r} (id {token_id}) does not open: rotate it "
                    "('qpu-broker token rotate') or delete it") from None
        if name is not None:
            self._writer.rename(current, name, now)
        self._writer.replace_secret(token_id, self._seal(renamed, plaintext), now, expires_us)
        return renamed

    def defaults(self) -> dict[str, str]:
        """provider -> the id of its default personal token (it may since have been deleted)."""
        self._integrity.refuse_if_rolled_back()
        return _defaults(self._reader)

    async def set_default(self, provider: str, record: TokenRecord | None) -> None:
        """`record` is `provider`'s default from now on; None: it has none."""
        def write() -> None:
            current = {k: v for k, v in _defaults(self._writer).items() if k != provider}
            if record is not None:
                current[provider] = record.id
            self._writer.set_meta(default_tokens=json.dumps(current, sort_keys=True))

        await self._write(write)
        log.info("default %s token: %s", provider, f"id={record.id} name={record.name!r}" if record else "none")
        self._events.publish(Audited("default-set", {"provider": provider, "token_id": record.id if record else "",
                                                     "token_name": record.name if record else ""}))

    async def delete(self, record: TokenRecord) -> None:
        self._check_kind(record.kind)
        await self._write(self._writer.delete, record.id)
        self._counted(record.kind, record.provider, -1)
        self._events.publish(TokenChanged(record.id))
        log.info("deleted %s token id=%s name=%r", record.kind, record.id, record.name)
        self._audit("token-deleted", record)

    def secret(self, record: TokenRecord) -> Secret:
        """Open one stored secret; a damaged record fails alone, naming itself."""
        self._integrity.refuse_if_rolled_back()
        sealed = self._reader.sealed(record.id)
        try:
            return Secret(self._open(self._keys.key(), record, sealed))
        except crypto.DecryptionError:
            raise FailedPreconditionError(
                f"the stored record of token {record.name!r} (id {record.id}) does not open: it was altered "
                "on disk (its secret, name or another field); rotate it ('qpu-broker token rotate') or delete it"
            ) from None

    async def check(self) -> tuple[int, list[Damaged]]:
        """Open every stored record (on the writer thread): how many, and which do not open."""
        key = self._keys.key()

        def scan() -> tuple[int, list[Damaged]]:
            damaged, checked = [], 0
            for record, sealed in self._writer.all_sealed():
                checked += 1
                try:
                    self._open(key, record, sealed)
                except crypto.DecryptionError:
                    damaged.append(Damaged(record, "the record does not open under this store's key and its own "
                                                   "fields (its secret, name or another field altered, or moved "
                                                   "from another record)"))
            return checked, damaged

        return await self._integrity.on_writer(scan)
