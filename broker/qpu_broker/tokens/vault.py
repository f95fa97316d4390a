"""The vault: personal tokens, sealed under the data key the Keyring holds.

This is domain code: it knows tokens, keys and the store, not gRPC. Reads of
metadata run inline (they never need a key); writes run one at a time on a
writer thread with its own connection, so the event loop never waits on fsync;
key derivation runs on its own thread so a slow unlock blocks nobody else.
"""

from __future__ import annotations

import asyncio
import base64
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
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    UnauthenticatedError,
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
from qpu_broker.common.secret_shapes import normalize_secret
from qpu_broker.keys import crypto
from qpu_broker.keys.data_key import Keyring, KeyStatus
from qpu_broker.keys.kek import KeySource
from qpu_broker.store.anchor import GenerationAnchor, Seen
from qpu_broker.store.db import Sealed, Store, StoreEdited, TokenRecord
from qpu_broker.store.state import StateDigest, state_key
from qpu_broker.tokens.events import Audited, Events, Locked, TokenChanged, Unlocked

log = logging.getLogger(__name__)
T = TypeVar("T")

ORG_LOGIN_AD = b"qpu-broker/v1/org-login"
PERSONAL = "personal"
ORGANIZATION = "organization"
INLINE = "inline"
PAGE_MAX = 1000


@dataclasses.dataclass(frozen=True)
class OrgLogin:
    servers: tuple[str, ...]  # HOST:PORT of each replica of the org, tried in this order
    login_id: str  # what its usage records are queued under (common/org_servers.login_id)
    ca_pem: bytes
    device_id: str = ""
    device_key: Secret | None = None  # the device's Ed25519 private key, 32 raw bytes: made here, never sent
    store_id: str = ""  # the org store the device is enrolled in (signed in every access token request)
    device_expires_us: int = 0  # 0: never
    # An API key of the release before (a login stored then): redeemed once, as an enrollment code,
    # for a device at the first connect; then the blob holds the device and no key.
    legacy_key: Secret | None = None


@dataclasses.dataclass(frozen=True)
class Damaged:
    record: TokenRecord
    reason: str


SEAL = 2  # the associated-data recipe new seals use
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


EDITED_ADVICE = ("This is not what putting back a backup does: restore a copy you trust. Only if you changed "
                 "the file yourself, run 'qpu-broker check --accept-rollback'")


def _token_ad(record: TokenRecord, key_term: int, seal: int) -> bytes:
    """Binds a ciphertext to every field of its row (seal 2): a row whose name, kind,
    provider, id or times were edited, or a ciphertext moved to another row, fails to open.
    Seal 1 (the first release) bound id, kind and provider only."""
    if seal == 1:
        return b"\0".join([b"qpu-broker/v1/token", record.id.encode(), record.kind.encode(),
                           record.provider.encode(), str(key_term).encode()])
    fields = [record.id, record.kind, record.name, record.provider, str(record.created_us), str(record.updated_us),
              str(record.expires_us), str(key_term)]
    # Length-prefixed, so no two different rows encode alike whatever their names hold.
    return b"qpu-broker/v2/token" + b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)


class Vault:
    def __init__(self, config: Config, store_path: pathlib.Path, key_file: pathlib.Path, events: Events, *,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._store_path = store_path
        self._reader = Store(store_path)
        self._writer = Store(store_path)
        self._write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        # (kind, provider) -> count. Counting a million rows costs 60 ms, so a count is kept and
        # moved by each create and delete; one is taken (and kept) only while no write is in
        # flight, so a write never lands both in a count and as a move of it.
        self._totals: dict[tuple[str, str], int] = {}
        self._writes_in_flight = 0
        self._events = events
        self._anchor = GenerationAnchor(key_file.with_name("store.generation"))
        self._keys = Keyring(config, reader=self._reader, writer=self._writer, store_path=store_path,
                             key_file=key_file, environ=os.environ if environ is None else environ,
                             monotonic=monotonic, commit=self._write, on_lock=lambda: events.publish(Locked()))
        self._last_generation = 0  # the highest generation this daemon wrote or accepted
        self._state: StateDigest | None = None  # the store's verified state: None until the key is first at hand
        self._first_release = self._is_first_release_store()  # decided before the anchor is first written
        self.rollback = ""  # why the store is held (an older, foreign or edited store), until accepted
        self._check_generation()
        if not self.rollback:
            self._last_generation = self._writer.generation()
        self._verify_state()

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: limits and the KDF target apply from the next call."""
        self._config = config
        self._keys.reconfigure(config)

    # -- keys and locking (the Keyring holds the data key) -----------------
    def _key(self) -> bytes:
        return self._keys.key()

    @property
    def locked(self) -> bool:
        return self._keys.locked

    def key_status(self) -> KeyStatus:
        return self._keys.status()

    def lock(self, reason: str = "") -> None:
        self._keys.lock(reason)

    async def unlock(self, passphrase: bytes) -> None:
        """The last command answered wins: a lock (or a hold) that comes while this runs leaves the
        agent locked, and this unlock's answer says so."""
        drops = self._keys.drops
        if await self._keys.unlock(passphrase, drops):
            await self._on_writer(self._verify_state)
            if self.rollback:
                raise FailedPreconditionError(self._keys.lock_reason)
            # Not told if a lock or hold came meanwhile; one that lands while the listeners hear
            # it (a hold on the writer thread) is what this unlock answers, once they have.
            self._keys.refuse_if_dropped_since(drops)
            self._events.publish(Unlocked())
            self._keys.refuse_if_dropped_since(drops)

    async def change_passphrase(self, old: bytes, new: bytes) -> KeySource:
        # A locked passphrase store is unlocked first, as 'unlock' would (its events included);
        # the first time in a process, that also verifies the store before its first write.
        if self.locked and self._keys.source is KeySource.PASSPHRASE and old:
            try:
                await self.unlock(old)
            except UnauthenticatedError:
                raise UnauthenticatedError("cannot change the passphrase: the current passphrase is wrong") from None
        source = await self._keys.change_passphrase(old, new)
        self._events.publish(Audited("passphrase-changed", {"key_source": source.value}))
        return source

    def _audit(self, action: str, record: TokenRecord, **more: object) -> None:
        self._events.publish(Audited(action, {"token_id": record.id, "token_name": record.name,
                                              "provider": record.provider, **more}))

    def data_key(self) -> bytes:
        """The data key itself, for keys derived from it for one purpose (the audit log's chain)."""
        return self._key()

    # -- tokens ------------------------------------------------------------
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
        nonce, ciphertext = crypto.seal(self._key(), secret, _token_ad(record, self._keys.key_term, SEAL))
        return Sealed(nonce, ciphertext, self._keys.key_term, SEAL)

    def _is_first_release_store(self) -> bool:
        """Never written by this release: old-style rows are genuine only here (neither a meta flag
        nor the generation alone decides: both live in the data dir; the anchor does not)."""
        return (self._reader.meta("seal") != str(SEAL).encode() and self._reader.generation() == 0
                and self._anchor.read() is None)

    def _open(self, key: bytes, record: TokenRecord, sealed: Sealed) -> bytes:
        if sealed.seal < SEAL and not self._first_release:
            # Every row was re-sealed when this release first opened the store: an old-style row
            # now is a planted one.
            raise crypto.DecryptionError
        return crypto.open_sealed(key, sealed.nonce, sealed.ciphertext, _token_ad(record, sealed.key_term, sealed.seal))

    def _upgrade_seals(self) -> None:
        """Re-seal rows of an older recipe under the current one (needs the key; on the writer thread)."""
        if self._writer.meta("seal") == str(SEAL).encode():
            return
        if not self._first_release:
            self._writer.set_meta(seal=SEAL)  # old-style rows here are planted: refused, never re-sealed
            return
        key = self._key()

        def reseal() -> None:
            for record, sealed in list(self._writer.all_sealed()):
                if sealed.seal >= SEAL:
                    continue
                try:
                    plaintext = crypto.open_sealed(key, sealed.nonce, sealed.ciphertext,
                                                   _token_ad(record, sealed.key_term, sealed.seal))
                except crypto.DecryptionError:
                    continue  # damaged: left for 'check' to report; rotating it re-seals it
                self._writer.replace_secret(record.id, self._seal(record, plaintext), record.updated_us,
                                            record.expires_us)
            self._writer.set_meta(seal=SEAL)

        self._commit(reseal)
        self._first_release = False
        log.info("store upgraded: every record is now bound to all of its fields")

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
                plaintext = self._open(self._key(), current, self._writer.sealed(token_id))
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
        self._refuse_if_rolled_back()
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
        self._refuse_if_rolled_back()
        sealed = self._reader.sealed(record.id)
        try:
            return Secret(self._open(self._key(), record, sealed))
        except crypto.DecryptionError:
            raise FailedPreconditionError(
                f"the stored record of token {record.name!r} (id {record.id}) does not open: it was altered "
                "on disk (its secret, name or another field); rotate it ('qpu-broker token rotate') or delete it"
            ) from None

    async def check(self) -> tuple[int, list[Damaged]]:
        key = self._key()

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

        return await self._on_writer(scan)

    # -- the organization login ---------------------------------------------
    async def save_org_login(self, login: OrgLogin) -> None:
        """Keep the org servers' addresses, CA and the device's key (sealed) in the store."""
        # "server" is the login's id: the only server of a login stored before there could be
        # several, so such a login reads back as that server under the same id.
        if login.device_key is None:
            raise FailedPreconditionError("an organization login is saved with its device, never with a code or key")
        doc = json.dumps({"servers": list(login.servers), "server": login.login_id, "ca_pem": login.ca_pem.decode(),
                          "device_id": login.device_id, "store_id": login.store_id,
                          "device_expires_us": login.device_expires_us,
                          "device_key": base64.b64encode(login.device_key.reveal()).decode()}).encode()
        nonce, ciphertext = crypto.seal(self._key(), doc, ORG_LOGIN_AD)
        await self._write(self._writer.set_meta, org_login=nonce + ciphertext)
        self._events.publish(Audited("org-login", {"server": ",".join(login.servers)}))

    def org_login(self) -> OrgLogin | None:
        blob = self._reader.meta("org_login")
        if not blob:
            return None
        try:
            doc = json.loads(crypto.open_sealed(self._key(), blob[:crypto.NONCE_SIZE], blob[crypto.NONCE_SIZE:], ORG_LOGIN_AD))
        except crypto.DecryptionError:
            raise FailedPreconditionError("the stored organization login does not open: run 'qpu-broker org login' again") from None
        servers, login_id, ca_pem = tuple(doc.get("servers") or [doc["server"]]), doc["server"], doc["ca_pem"].encode()
        if "device_key" not in doc:  # the release before: an API key, redeemed for a device at the first connect
            return OrgLogin(servers, login_id, ca_pem, legacy_key=Secret(doc["api_key"]))
        return OrgLogin(servers, login_id, ca_pem, doc["device_id"], Secret(base64.b64decode(doc["device_key"])),
                        doc["store_id"], int(doc.get("device_expires_us", 0)))

    def has_org_login(self) -> bool:
        return bool(self._reader.meta("org_login"))

    async def clear_org_login(self) -> None:
        await self._write(self._writer.set_meta, org_login=b"")
        self._events.publish(Audited("org-logout"))

    # -- rollback detection ----------------------------------------------------
    def _seen(self) -> Seen:
        store_id = self._writer.meta("store_id")
        if store_id is None:
            store_id = secrets.token_hex(8).encode()
            self._writer.set_meta(store_id=store_id)
        self._store_id = store_id.decode(errors="replace")
        return Seen(self._store_id, self._writer.generation())

    def _check_generation(self) -> None:
        """At open: an edited, older or foreign store holds the agent locked until the user accepts it."""
        problem = self._writer.structure_problem()
        if problem:
            self._hold(f"the store file was edited: {problem}", EDITED_ADVICE)
            return
        current = self._seen()
        # Only a store this process just made is exempt: one emptied by hand is not new.
        verdict = "" if self._keys.created else self._anchor.verdict(current)
        if verdict:
            self._hold(verdict)
        # Otherwise the anchor moves only once the store is verified (_verify_state): a forged
        # counter never raises it.

    def _hold(self, verdict: str,
              advice: str = "If you restored it on purpose, run 'qpu-broker check --accept-rollback'") -> None:
        """The store is in question: held locked, reported by status and check, until accepted."""
        self.rollback = verdict
        reason = f"{verdict}. {advice}"
        log.warning("store %s: %s", self._store_path, reason)
        self._keys.hold(reason)

    def _refuse_if_rolled_back(self, store: Store | None = None) -> None:
        """Nothing is written to, or used from, a store in question; and one put back under a
        running daemon (its generation now below what this daemon wrote) is caught here."""
        store = store or self._reader
        # The writer sets _last_generation only after its commit, so read it first: a generation
        # read after it is at least as new (reading them the other way round races a write).
        last = self._last_generation
        if not self.rollback and store.generation() < last:
            current = Seen((store.meta("store_id") or b"?").decode(errors="replace"), store.generation())
            self._hold(f"the store went back to generation {current.generation} while this daemon ran "
                       f"(it had written {last}): a backup was put back")
        if self._state is None and not self.locked and not self.rollback:
            raise LockedError("the agent is unlocking (its store is being verified): try again in a moment")
        if self.rollback:  # the agent is held locked: the same error as any locked use
            raise LockedError(f"{self.rollback}: nothing is written or used until "
                              "'qpu-broker check --accept-rollback'")

    async def accept_rollback(self) -> None:
        """The user says this store is the one to use: remember it, and unlock as at start."""
        if not self.rollback:
            raise InvalidArgumentError("there is no rollback to accept: the store is the one this machine last saw")
        seen = await self._on_writer(self._seen)
        self._anchor.record(seen, allow_lower=True)
        self._last_generation = seen.generation
        log.warning("store %s accepted as it is (%s)", self._store_path, self.rollback)
        self._totals.clear()
        self.rollback = ""
        self._state = None  # sealed anew when the key is next at hand: the anchor no longer expects a MAC
        drops = self._keys.drops
        self._keys.release()
        if not self.locked:
            await self._on_writer(self._verify_state)
            if not self.rollback and self._keys.drops == drops:  # else Check reports what held or locked it
                self._events.publish(Unlocked())

    # -- plumbing ----------------------------------------------------------
    def _verify_state(self) -> None:
        """Once per process, when the data key is first at hand (on the writer thread): the
        store's contents and counter must match their MAC (store_state), or the store is held
        like a rollback. A store of an earlier release gets its first MAC here."""
        if self._state is not None or self.locked or self.rollback:
            return
        try:
            state = StateDigest(state_key(self._key()), self._writer.sealed_state())
        except StoreEdited as exc:
            self._hold(f"the store file was edited: {exc}", EDITED_ADVICE)
            return
        seen = self._seen()
        anchor = self._anchor.read()
        mac = self._writer.meta("state_mac")
        if not state.matches(seen.store_id, seen.generation, mac):
            expected = anchor is not None and anchor.store_id == seen.store_id and anchor.authenticated
            # Without the anchor's word, a MAC that does not match is one the anchor never saw
            # (written just before a crash, or the store was accepted as it is): seal it anew.
            if expected:
                self._hold("the store's contents or its write counter do not match its own record: it was "
                           "edited, or pieced together from an older copy (a raised counter, rows put back)",
                           EDITED_ADVICE)
                return
            self._state = state
            self._commit(lambda: None)  # first MAC (an earlier release's store), or the accepted store's
        self._state = state
        self._anchor.record(Seen(seen.store_id, self._writer.generation(), True))
        self._upgrade_seals()

    def _commit(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """One write (on the writer thread): it raises the store's generation and seals its new
        state under a MAC in the same transaction; the anchor outside the store then
        remembers the generation."""
        self._refuse_if_rolled_back(self._writer)
        if self._state is None:
            raise LockedError("the agent is locked: run 'qpu-broker unlock' first (a write is sealed under the "
                              "store's key, which this daemon has not had since it started)")
        self._writer.changes.clear()
        try:
            with self._writer.transaction():
                result = fn(*args, **kwargs)
                generation = self._writer.bump_generation()
                digest = self._state.after(self._writer.changes)
                self._writer.set_meta(state_mac=self._state.mac(self._store_id, generation, digest))
        finally:
            self._writer.changes.clear()
        self._state.value = digest
        self._last_generation = generation
        self._anchor.record(Seen(self._store_id, generation, True))
        return result

    async def _write(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        self._writes_in_flight += 1
        try:
            return await self._on_writer(lambda: self._commit(fn, *args, **kwargs))
        except BaseException:
            self._totals.clear()  # whether it landed is not known for sure: count afresh
            raise
        finally:
            self._writes_in_flight -= 1

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, fn)

    def close(self) -> None:
        self._keys.close()
        self._write_pool.shutdown(wait=True)
        self._reader.close()
        self._writer.close()
