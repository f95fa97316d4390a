"""An org server's data dir: its server key, TLS files, and where its store is.

The store is an SQLite file in the data dir unless `init --database postgresql://…` named a
PostgreSQL database: that choice is kept in DATA/database, so `serve` and the admin commands
find it without repeating it. Replicas each have a copy of the data dir (the server key opens
the org's sealed tokens, so it is the same on every replica) and share the database.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib

from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.trust import ensure_private_dir

from qpu_broker.keys import crypto
from qpu_broker.orgserver.db import DEFAULT_DATABASE, backend, parse_database
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.tls_files import TlsFiles


@dataclasses.dataclass(frozen=True)
class OrgLayout:
    root: pathlib.Path

    @property
    def key_file(self) -> pathlib.Path:
        return self.root / "server.key"

    @property
    def database_file(self) -> pathlib.Path:
        return self.root / "database"

    def database(self, given: str | None = None) -> tuple[str, str]:
        """(kind, target): `given` (--database), else what `init` recorded, else DEFAULT_DATABASE."""
        if given:
            return parse_database(given, self.root)
        try:
            recorded = self.database_file.read_text().strip()
        except FileNotFoundError:
            return parse_database(DEFAULT_DATABASE, self.root)
        except OSError as exc:
            raise FailedPreconditionError(f"cannot read {self.database_file}: {exc.strerror}") from None
        return parse_database(recorded, self.root)

    @property
    def lock_file(self) -> pathlib.Path:
        return self.root / "serve.lock"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.root / "tls")

    def create(self, database: str | None = None) -> tuple[OrgStore, bytes]:
        os.umask(0o077)
        kind, target = self.database(database)  # a bad --database is refused before anything is made
        ensure_private_dir(self.root)
        default_kind, default_target = parse_database(DEFAULT_DATABASE, self.root)  # one left there counts too
        if self.key_file.exists() or self.database_file.exists() or not backend(default_kind).absent(default_target):
            raise FailedPreconditionError(f"{self.root} already holds an org server: use it, or choose another --data")
        backend(kind).prepare(target)
        store = OrgStore.open(kind, target)
        if store.meta("org") is not None:
            store.close()
            raise FailedPreconditionError(f"the database {target} already holds an organization: give each org its "
                                          "own database; a replica copies the first server's data dir instead")
        key = crypto.new_key()
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(key) + b"\n")
        if database:
            self.database_file.write_text(database + "\n")
        return store, key

    def require(self, database: str | None = None) -> tuple[str, str]:
        """(kind, target) of the store, if this is an org's data dir; else the one-line reason."""
        kind, target = self.database(database)
        if not self.key_file.exists() or backend(kind).absent(target):
            raise FailedPreconditionError(f"no org server in {self.root}: run 'qpu-broker org-server init --data {self.root}'")
        return kind, target

    def open(self, database: str | None = None) -> tuple[OrgStore, bytes]:
        os.umask(0o077)
        kind, target = self.require(database)
        try:
            key = base64.urlsafe_b64decode(self.key_file.read_bytes().strip())
        except (OSError, ValueError) as exc:
            raise FailedPreconditionError(f"cannot read the server key {self.key_file}: {exc}") from None
        if len(key) != crypto.KEY_SIZE:
            raise FailedPreconditionError(f"the server key {self.key_file} is not a {crypto.KEY_SIZE}-byte key")
        return OrgStore.open(kind, target), key
