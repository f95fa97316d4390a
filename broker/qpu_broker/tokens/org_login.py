"""The organization login: the org servers' addresses, their CA and the device's key, sealed in the store.

One blob in the store's meta, sealed under the data key; written through StoreIntegrity like
any other write. A login of the release before (one server and an API key) reads back as that
server, with the key to redeem once for a device.
"""

from __future__ import annotations

import base64
import dataclasses
import json

from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.secret import Secret

from qpu_broker.keys import crypto
from qpu_broker.keys.data_key import Keyring
from qpu_broker.tokens.events import Audited, Events
from qpu_broker.tokens.integrity import StoreIntegrity

ORG_LOGIN_AD = b"qpu-broker/v1/org-login"


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


class OrgLoginStore:
    def __init__(self, integrity: StoreIntegrity, keys: Keyring, events: Events) -> None:
        self._integrity = integrity
        self._keys = keys
        self._events = events

    @property
    def locked(self) -> bool:
        """The login does not open now: the agent is locked (or held)."""
        return self._keys.locked

    async def save(self, login: OrgLogin) -> None:
        """Keep the org servers' addresses, CA and the device's key (sealed) in the store."""
        # "server" is the login's id: the only server of a login stored before there could be
        # several, so such a login reads back as that server under the same id.
        if login.device_key is None:
            raise FailedPreconditionError("an organization login is saved with its device, never with a code or key")
        doc = json.dumps({"servers": list(login.servers), "server": login.login_id, "ca_pem": login.ca_pem.decode(),
                          "device_id": login.device_id, "store_id": login.store_id,
                          "device_expires_us": login.device_expires_us,
                          "device_key": base64.b64encode(login.device_key.reveal()).decode()}).encode()
        nonce, ciphertext = crypto.seal(self._keys.key(), doc, ORG_LOGIN_AD)
        await self._integrity.write(self._integrity.writer.set_meta, org_login=nonce + ciphertext)
        self._events.publish(Audited("org-login", {"server": ",".join(login.servers)}))

    def read(self) -> OrgLogin | None:
        blob = self._integrity.reader.meta("org_login")
        if not blob:
            return None
        try:
            doc = json.loads(crypto.open_sealed(self._keys.key(), blob[:crypto.NONCE_SIZE], blob[crypto.NONCE_SIZE:],
                                                ORG_LOGIN_AD))
        except crypto.DecryptionError:
            raise FailedPreconditionError("the stored organization login does not open: run 'qpu-broker org login' again") from None
        servers, login_id, ca_pem = tuple(doc.get("servers") or [doc["server"]]), doc["server"], doc["ca_pem"].encode()
        if "device_key" not in doc:  # the release before: an API key, redeemed for a device at the first connect
            return OrgLogin(servers, login_id, ca_pem, legacy_key=Secret(doc["api_key"]))
        return OrgLogin(servers, login_id, ca_pem, doc["device_id"], Secret(base64.b64decode(doc["device_key"])),
                        doc["store_id"], int(doc.get("device_expires_us", 0)))

    def stored(self) -> bool:
        """A login is kept (whether or not it opens now)."""
        return bool(self._integrity.reader.meta("org_login"))

    async def clear(self) -> None:
        await self._integrity.write(self._integrity.writer.set_meta, org_login=b"")
        self._events.publish(Audited("org-logout"))
