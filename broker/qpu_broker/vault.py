"""The vault: personal tokens, the data key, and locking.

This is domain code: it knows tokens, keys and the store, not gRPC. Reads of
metadata run inline (they never need a key); writes run one at a time on a
writer thread with its own connection, so the event loop never waits on fsync;
key derivation runs on its own thread so a slow unlock blocks nobody else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.secret import Secret

from . import crypto, keys
from .config import Config
from .keys import KeySource, KeyUnavailable
from .secrets_format import normalize_secret
from .store import Sealed, Store, TokenRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

ORG_LOGIN_AD = b"qpu-broker/v1/org-login"
PERSONAL = "personal"
ORGANIZATION = "organization"
INLINE = "inline"
PAGE_MAX = 1000
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0


@dataclasses.dataclass(frozen=True)
class Damaged:
    record: TokenRecord
    reason: str


def _token_ad(record: TokenRecord, key_term: int) -> bytes:
    # Binds a ciphertext to its row: moved to another id, kind or provider it fails.
    return b"\0".join([b"qpu-broker/v1/token", record.id.encode(), record.kind.encode(),
                       record.provider.encode(), str(key_term).encode()])


class Vault:
    def __init__(self, config: Config, store_path: pathlib.Path, key_file: pathlib.Path, *,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._store_path = store_path
        self._key_file = key_file
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._monotonic = monotonic
        self._reader = Store(store_path)
        self._writer = Store(store_path)
        self._write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._kdf_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kdf")
        # (kind, provider) -> count; counting 100k rows costs ms, so reuse until a write.
        self._totals: dict[tuple[str, str], int] = {}
        # Called with a token id after it is rotated, renamed or deleted (drops cached
        # bearers and opened secrets); called with "" on lock (drops them all).
        self.on_change: list[Callable[[str], None]] = []
        self.on_unlock: list[Callable[[], None]] = []
        self._data_key: bytearray | None = None
        self._key_term = 1
        self._lock_reason = ""
        self._unlock_gate = asyncio.Lock()
        self._backoff = 0.0
        self._not_before = 0.0
        self.source = self._open_key()

    # -- keys and locking --------------------------------------------------
    def _open_key(self) -> KeySource:
        wrapped = self._reader.meta("wrapped_key")
        if wrapped is None:
            return self._initialise()
        source = KeySource(self._reader.meta("key_source").decode())
        self._key_term = int(self._reader.meta("key_term") or 1)
        if source is KeySource.PASSPHRASE:
            self._lock_reason = "the store is sealed by a passphrase: run 'qpu-broker unlock'"
        else:
            try:
                self._set_key(keys.unwrap(self._material_kek(source), wrapped, source))
            except KeyUnavailable as exc:
                self._lock_reason = f"cannot unlock: {exc}"
            except crypto.DecryptionError:
                self._lock_reason = self._wrong_material(source)
            if self._lock_reason:
                log.warning("store stays locked: %s", self._lock_reason)
        return source

    def _initialise(self) -> KeySource:
        data_key = crypto.new_key()
        cred = keys.credential_path(self._environ)
        if cred is not None:
            source = KeySource.CREDENTIAL
            try:
                material = keys.read_material(cred, "systemd credential")
            except KeyUnavailable as exc:
                raise FailedPreconditionError(f"cannot create the store: {exc}") from None
        else:
            source = KeySource.KEY_FILE
            if self._key_file.exists():
                raise FailedPreconditionError(
                    f"found a key file {self._key_file} but no store at {self._store_path}: "
                    "restore the store, or move the old key file away to start afresh"
                )
            material = keys.create_key_file(self._key_file)
        kek = keys.kek_from_material(material, source)
        self._writer.set_meta(key_source=source.value, key_term=1,
                              wrapped_key=keys.wrap(kek, data_key, source))
        self._set_key(data_key)
        log.info("created a new store %s, its data key wrapped by %s", self._store_path, source.value)
        return source

    def _material_kek(self, source: KeySource) -> bytes:
        if source is KeySource.CREDENTIAL:
            path = keys.credential_path(self._environ)
            if path is None:
                raise KeyUnavailable(
                    f"the store is sealed by the systemd credential {keys.CREDENTIAL_NAME}, "
                    "which this process was not given (LoadCredentialEncrypted=)"
                )
            return keys.kek_from_material(keys.read_material(path, "systemd credential"), source)
        return keys.kek_from_material(keys.read_material(self._key_file, "key file"), source)

    def _wrong_material(self, source: KeySource) -> str:
        where = self._key_file if source is KeySource.KEY_FILE else f"$CREDENTIALS_DIRECTORY/{keys.CREDENTIAL_NAME}"
        return (f"cannot unlock: the {source.value} {where} does not open the store {self._store_path}; "
                "restore the right one, then run 'qpu-broker unlock'")

    def _set_key(self, key: bytes) -> None:
        self._data_key = bytearray(key)
        self._lock_reason = ""

    def _key(self) -> bytes:
        if self._data_key is None:
            raise LockedError(f"the agent is locked ({self._lock_reason or 'run qpu-broker unlock'})")
        return bytes(self._data_key)

    @property
    def locked(self) -> bool:
        return self._data_key is None

    @property
    def lock_reason(self) -> str:
        return self._lock_reason if self.locked else ""

    def lock(self) -> None:
        if self._data_key is not None:
            # Best effort: overwrite our copy; cipher contexts made from it are gone with it.
            self._data_key[:] = bytes(len(self._data_key))
            self._data_key = None
        self._changed("")
        self._lock_reason = ("locked by request: run 'qpu-broker unlock'" +
                             (" and enter the passphrase" if self.source is KeySource.PASSPHRASE else ""))
        log.info("locked: data key dropped from memory")

    def _check_backoff(self) -> None:
        wait = self._not_before - self._monotonic()
        if wait > 0:
            raise ResourceExhaustedError(f"too many failed unlock attempts: try again in {wait:.1f} s")

    def _failed_attempt(self) -> None:
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_FIRST)
        self._not_before = self._monotonic() + self._backoff

    async def unlock(self, passphrase: bytes) -> None:
        async with self._unlock_gate:
            self._check_backoff()
            if not self.locked:
                return
            wrapped = self._reader.meta("wrapped_key")
            if self.source is KeySource.PASSPHRASE:
                if not passphrase:
                    raise InvalidArgumentError("this store is sealed by a passphrase: give the passphrase to unlock")
                log.info("unlock: deriving the passphrase key")
                kdf = crypto.PassphraseKdf.from_json(self._reader.meta("kdf").decode())
                kek = await self._run(self._kdf_pool, kdf.derive, passphrase)
            else:
                try:
                    kek = self._material_kek(self.source)
                except KeyUnavailable as exc:
                    self._lock_reason = f"cannot unlock: {exc}"
                    raise FailedPreconditionError(self._lock_reason) from None
            try:
                data_key = keys.unwrap(kek, wrapped, self.source)
            except crypto.DecryptionError:
                self._failed_attempt()
                if self.source is KeySource.PASSPHRASE:
                    log.warning("unlock failed: wrong passphrase (next attempt in %.1f s)", self._backoff)
                    raise UnauthenticatedError("cannot unlock: wrong passphrase") from None
                self._lock_reason = self._wrong_material(self.source)
                raise FailedPreconditionError(self._lock_reason) from None
            self._backoff = 0.0
            self._set_key(data_key)
            log.info("unlocked")
            for listener in self.on_unlock:
                listener()

    async def change_passphrase(self, old: bytes, new: bytes) -> KeySource:
        """Set, change or (new empty) remove the passphrase: re-wraps the data key only."""
        async with self._unlock_gate:
            self._check_backoff()
            if self.source is KeySource.PASSPHRASE:
                if not old:
                    raise InvalidArgumentError("give the current passphrase to change it")
                kdf = crypto.PassphraseKdf.from_json(self._reader.meta("kdf").decode())
                kek = await self._run(self._kdf_pool, kdf.derive, old)
                try:
                    data_key = keys.unwrap(kek, self._reader.meta("wrapped_key"), self.source)
                except crypto.DecryptionError:
                    self._failed_attempt()
                    raise UnauthenticatedError("cannot change the passphrase: the current passphrase is wrong") from None
                self._backoff = 0.0
            else:
                data_key = self._key()
            if new:
                kdf = await self._run(self._kdf_pool, crypto.calibrate_kdf, self._config.kdf_seconds)
                kek = await self._run(self._kdf_pool, kdf.derive, new)
                await self._write(self._writer.set_meta, key_source=KeySource.PASSPHRASE.value, kdf=kdf.to_json(),
                                  wrapped_key=keys.wrap(kek, data_key, KeySource.PASSPHRASE))
                self.source = KeySource.PASSPHRASE
                # The old key file no longer opens anything; do not leave it lying about.
                self._key_file.unlink(missing_ok=True)
                log.info("passphrase set: data key re-wrapped (Argon2id, %d iterations)", kdf.iterations)
            else:
                if self.source is not KeySource.PASSPHRASE:
                    raise InvalidArgumentError("the store has no passphrase to remove: give a new passphrase")
                self._key_file.unlink(missing_ok=True)
                kek = keys.kek_from_material(keys.create_key_file(self._key_file), KeySource.KEY_FILE)
                await self._write(self._writer.set_meta, key_source=KeySource.KEY_FILE.value, kdf="",
                                  wrapped_key=keys.wrap(kek, data_key, KeySource.KEY_FILE))
                self.source = KeySource.KEY_FILE
                log.info("passphrase removed: data key re-wrapped under the key file %s", self._key_file)
            self._set_key(data_key)
            return self.source

    # -- tokens ------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if kind == ORGANIZATION:
            raise FailedPreconditionError(
                "organization tokens need an organization server, and this daemon is not logged in to one"
            )
        if kind == INLINE:
            raise InvalidArgumentError("inline tokens are passed per call and never stored: use personal")

    def _check_name(self, name: str) -> str:
        if not name or not name.strip():
            raise InvalidArgumentError("a token name must not be empty")
        if len(name) > self._config.name_max_chars:
            raise InvalidArgumentError(
                f"a token name may have at most {self._config.name_max_chars} characters; this one has {len(name)}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise InvalidArgumentError(f"the token name {name!r} contains a control character")
        return name

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def _seal(self, record: TokenRecord, secret: bytes) -> Sealed:
        nonce, ciphertext = crypto.seal(self._key(), secret, _token_ad(record, self._key_term))
        return Sealed(nonce, ciphertext, self._key_term)

    async def create(self, kind: str, name: str, provider: str, secret: bytes, request_id: str = "") -> TokenRecord:
        self._check_kind(kind)
        check_provider(provider)
        self._check_name(name)
        plaintext = normalize_secret(provider, secret, self._config.secret_max_bytes)
        if request_id:
            earlier = self._reader.by_request_id(request_id)
            if earlier is not None:
                return earlier
        now = self._now_us()
        record = TokenRecord(secrets.token_hex(12), kind, name, provider, now, now)
        sealed = self._seal(record, plaintext)
        await self._write(self._writer.insert, record, sealed, request_id or None)
        log.info("created %s token id=%s name=%r provider=%s", kind, record.id, name, provider)
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
        record = self._reader.by_name(kind, name)
        if record is None:
            raise NotFoundError(f"no {kind} token named {name!r}: see 'qpu-broker token list'")
        return record

    def list(self, kind: str, provider: str, limit: int, offset: int) -> tuple[list[TokenRecord], int]:
        if provider:
            check_provider(provider)
        if kind != PERSONAL:  # organization tokens come from an org server: none here yet
            return [], 0
        records = self._reader.list(kind, provider or None, min(limit or PAGE_MAX, PAGE_MAX), offset)
        return records, self._total(kind, provider)

    def _total(self, kind: str, provider: str = "") -> int:
        key = (kind, provider)
        if key not in self._totals:
            self._totals[key] = self._reader.count(kind, provider or None)
        return self._totals[key]

    def count(self) -> int:
        return self._total(PERSONAL)

    async def update(self, record: TokenRecord, *, name: str | None, secret: bytes | None) -> TokenRecord:
        self._check_kind(record.kind)
        if name is None and secret is None:
            raise InvalidArgumentError("nothing to update: give a new name, a new secret, or both")
        if name is not None:
            self._check_name(name)
        sealed = self._seal(record, normalize_secret(record.provider, secret, self._config.secret_max_bytes)) \
            if secret is not None else None
        now = self._now_us()
        await self._write(self._update, record, name, sealed, now)
        self._changed(record.id)
        log.info("updated %s token id=%s%s%s", record.kind, record.id,
                 f" renamed {record.name!r} -> {name!r}" if name is not None and name != record.name else "",
                 " secret rotated" if sealed is not None else "")
        return dataclasses.replace(record, name=record.name if name is None else name, updated_us=now)

    def _update(self, record: TokenRecord, name: str | None, sealed: Sealed | None, now: int) -> None:
        with self._writer.transaction():
            if name is not None:
                self._writer.rename(record, name, now)
            if sealed is not None:
                self._writer.replace_secret(record.id, sealed, now)

    async def delete(self, record: TokenRecord) -> None:
        self._check_kind(record.kind)
        await self._write(self._writer.delete, record.id)
        self._changed(record.id)
        log.info("deleted %s token id=%s name=%r", record.kind, record.id, record.name)

    def secret(self, record: TokenRecord) -> Secret:
        """Open one stored secret; a damaged record fails alone, naming itself."""
        sealed = self._reader.sealed(record.id)
        try:
            return Secret(crypto.open_sealed(self._key(), sealed.nonce, sealed.ciphertext, _token_ad(record, sealed.key_term)))
        except crypto.DecryptionError:
            raise FailedPreconditionError(
                f"the stored secret of token {record.name!r} (id {record.id}) does not open: it was altered "
                "on disk; rotate it ('qpu-broker token rotate') or delete it"
            ) from None

    async def check(self) -> tuple[int, list[Damaged]]:
        key = self._key()

        def scan() -> tuple[int, list[Damaged]]:
            damaged, checked = [], 0
            for record, sealed in self._writer.all_sealed():
                checked += 1
                try:
                    crypto.open_sealed(key, sealed.nonce, sealed.ciphertext, _token_ad(record, sealed.key_term))
                except crypto.DecryptionError:
                    damaged.append(Damaged(record, "the ciphertext does not open under this store's key and record "
                                                   "(altered, or moved from another record)"))
            return checked, damaged

        return await self._write(scan)

    # -- the organization login ---------------------------------------------
    async def save_org_login(self, server: str, ca_pem: bytes, api_key: bytes) -> None:
        """Keep the org server's address, CA and the user's API key (sealed) in the store."""
        doc = json.dumps({"server": server, "ca_pem": ca_pem.decode(), "api_key": api_key.decode()}).encode()
        nonce, ciphertext = crypto.seal(self._key(), doc, ORG_LOGIN_AD)
        await self._write(self._writer.set_meta, org_login=nonce + ciphertext)

    def org_login(self) -> tuple[str, bytes, Secret] | None:
        blob = self._reader.meta("org_login")
        if not blob:
            return None
        try:
            doc = json.loads(crypto.open_sealed(self._key(), blob[:crypto.NONCE_SIZE], blob[crypto.NONCE_SIZE:], ORG_LOGIN_AD))
        except crypto.DecryptionError:
            raise FailedPreconditionError("the stored organization login does not open: run 'qpu-broker org login' again") from None
        return doc["server"], doc["ca_pem"].encode(), Secret(doc["api_key"])

    def has_org_login(self) -> bool:
        return bool(self._reader.meta("org_login"))

    async def clear_org_login(self) -> None:
        await self._write(self._writer.set_meta, org_login=b"")

    # -- plumbing ----------------------------------------------------------
    def _changed(self, token_id: str) -> None:
        for listener in self.on_change:
            listener(token_id)

    async def _run(self, pool: concurrent.futures.Executor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._write_pool, lambda: fn(*args, **kwargs))
        finally:
            self._totals.clear()

    def close(self) -> None:
        self.lock()
        self._write_pool.shutdown(wait=True)
        self._kdf_pool.shutdown(wait=True)
        self._reader.close()
        self._writer.close()
