"""Rollback detection: the store's generation, remembered outside the store.

Every write to the store raises its `generation` (in the same transaction). The
last generation this machine saw is also kept in `store.generation`, beside the
key file in the config dir, never in the data dir: a backup of the data dir put
back in place carries an older generation than the anchor, and is reported at
open instead of silently serving rotated-away or deleted secrets again.

The anchor is written after each commit (atomically, without fsync): after a
crash or power loss it may lag behind the store, never run ahead of it, so it
never raises a false alarm. Someone who can rewrite both the data dir and the
config dir can defeat it (docs/design.md says so).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from qpu_broker.common.dirs import write_replacing

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Seen:
    store_id: str
    generation: int
    authenticated: bool = False  # the store carries a state MAC (store_state): one missing now was removed


class GenerationAnchor:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._last: Seen | None = None  # what this process last read or wrote: no file read per write

    def read(self) -> Seen | None:
        if self._last is not None:
            return self._last
        try:
            store_id, generation, *flags = self.path.read_text().split()  # flags: none (older releases) or "mac"
            self._last = Seen(store_id, int(generation), flags == ["mac"])
            return self._last
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("the generation anchor %s is unreadable: starting it afresh", self.path)
            return None

    def record(self, seen: Seen, *, allow_lower: bool = False) -> None:
        """Remember `seen`; never lower than what is remembered for the same store (unless the
        user accepted that store as it is)."""
        last = self.read()
        if not allow_lower and last is not None and last.store_id == seen.store_id:
            if last.generation > seen.generation:
                return
            seen = dataclasses.replace(seen, authenticated=seen.authenticated or last.authenticated)
        if seen == last:
            return
        write_replacing(self.path, f"{seen.store_id} {seen.generation}{' mac' if seen.authenticated else ''}\n")
        self._last = seen

    def verdict(self, current: Seen) -> str:
        """Empty when `current` is this machine's store at or past what it last saw; else why not."""
        last = self.read()
        if last is None or (last.store_id == current.store_id and current.generation >= last.generation):
            return ""
        if last.store_id != current.store_id:
            return (f"the store is not the one this machine last used (store {current.store_id}, expected "
                    f"{last.store_id}): a different or restored store was put in place")
        return (f"the store is older than the last one this machine saw (generation {current.generation} < "
                f"{last.generation}): a backup was put back, so rotated or deleted secrets may be back")
