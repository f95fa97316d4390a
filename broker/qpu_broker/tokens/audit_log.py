"""The local audit log: every use and change of personal tokens, never a secret.

One JSON object per line, appended (O_APPEND, one write per entry). Each entry carries its
sequence number, the MAC of the entry before it (`prev`) and its own `mac`: an HMAC under a
key derived from the data key over the entry without `mac`. So an entry edited, removed or
put in another place breaks the chain, and nobody without the data key can mend it.
Removing the newest entries leaves a chain that still holds; that is what the anchor is for:
the last sequence number and MAC, kept beside the key file in the config dir (like the
store's generation anchor), written within a second of an append and at lock and stop. An
attacker who can rewrite both the data dir and the config dir can cut the newest entries
unseen; nothing else goes unseen (docs/design.md, threat model).

Entries are written while the data key is at hand (unlocked), which is whenever personal
tokens can be used or changed. A use in flight when the daemon is killed has no entry: the
entry is written when the answer (or the refusal) comes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator

from qpu_broker_client.errors import QpuBrokerError
from qpu_broker_client.usage import iso

from qpu_broker.common.dirs import write_replacing
from qpu_broker.keys.crypto import derive_subkey
from qpu_broker.tokens.events import Audited, Event, Locked, Unlocked

log = logging.getLogger(__name__)
PURPOSE = b"audit log"
GENESIS = "0" * 64  # the `prev` of the first entry
ANCHOR_DELAY = 1.0  # seconds from an append to the anchor's write
_TAIL = 64 * 1024  # enough of the file's end to hold its last entry


def entries(path: pathlib.Path) -> Iterator[dict]:
    """Every readable entry, oldest first (unverified: `AuditLog.verify` says whether to trust them)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry
    except FileNotFoundError:
        return


def entry_line(e: dict) -> str:
    """One entry for people: when, what, which token, and for a use where and with what result."""
    at = iso(e.get("at_us", 0))
    token = f"  {e['token_name']} ({e.get('provider', '?')})" if e.get("token_name") else ""
    line = f"{at}  #{e.get('seq', '?')} {e.get('event', '?')}{token}"
    if e.get("event") == "token-used":
        line += f"  {e.get('kind')} {e.get('method')} {e.get('host')}{e.get('path')}  {e.get('status') or '-'} {e.get('outcome')}"
        if e.get("session"):
            line += f"  by {e.get('command') or '?'} (session {e['session']})"
        if e.get("detail"):
            line += f": {e['detail']}"
    elif e.get("event") == "token-renamed":
        line += f"  (was {e.get('old_name')!r})"
    elif e.get("event") in ("org-login", "default-set", "passphrase-changed"):
        line += "  " + " ".join(f"{k}={e[k]}" for k in ("server", "provider", "key_source") if e.get(k))
    return line


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # made once: json.dumps makes one a call


def _canonical(entry: dict) -> bytes:
    return _CANONICAL.encode(entry).encode()


def _mac(key: bytes, body: bytes) -> str:
    return hmac.digest(key, body, "sha256").hex()


@dataclasses.dataclass(frozen=True)
class Verdict:
    entries: int
    problem: str  # empty: the chain holds and reaches the anchor

    @property
    def ok(self) -> bool:
        return not self.problem


class AuditLog:
    def __init__(self, path: pathlib.Path, anchor: pathlib.Path, data_key: Callable[[], bytes],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._anchor = anchor
        self._data_key = data_key  # raises when locked
        self._clock = clock
        self._key: bytes | None = None
        self._seq, self._prev = 0, GENESIS
        self._anchored = (0, GENESIS)
        self._broken = ""  # found at start: written as the next entry
        self._fd: int | None = None

    # -- the vault's events ----------------------------------------------------------
    def open(self) -> None:
        """At start: a store unlocked from the start (a key file, a key from the environment)
        sends no Unlocked event, so the chain is taken up here."""
        try:
            self._take_up("daemon-started")
        except QpuBrokerError:
            return  # locked: taken up at unlock

    def _take_up(self, event: str) -> None:
        """The data key is at hand: derive the chain's key, pick the chain up where the file ends
        (recording a break first), say why, and anchor at once (a crash in the next second must
        not look like a removed anchor)."""
        self._key = derive_subkey(self._data_key(), PURPOSE)
        self._continue()
        if self._broken:
            self.append({"event": "chain-broken", "detail": self._broken})
            self._broken = ""
        self.append({"event": event})
        self.anchor()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Unlocked):
            self._take_up("unlocked")
        elif isinstance(event, Locked):
            if self._key is not None:
                self.append({"event": "locked"})
                self.anchor()
            self._key = None
        elif isinstance(event, Audited):
            self.append({"event": event.action, **event.fields})

    def _continue(self) -> None:
        """Pick the chain up where the file ends (its last entry); if that is behind where this
        machine last saw it end (the anchor), say so in the log itself, in a chained entry, before
        anything else is written (the anchor never goes back, so cutting again is seen again)."""
        self._read_end()
        anchored = self._read_anchor()
        self._anchored = anchored or (0, GENESIS)
        problem = ""
        if anchored is not None and (self._seq < anchored[0] or (self._seq == anchored[0] and self._prev != anchored[1])):
            problem = (f"the log ended at entry {self._seq} at start, but this machine last wrote entry {anchored[0]}: "
                       "entries were cut off or the log replaced")
        elif anchored is None and self._seq > 0:
            problem = f"the log has {self._seq} entries but its anchor ({self._anchor}) is gone"
        if problem:
            log.warning("audit log %s: %s", self.path, problem)
            self._broken = problem

    def _read_end(self) -> None:
        self._seq, self._prev = 0, GENESIS
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _TAIL))
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in reversed(lines):
            try:
                last = json.loads(line)
                self._seq, self._prev = int(last["seq"]), str(last["mac"])
                return
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (power loss): --verify names it

    # -- writing -----------------------------------------------------------------------
    def append(self, fields: dict) -> None:
        if self._key is None:
            return  # locked: nothing personal can be used or changed
        now = self._clock()
        body = _canonical({**fields, "seq": self._seq + 1, "at_us": int(now * 1_000_000), "prev": self._prev})
        mac = _mac(self._key, body)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # The MACed text, with its MAC as the last key: one encoding a line (verify re-sorts).
        os.write(self._fd, body[:-1] + b',"mac":"' + mac.encode() + b'"}\n')
        self._seq, self._prev = self._seq + 1, mac

    def anchor(self) -> None:
        """Remember where the chain ends, outside the data dir (never further back than before)."""
        if (self._seq, self._prev) != self._anchored and self._seq >= self._anchored[0]:
            write_replacing(self._anchor, f"{self._seq} {self._prev}\n")
            self._anchored = (self._seq, self._prev)

    async def keep_anchored(self, stop: asyncio.Event) -> None:
        """Write the anchor within ANCHOR_DELAY of every append, until `stop` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), ANCHOR_DELAY)
            except TimeoutError:
                pass
            self.anchor()

    def close(self) -> None:
        self.anchor()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading -----------------------------------------------------------------------
    def verify(self) -> Verdict:
        if self._key is None:
            raise ValueError("locked")  # the caller checks the vault first
        anchored = self._read_anchor()
        seq, prev, broken = 0, GENESIS, ""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = [b""]
        if lines[-1]:
            return Verdict(seq, f"the last line ({len(lines)}) is incomplete: a crash while it was written, or an edit")
        for number, line in enumerate(lines[:-1], 1):
            try:
                entry = json.loads(line)
                mac = entry.pop("mac")
            except (ValueError, KeyError, AttributeError):
                return Verdict(seq, f"line {number} is not an audit entry: it was edited or put there")
            if entry.get("seq") != seq + 1 or entry.get("prev") != prev:
                return Verdict(seq, f"line {number} does not follow entry {seq}: an entry before it was removed, "
                                    "or entries were moved")
            if not hmac.compare_digest(str(mac), _mac(self._key, _canonical(entry))):
                return Verdict(seq, f"entry {seq + 1} (line {number}) was edited: its MAC does not match")
            seq, prev = seq + 1, str(mac)
            if entry.get("event") == "chain-broken":
                broken = broken or f"entry {seq} records that {entry.get('detail', 'the chain was broken')}"
            if anchored is not None and seq == anchored[0] and prev != anchored[1]:
                return Verdict(seq, f"entry {seq} is not the one this machine wrote: the log was replaced")
        if anchored is not None and seq < anchored[0]:
            return Verdict(seq, f"the log ends at entry {seq} but this machine last wrote entry {anchored[0]}: "
                                "the newest entries were removed, or an older copy put back")
        if anchored is None and seq > 0:
            return Verdict(seq, f"the log's anchor ({self._anchor}) is gone: the newest entries cannot be vouched for")
        return Verdict(seq, broken)

    def _read_anchor(self) -> tuple[int, str] | None:
        try:
            seq, mac = self._anchor.read_text().split()
            return int(seq), mac
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return (1 << 62, "unreadable")  # an anchor edited into nonsense is a finding, not a pass
