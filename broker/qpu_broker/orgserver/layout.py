"""An org server's data dir: its store, and its server key kept apart from it."""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib

from qpu_broker_client.errors import FailedPreconditionError

from qpu_broker.common.dirs import ensure_private_dir
from qpu_broker.keys import crypto
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.tls_files import TlsFiles


@dataclasses.dataclass(frozen=True)
class OrgLayout:
    root: pathlib.Path

    @property
    def key_file(self) -> pathlib.Path:
        return self.root / "server.key"

    @property
    def store_file(self) -> pathlib.Path:
        return self.root / "store" / "org.db"

    @property
    def lock_file(self) -> pathlib.Path:
        return self.root / "serve.lock"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.root / "tls")

    def create(self) -> tuple[OrgStore, bytes]:
        os.umask(0o077)
        ensure_private_dir(self.root, strict=False)
        ensure_private_dir(self.store_file.parent, strict=False)
        if self.key_file.exists() or self.store_file.exists():
            raise FailedPreconditionError(f"{self.root} already holds an org server: use it, or choose another --data")
        key = crypto.new_key()
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(key) + b"\n")
        return OrgStore(self.store_file), key

    def open(self) -> tuple[OrgStore, bytes]:
        os.umask(0o077)
        if not self.store_file.exists():
            raise FailedPreconditionError(f"no org server in {self.root}: run 'qpu-broker org-server init --data {self.root}'")
        try:
            key = base64.urlsafe_b64decode(self.key_file.read_bytes().strip())
        except (OSError, ValueError) as exc:
            raise FailedPreconditionError(f"cannot read the server key {self.key_file}: {exc}") from None
        if len(key) != crypto.KEY_SIZE:
            raise FailedPreconditionError(f"the server key {self.key_file} is not a {crypto.KEY_SIZE}-byte key")
        return OrgStore(self.store_file), key
