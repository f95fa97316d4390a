"""The store's integrity: one writer, a generation that only rises, an anchor outside, a state MAC.

Every write runs on one writer thread with its own connection (the event loop never waits on
fsync), raises the store's generation and seals its new state under a MAC in the same
transaction; the anchor outside the store then remembers the generation. A store that is
older, foreign or edited is held: the agent stays locked, and nothing is written to or read
from it, until the user accepts it. Seal upgrades run here too, once the store is verified.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pathlib
import secrets
from collections.abc import Callable
from typing import TypeVar

from qpu_broker_client.errors import InvalidArgumentError, LockedError

from qpu_broker.keys.data_key import Keyring
from qpu_broker.store.anchor import GenerationAnchor, Seen
from qpu_broker.store.db import Store, StoreEdited
from qpu_broker.store.state import StateDigest, state_key
from qpu_broker.tokens import seals

log = logging.getLogger(__name__)
T = TypeVar("T")

EDITED_ADVICE = ("This is not what putting back a backup does: restore a copy you trust. Only if you changed "
                 "the file yourself, run 'qpu-broker check --accept-rollback'")


class StoreIntegrity:
    def __init__(self, keys: Keyring, reader: Store, writer: Store, anchor: GenerationAnchor,
                 store_path: pathlib.Path) -> None:
        """`reader` serves reads on the loop; `writer` is used only on the writer thread. Both are
        closed by `close`."""
        self._keys = keys
        self.reader = reader
        self.writer = writer
        self._anchor = anchor
        self._store_path = store_path
        self._write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._last_generation = 0  # the highest generation this daemon wrote or accepted
        self._state: StateDigest | None = None  # the store's verified state: None until the key is first at hand
        self.first_release = self._is_first_release_store()  # decided before the anchor is first written
        self.rollback = ""  # why the store is held (an older, foreign or edited store), until accepted
        self.accepted = 0  # how many stores in question were accepted: what was read before may be stale
        self._check_generation()
        if not self.rollback:
            self._last_generation = self.writer.generation()
        self.verify_state()

    def _is_first_release_store(self) -> bool:
        """Never written by this release: old-style rows are genuine only here (neither a meta flag
        nor the generation alone decides: both live in the data dir; the anchor does not)."""
        return (self.reader.meta("seal") != str(seals.SEAL).encode() and self.reader.generation() == 0
                and self._anchor.read() is None)

    # -- rollback detection ----------------------------------------------------
    def _seen(self) -> Seen:
        store_id = self.writer.meta("store_id")
        if store_id is None:
            store_id = secrets.token_hex(8).encode()
            self.writer.set_meta(store_id=store_id)
        self._store_id = store_id.decode(errors="replace")
        return Seen(self._store_id, self.writer.generation())

    def _check_generation(self) -> None:
        """At open: an edited, older or foreign store holds the agent locked until the user accepts it."""
        problem = self.writer.structure_problem()
        if problem:
            self.hold(f"the store file was edited: {problem}", EDITED_ADVICE)
            return
        current = self._seen()
        # Only a store this process just made is exempt: one emptied by hand is not new.
        verdict = "" if self._keys.created else self._anchor.verdict(current)
        if verdict:
            self.hold(verdict)
        # Otherwise the anchor moves only once the store is verified (verify_state): a forged
        # counter never raises it.

    def hold(self, verdict: str,
             advice: str = "If you restored it on purpose, run 'qpu-broker check --accept-rollback'") -> None:
        """The store is in question: held locked, reported by status and check, until accepted."""
        self.rollback = verdict
        reason = f"{verdict}. {advice}"
        log.warning("store %s: %s", self._store_path, reason)
        self._keys.hold(reason)

    def refuse_if_rolled_back(self, store: Store | None = None) -> None:
        """Nothing is written to, or used from, a store in question; and one put back under a
        running daemon (its generation now below what this daemon wrote) is caught here."""
        store = store or self.reader
        # The writer sets _last_generation only after its commit, so read it first: a generation
        # read after it is at least as new (reading them the other way round races a write).
        last = self._last_generation
        if not self.rollback and store.generation() < last:
            current = Seen((store.meta("store_id") or b"?").decode(errors="replace"), store.generation())
            self.hold(f"the store went back to generation {current.generation} while this daemon ran "
                      f"(it had written {last}): a backup was put back")
        if self._state is None and not self._keys.locked and not self.rollback:
            raise LockedError("the agent is unlocking (its store is being verified): try again in a moment")
        if self.rollback:  # the agent is held locked: the same error as any locked use
            raise LockedError(f"{self.rollback}: nothing is written or used until "
                              "'qpu-broker check --accept-rollback'")

    async def accept(self) -> None:
        """The user says this store is the one to use: the anchor remembers it as it is. The
        agent is still held: the caller releases the key and verifies the store anew."""
        if not self.rollback:
            raise InvalidArgumentError("there is no rollback to accept: the store is the one this machine last saw")
        seen = await self.on_writer(self._seen)
        self._anchor.record(seen, allow_lower=True)
        self._last_generation = seen.generation
        log.warning("store %s accepted as it is (%s)", self._store_path, self.rollback)
        self.accepted += 1
        self.rollback = ""
        self._state = None  # sealed anew when the key is next at hand: the anchor no longer expects a MAC

    # -- the state MAC -----------------------------------------------------------
    def verify_state(self) -> None:
        """Once per process, when the data key is first at hand (on the writer thread): the
        store's contents and counter must match their MAC (store_state), or the store is held
        like a rollback. A store of an earlier release gets its first MAC here."""
        if self._state is not None or self._keys.locked or self.rollback:
            return
        try:
            state = StateDigest(state_key(self._keys.key()), self.writer.sealed_state())
        except StoreEdited as exc:
            self.hold(f"the store file was edited: {exc}", EDITED_ADVICE)
            return
        seen = self._seen()
        anchor = self._anchor.read()
        mac = self.writer.meta("state_mac")
        if not state.matches(seen.store_id, seen.generation, mac):
            expected = anchor is not None and anchor.store_id == seen.store_id and anchor.authenticated
            # Without the anchor's word, a MAC that does not match is one the anchor never saw
            # (written just before a crash, or the store was accepted as it is): seal it anew.
            if expected:
                self.hold("the store's contents or its write counter do not match its own record: it was "
                          "edited, or pieced together from an older copy (a raised counter, rows put back)",
                          EDITED_ADVICE)
                return
            self._state = state
            self.commit(lambda: None)  # first MAC (an earlier release's store), or the accepted store's
        self._state = state
        self._anchor.record(Seen(seen.store_id, self.writer.generation(), True))
        self._upgrade_seals()

    def _upgrade_seals(self) -> None:
        """Re-seal rows of an older recipe under the current one (needs the key; on the writer thread)."""
        if self.writer.meta("seal") == str(seals.SEAL).encode():
            return
        if not self.first_release:
            self.writer.set_meta(seal=seals.SEAL)  # old-style rows here are planted: refused, never re-sealed
            return
        key = self._keys.key()
        self.commit(seals.reseal_old_rows, self.writer, key, self._keys.key_term)
        self.first_release = False
        log.info("store upgraded: every record is now bound to all of its fields")

    # -- writes ----------------------------------------------------------------------
    def commit(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """One write (on the writer thread): it raises the store's generation and seals its new
        state under a MAC in the same transaction; the anchor outside the store then
        remembers the generation."""
        self.refuse_if_rolled_back(self.writer)
        if self._state is None:
            raise LockedError("the agent is locked: run 'qpu-broker unlock' first (a write is sealed under the "
                              "store's key, which this daemon has not had since it started)")
        self.writer.changes.clear()
        try:
            with self.writer.transaction():
                result = fn(*args, **kwargs)
                generation = self.writer.bump_generation()
                digest = self._state.after(self.writer.changes)
                self.writer.set_meta(state_mac=self._state.mac(self._store_id, generation, digest))
        finally:
            self.writer.changes.clear()
        self._state.value = digest
        self._last_generation = generation
        self._anchor.record(Seen(self._store_id, generation, True))
        return result

    async def write(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`commit` on the writer thread, awaited."""
        return await self.on_writer(lambda: self.commit(fn, *args, **kwargs))

    async def on_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, fn)

    def close(self) -> None:
        self._write_pool.shutdown(wait=True)
        self.reader.close()
        self.writer.close()
