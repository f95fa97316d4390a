"""Which token a call uses: the caller's TokenProvider, resolved to secrets.

The client has already merged its environment (an explicit field wins over its
LUNA_* variable). Here each field becomes a stored token (personal, by id or
name) or an inline secret; inline secrets are checked, used for the call, and
never stored or logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    QpuBrokerError,
)
from qpu_broker_client.providers import ENV_HINT
from qpu_broker_client.secret import Secret

from qpu_broker.common.hardening import LockedSecrets
from qpu_broker.common.reach import Reach
from qpu_broker.common.secret_shapes import check_text
from qpu_broker.providers import normalize_secret, provider_of_field, traits
from qpu_broker.tokens.events import Event, Locked, TokenChanged
from qpu_broker.tokens.kinds import INLINE, ORGANIZATION, PERSONAL
from qpu_broker.tokens.org_tokens import OrgToken, OrgTokens
from qpu_broker.tokens.personal import PersonalTokens


@dataclasses.dataclass(frozen=True)
class Ref:
    kind: str  # personal | organization | inline
    id: str = ""
    name: str = ""
    secret: Secret | None = None


@dataclasses.dataclass(frozen=True)
class StoredToken:
    """Which stored token a call used (an org token by its server id): what its records name."""

    kind: str  # personal | organization
    id: str
    name: str
    provider: str


@dataclasses.dataclass(frozen=True)
class Resolved:
    field: str
    provider: str
    kind: str
    id: str
    name: str
    secret: Secret = dataclasses.field(repr=False)
    cache_key: str = dataclasses.field(repr=False)  # a stored id + version, or a keyed hash of an inline secret
    expires_us: int = 0  # a stored token's expiry (0: never)
    org_token: OrgToken | None = dataclasses.field(default=None, repr=False, compare=False)  # its metadata, for org kinds

    def stored(self) -> StoredToken | None:
        """The stored token this is (None for an inline one)."""
        if self.org_token is not None:
            return StoredToken(ORGANIZATION, self.org_token.server_id, self.name, self.provider)
        return StoredToken(self.kind, self.id, self.name, self.provider) if self.kind == PERSONAL else None


class RefResolver:
    """References to secrets, as the daemon and the org server's relay both read them: inline
    secrets, a split credential (AWS's pair) joined into one set, every field of a Luna body. Where a stored
    token's secret comes from is each side's own (`_stored`)."""

    def __init__(self, secret_max_bytes: int) -> None:
        self._max = secret_max_bytes
        self._inline_key = os.urandom(32)  # inline secrets are cached by a keyed hash, never by value

    def _stored(self, field: str, provider: str, ref: Ref) -> Resolved:
        raise NotImplementedError

    def _one(self, field: str, provider: str, ref: Ref) -> Resolved:
        if ref.kind != INLINE:
            return self._stored(field, provider, ref)
        if ref.secret is None or not ref.secret:
            raise InvalidArgumentError(f"the inline token for {field} is empty")
        if provider_of_field(field) != field:  # one part of a split credential: plain text, joined into a set later
            value = check_text(field, ref.secret.reveal(), self._max).encode()
        else:
            value = normalize_secret(provider, ref.secret.reveal(), self._max)
        digest = hmac.new(self._inline_key, value, hashlib.sha256).hexdigest()
        return Resolved(field, provider, INLINE, "", "", Secret(value), f"inline:{digest}")

    def resolve(self, provider: str, refs: dict[str, Ref]) -> Resolved:
        """The one credential a call to `provider` uses; a split one (AWS's pair) is joined into a set."""
        split = traits(provider)
        if provider not in refs and any(f in refs for f in split.split_required):
            halves = {f: self._one(f, provider, refs[f]) for f in split.split_fields if f in refs}
            for needed in split.split_required:
                if needed not in halves:
                    raise InvalidArgumentError(f"{provider.upper()} credentials need both halves: {needed} is missing")
            if any(h.kind != INLINE for h in halves.values()):
                raise InvalidArgumentError(_whole_set(provider))
            joined = ":".join(halves[f].secret.reveal().decode() for f in split.split_fields if f in halves)
            return self._one(provider, provider, Ref(INLINE, secret=Secret(joined)))
        ref = refs.get(provider)
        if ref is None and provider not in ENV_HINT:  # a custom provider: no variable of Luna's names it
            raise FailedPreconditionError(
                f"no {provider} token for this call: pass qpu_tokens=TokenProvider(custom={{{provider!r}: "
                "QpuToken(...)}), or --token NAME to 'qpu-broker request'")
        if ref is None:
            raise FailedPreconditionError(
                f"no {provider} token for this call: pass qpu_tokens=TokenProvider({provider}=QpuToken(...)), "
                f"or set {ENV_HINT[provider]}")
        return self._one(provider, provider, ref)

    def resolve_all(self, refs: dict[str, Ref]) -> dict[str, Resolved]:
        """Every provider the caller named (for Luna's qpu_tokens), split credentials joined."""
        out = {}
        for field in refs:
            provider = provider_of_field(field)
            if not traits(provider).fills_body_tokens and provider not in out:
                out[provider] = self.resolve(provider, refs)
        return out


class Resolver(RefResolver):
    def __init__(self, personal: PersonalTokens, secret_max_bytes: int, org: OrgTokens) -> None:
        super().__init__(secret_max_bytes)
        self._personal = personal
        self._org = org
        # Opened stored secrets, by (kind, id or name): a hot token is not re-read and
        # re-decrypted on every call. Emptied on lock and on any change to a token.
        # Kept in mlock'ed pages, wiped (not just dropped) on any change and on lock.
        self._opened: LockedSecrets[tuple[str, str, str], Resolved] = LockedSecrets()

    def on_event(self, event: Event) -> None:
        """Heard at once, on whichever thread locks (clearing LockedSecrets is thread-safe)."""
        if isinstance(event, Locked | TokenChanged):
            self._opened.clear()

    def reconfigure(self, secret_max_bytes: int) -> None:
        self._max = secret_max_bytes

    def reach(self, provider: str, refs: dict[str, Ref], own: Reach) -> Reach:
        """Where this call's credential may go (metadata only: no secret is opened).

        An org token goes where its org says, whatever this daemon's config (`own`) adds."""
        ref = refs.get(provider)
        if ref is not None and ref.kind == ORGANIZATION:
            return self._org.find(handle=ref.id, name=ref.name).reach
        return own

    def stored_tokens(self, provider: str, refs: dict[str, Ref]) -> list[StoredToken]:
        """The stored token this call names for `provider` (metadata only: nothing is opened), for
        the record of a call refused before its token is opened; none for inline or unknown ones."""
        ref = refs.get(provider)
        try:
            if ref is not None and ref.kind == ORGANIZATION:
                token = self._org.find(handle=ref.id, name=ref.name)
                return [StoredToken(ORGANIZATION, token.server_id, token.name, token.provider)]
            if ref is not None and ref.kind == PERSONAL:
                record = self._personal.find(PERSONAL, token_id=ref.id, name=ref.name)
                return [StoredToken(PERSONAL, record.id, record.name, record.provider)]
        except QpuBrokerError:
            return []  # the call fails on this token itself, with its own error
        return []

    def relay_token(self, provider: str, refs: dict[str, Ref]) -> OrgToken | None:
        """The relay org token this call names for `provider` (its calls go to the org server), if any."""
        ref = refs.get(provider)
        if ref is None or ref.kind != ORGANIZATION:
            return None
        token = self._org.find(handle=ref.id, name=ref.name)
        return token if token.relay else None

    def preview(self, provider: str, refs: dict[str, Ref]) -> tuple[str, str, str, str]:
        """Which token a call would use (field, kind, id, name), as `resolve` picks it; a relay
        token's secret is not here, and a preview needs none."""
        relay = self.relay_token(provider, refs)
        if relay is not None:
            return provider, ORGANIZATION, relay.handle, relay.name
        r = self.resolve(provider, refs)
        return r.field, r.kind, r.id, r.name

    async def reserve(self, resolved: list[Resolved]) -> dict[str, str]:
        """Each use of an org token a quota binds is counted by the org server before anything is
        sent (RESOURCE_EXHAUSTED when one is used up). Returns the reservations the server made, by
        the token's server id: the use's record names its own."""
        made = {}
        for r in resolved:
            if r.org_token is not None and r.org_token.metered:
                made[r.org_token.server_id] = await self._org.reserve(r.org_token)
        return made

    def org_reach(self, provider: str) -> Reach:
        """The org's own settings for `provider`: where an org secret inside another request may go."""
        return self._org.provider_reach(provider)

    def relay_fields(self, refs: dict[str, Ref]) -> dict[str, OrgToken]:
        """The fields of a Luna body's qpu_tokens that name relay org tokens (metadata only): the
        org server fills those on its hop to Luna, since their secrets never come here."""
        out: dict[str, OrgToken] = {}
        for field, ref in refs.items():
            if traits(field).fills_body_tokens or ref.kind != ORGANIZATION:
                continue
            token = self._org.find(handle=ref.id, name=ref.name)
            if token.relay:
                if provider_of_field(field) != field:
                    raise InvalidArgumentError(_whole_set(provider_of_field(field)))
                _check_provider(token, field, field)
                out[field] = token
        return out

    def _stored(self, field: str, provider: str, ref: Ref) -> Resolved:
        if ref.kind == ORGANIZATION:
            token = self._org.find(handle=ref.id, name=ref.name)
            _check_provider(token, field, provider)
            return Resolved(field, provider, ORGANIZATION, token.handle, token.name, self._org.secret(token),
                            self._org.cache_key(token), org_token=token)
        key = (ref.kind, ref.id, ref.name)
        held = None if self._personal.locked else self._opened.get(key)
        if held is None:
            record = self._personal.find(ref.kind, token_id=ref.id, name=ref.name)
            secret = self._personal.secret(record)
            meta = Resolved("", record.provider, record.kind, record.id, record.name, Secret(b""),
                            f"{record.id}:{record.updated_us}", record.expires_us)
            self._opened.put(key, secret.reveal(), meta)
        else:
            raw, meta = held
            secret = Secret(raw)
        self._personal.check_expiry(meta.name, meta.expires_us)
        if meta.provider != provider:
            raise InvalidArgumentError(
                f"token {meta.name!r} is a {meta.provider} token; {field} needs a {provider} token")
        # Built whole, not by dataclasses.replace: this is every personal call's path.
        return Resolved(field, meta.provider, meta.kind, meta.id, meta.name, secret, meta.cache_key, meta.expires_us)


def _whole_set(provider: str) -> str:
    return f"a stored {provider} token holds the whole credential set: pass it as {provider}="


def _check_provider(token: OrgToken, field: str, provider: str) -> None:
    if token.provider != provider:
        raise InvalidArgumentError(
            f"organization token {token.name!r} is a {token.provider} token; {field} needs a {provider} token")


def _inline(token: str | None) -> dict:
    return {"source": "inline", "token": token}


def luna_qpu_tokens(resolved: dict[str, Resolved]) -> dict:
    """The `qpu_tokens` object in Luna's wire shape (a split credential nested under its provider's
    name, AWS's under "aws"), every entry inline."""
    out: dict = {}
    for provider, r in resolved.items():
        if traits(provider).split_fields:
            # Luna's model (luna-quantum 1.3 AWSQpuTokens) requires all three parts; a key
            # without a session token says so with an entry whose token is null.
            out[provider] = {f: _inline(part) for f, part in traits(provider).split_parts(r.secret.reveal()).items()}
        else:
            out[provider] = _inline(r.secret.reveal().decode())
    return out


def _luna_ref(entry: object) -> Ref | None:
    """One entry the SDK wrote, as a broker token reference; None when it is not one."""
    if not isinstance(entry, dict):
        return None
    source, name, token = entry.get("source"), entry.get("name"), entry.get("token")
    if source in ("personal", "organization", "group") and name:
        return Ref("organization" if source == "group" else source, name=str(name))
    if source == "inline" and token:
        return Ref(INLINE, secret=Secret(str(token)))
    return None


def refs_from_luna_body(doc: dict) -> tuple[dict[str, Ref], dict]:
    """What the Luna SDK put in a body's qpu_tokens: the references it holds (read as broker
    tokens: stored by name, or inline), and every other entry, kept as it was."""
    tokens = doc.get("qpu_tokens")
    if not isinstance(tokens, dict):
        return {}, {}
    refs: dict[str, Ref] = {}
    kept: dict = {}
    for field, entry in tokens.items():
        split = traits(field).split_fields
        if split and isinstance(entry, dict):
            halves = {f: _luna_ref(e) for f, e in entry.items() if f in split}
            if all(halves.values()) and halves:
                refs.update(halves)  # type: ignore[arg-type]
            else:
                kept[field] = entry
            continue
        ref = _luna_ref(entry)
        if ref is None:
            kept[field] = entry
        else:
            refs[field] = ref
    return refs, kept


__all__ = ["ENV_HINT", "PERSONAL", "Ref", "RefResolver", "Resolved", "Resolver", "luna_qpu_tokens",
           "refs_from_luna_body"]
