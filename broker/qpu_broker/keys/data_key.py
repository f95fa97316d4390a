"""The data key's life: made and wrapped, unwrapped at start or unlock, dropped on lock.

Every secret is sealed under one random data key, stored only wrapped by a
key-encryption key (see `keys`). This module holds that key in memory, decides
whether the agent is locked and why, and backs off after wrong passphrases.

The key is read on the store's writer thread (a rotation seals there), installed by an
unlock on the event loop, and dropped on the loop (lock) or the writer thread (a store held).
One lock covers every read of the key and every drop or swap of it: a reader gets the
whole key, or `LockedError` once it is gone; never the zeros of a wipe half done.

Once `lock` has answered, the agent stays locked until an unlock asked for after it: every
drop (lock or hold) is counted under that lock, and an unlock installs its key only if no
drop came since it was asked for (checked and installed under the same lock). So an unlock
whose Argon2 was running when `lock` came is refused; a passphrase change never installs the
key at all (it re-wraps the key the agent already holds, or one it derived itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import pathlib
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)

from qpu_broker.common.config import Config
from qpu_broker.common.hardening import LockedBuffer, release_freed_memory
from qpu_broker.keys import crypto
from qpu_broker.keys import kek as keys
from qpu_broker.keys.kek import KeySource, KeyUnavailable
from qpu_broker.store.db import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0


@dataclasses.dataclass(frozen=True)
class KeyStatus:
    locked: bool
    lock_reason: str  # empty when unlocked
    source: KeySource
    memory_locked: bool  # the data key's pages are mlock'ed (never swapped out)


class Keyring:
    def __init__(self, config: Config, *, reader: Store, writer: Store, store_path: pathlib.Path,
                 key_file: pathlib.Path, environ: Mapping[str, str], monotonic: Callable[[], float],
                 on_lock: Callable[[], None]) -> None:
        """`on_lock` is told whenever the key is dropped."""
        self._config = config
        self._reader = reader
        self._writer = writer
        self._store_path = store_path
        self._key_file = key_file
        self._environ = environ
        self._monotonic = monotonic
        self._on_lock = on_lock
        self._kdf_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kdf")
        self._key_guard = threading.Lock()  # held by each read of _data_key and each drop or swap of it
        self._data_key: LockedBuffer | None = None
        self.drops = 0  # how many times the key was dropped (lock or hold), raised under _key_guard
        self.key_term = 1
        self._lock_reason = ""
        self._unlock_gate = asyncio.Lock()
        self._backoff = 0.0
        self._not_before = 0.0
        self._held = ""  # a reason the store must not be used even with the key (a rollback)
        self.created = False  # this process made the store (no wrapped key was there at open)
        self.source = self._open_key()

    def _open_key(self) -> KeySource:
        wrapped = self._reader.meta("wrapped_key")
        if wrapped is None:
            return self._initialise()
        source = KeySource(self._reader.meta("key_source").decode())
        self.key_term = int(self._reader.meta("key_term") or 1)
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
        self.created = True
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

    def _set_key(self, key: bytes, drops: int | None = None) -> None:
        """Install the key; with `drops` (the count when the unlock was asked for), only if nothing
        dropped the key since: a lock or hold that came meanwhile wins, and the answer says so."""
        crypto.refuse_zero_key(key)
        fresh = LockedBuffer(key)
        with self._key_guard:
            if drops is None or drops == self.drops:
                old, self._data_key = self._data_key, fresh
                self._lock_reason = ""
                if old is not None:
                    old.wipe()
                return
        fresh.wipe()
        self.refuse_if_dropped_since(drops)

    def refuse_if_dropped_since(self, drops: int) -> None:
        """An unlock asked for when the count was `drops` is answered with what came since."""
        if self.drops == drops:
            return
        if self._held:
            raise FailedPreconditionError(self._held)
        raise LockedError("the agent was locked while this unlock was under way, and stays locked: run "
                          "'qpu-broker unlock' again")

    def _drop_key(self) -> None:
        """Wipe the key (best effort: our copy; cipher contexts made from it are gone with it)."""
        with self._key_guard:
            self.drops += 1  # even when already locked: an unlock under way must not finish
            if self._data_key is not None:
                self._data_key.wipe()
                self._data_key = None

    def key(self) -> bytes:
        with self._key_guard:
            if self._data_key is None:
                raise LockedError(f"the agent is locked ({self._lock_reason or 'run qpu-broker unlock'})")
            key = bytes(self._data_key)
        crypto.refuse_zero_key(key)
        return key

    def status(self) -> KeyStatus:
        held = self._data_key
        return KeyStatus(self.locked, self.lock_reason, self.source, held is not None and held.locked)

    @property
    def locked(self) -> bool:
        return self._data_key is None

    @property
    def lock_reason(self) -> str:
        return self._lock_reason if self.locked else ""

    def lock(self, reason: str = "") -> None:
        # The reason first: a reader refused by the drop is told why.
        self._lock_reason = reason or ("locked by request: run 'qpu-broker unlock'" +
                                       (" and enter the passphrase" if self.source is KeySource.PASSPHRASE else ""))
        self._drop_key()
        self._on_lock()
        release_freed_memory()
        log.info("locked: data key dropped from memory")

    def reconfigure(self, config: Config) -> None:
        self._config = config

    def hold(self, reason: str) -> None:
        """Lock, and refuse every unlock until `release()`: the store itself is in question."""
        self._held = reason
        self._lock_reason = reason
        self._drop_key()
        self._on_lock()

    def release(self) -> None:
        """The hold is lifted: a key-file or credential store opens again as at start."""
        self._held = ""
        self._lock_reason = "run 'qpu-broker unlock'"
        if self.source is not KeySource.PASSPHRASE:
            try:
                self._set_key(keys.unwrap(self._material_kek(self.source), self._reader.meta("wrapped_key"),
                                          self.source))
            except (KeyUnavailable, crypto.DecryptionError) as exc:
                self._lock_reason = f"cannot unlock: {exc}"

    def _check_backoff(self) -> None:
        wait = self._not_before - self._monotonic()
        if wait > 0:
            raise ResourceExhaustedError(f"too many failed unlock attempts: try again in {wait:.1f} s")

    def _failed_attempt(self) -> None:
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_FIRST)
        self._not_before = self._monotonic() + self._backoff

    async def unlock(self, passphrase: bytes, drops: int) -> bool:
        """True when this call unlocked the agent (False: it was unlocked already). `drops`: the
        count when the unlock was asked for; a lock or hold since then refuses it."""
        async with self._unlock_gate:
            if self._held:
                raise FailedPreconditionError(self._held)
            self._check_backoff()
            if not self.locked:
                return False
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
            self._set_key(data_key, drops)
            log.info("unlocked")
            return True

    async def change_passphrase(self, old: bytes, new: bytes, *,
                                commit: Callable[..., Awaitable[object]]) -> KeySource:
        """Set, change or (new empty) remove the passphrase: re-wraps the data key only, and never
        installs it: a lock while Argon2 runs leaves the agent locked, under the new wrapping.
        `commit(fn, *args)` runs the store write the store's way (its counter and MAC move with it)."""
        async with self._unlock_gate:
            if self._held:
                raise FailedPreconditionError(self._held)
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
                data_key = self.key()
            if new:
                log.info("passphrase change: deriving the new key (Argon2id)")
                kdf = await self._run(self._kdf_pool, crypto.calibrate_kdf, self._config.kdf_seconds)
                kek = await self._run(self._kdf_pool, kdf.derive, new)
                await commit(self._writer.set_meta, key_source=KeySource.PASSPHRASE.value, kdf=kdf.to_json(),
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
                await commit(self._writer.set_meta, key_source=KeySource.KEY_FILE.value, kdf="",
                             wrapped_key=keys.wrap(kek, data_key, KeySource.KEY_FILE))
                self.source = KeySource.KEY_FILE
                log.info("passphrase removed: data key re-wrapped under the key file %s", self._key_file)
            return self.source

    async def _run(self, pool: concurrent.futures.Executor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        self.lock()
        self._kdf_pool.shutdown(wait=True)
