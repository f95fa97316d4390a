"""The agent's lock: lock, unlock, passphrase changes and accepting a store in question.

The Keyring holds the data key; the store is verified (StoreIntegrity) the first time the key
is at hand; the daemon hears the outcome as events (Unlocked here; Locked from the Keyring,
wired in daemon/main). The last command answered wins: a lock (or a hold) that comes while
an unlock runs leaves the agent locked, and that unlock's answer says so.
"""

from __future__ import annotations

from qpu_broker_client.errors import FailedPreconditionError, UnauthenticatedError

from qpu_broker.keys.data_key import Keyring, KeyStatus
from qpu_broker.keys.kek import KeySource
from qpu_broker.tokens.events import Audited, Events, Unlocked
from qpu_broker.tokens.integrity import StoreIntegrity


class AgentLock:
    def __init__(self, keys: Keyring, integrity: StoreIntegrity, events: Events) -> None:
        self._keys = keys
        self._integrity = integrity
        self._events = events

    @property
    def locked(self) -> bool:
        return self._keys.locked

    @property
    def rollback(self) -> str:
        """Why the store is held (an older, foreign or edited store), until accepted; "" if it is not."""
        return self._integrity.rollback

    def key_status(self) -> KeyStatus:
        return self._keys.status()

    def lock(self, reason: str = "") -> None:
        self._keys.lock(reason)

    async def unlock(self, passphrase: bytes) -> None:
        drops = self._keys.drops
        if await self._keys.unlock(passphrase, drops):
            await self._integrity.on_writer(self._integrity.verify_state)
            if self._integrity.rollback:
                raise FailedPreconditionError(self._keys.lock_reason)
            # Not told if a lock or hold came meanwhile; one that lands while the listeners hear
            # it (a hold on the writer thread) is what this unlock answers, once they have.
            self._keys.refuse_if_dropped_since(drops)
            self._events.publish(Unlocked())
            self._keys.refuse_if_dropped_since(drops)

    async def change_passphrase(self, old: bytes, new: bytes) -> KeySource:
        # A locked passphrase store is unlocked first, as 'unlock' would (its events included);
        # the first time in a process, that also verifies the store before its first write.
        if self._keys.locked and self._keys.source is KeySource.PASSPHRASE and old:
            try:
                await self.unlock(old)
            except UnauthenticatedError:
                raise UnauthenticatedError("cannot change the passphrase: the current passphrase is wrong") from None
        source = await self._keys.change_passphrase(old, new, commit=self._integrity.write)
        self._events.publish(Audited("passphrase-changed", {"key_source": source.value}))
        return source

    async def accept_rollback(self) -> None:
        """The user says this store is the one to use: remember it, and unlock as at start."""
        await self._integrity.accept()
        drops = self._keys.drops
        self._keys.release()
        if not self._keys.locked:
            await self._integrity.on_writer(self._integrity.verify_state)
            if not self._integrity.rollback and self._keys.drops == drops:  # else Check reports what held or locked it
                self._events.publish(Unlocked())
