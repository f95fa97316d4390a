"""Exec sessions: an unmodified SDK talks to an endpoint the daemon opens for it.

A session holds, per provider, the stored token it uses and a placeholder: 256
random bits that the SDK is given instead of the secret (`qpu-broker exec` puts
it in the variables the SDK reads). Each provider gets a listener of its own on
127.0.0.1: a plain HTTP endpoint (header providers; AWS, whose SigV4 is verified
against the placeholder secret and re-signed; Q-CTRL, whose key exchange the
session answers with a stand-in bearer, the placeholder in the endpoint's URL),
or an HTTPS proxy for SDKs that build their URLs from host names (IBM, and
custom providers with `session = "proxy"`: session_proxy, with a per-session CA
and a stand-in bearer for the SDK's key exchange or OAuth grant). SDKs that read
their endpoint and credential from files (fujitsu-quantum) get a private
directory of them, holding only placeholders and stand-ins. What a request needs
to be admitted, and how it goes on, is
session_requests. Ending a session closes its listeners and removes its CA
bundle and its files, so its placeholders are worth nothing from then on. A
provider without `session_env` (Fujitsu's Digital Annealer: docs/sdks/fujitsu.md)
is reported as not served when a --token names it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable
from typing import TypeGuard

from qpu_broker_client.ca_bundles import USER_BUNDLE_MARK
from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from qpu_broker_client.providers import LUNA_ENV
from qpu_broker_client.trust import ensure_private_dir

from qpu_broker.common.config import Config
from qpu_broker.common.reach import Owner
from qpu_broker.forward.forwarder import Forwarder
from qpu_broker.forward.session_gate import ConnectionGate, HttpConnection, Ticket
from qpu_broker.forward.session_model import (
    PLACEHOLDER_PREFIX,
    Chosen,
    Endpoint,
    Session,
    program_name,
)
from qpu_broker.forward.session_requests import SessionRequests, register_standin
from qpu_broker.providers import Schemes, traits
from qpu_broker.providers.base import ExchangeScheme, Scheme
from qpu_broker.providers.custom import presents_in_header
from qpu_broker.tokens.events import Event, Locked
from qpu_broker.tokens.kinds import INLINE, ORGANIZATION, PERSONAL
from qpu_broker.tokens.personal import PersonalTokens
from qpu_broker.tokens.resolution import Ref, Resolver

log = logging.getLogger(__name__)
HOME_SUFFIX = ".home"  # a session's private directory of SDK files, beside the CA bundles


class Sessions:
    def __init__(self, forwarder: Forwarder, resolver: Resolver, personal: PersonalTokens, schemes: Schemes,
                 config: Callable[[], Config], bundle_dir: pathlib.Path) -> None:
        self._requests = SessionRequests(forwarder, config)
        self._config = config
        self._gate = ConnectionGate()
        self._bundle_dir = bundle_dir  # CA bundles of proxy sessions (public data), one file each
        for stale in bundle_dir.glob("*.pem"):  # left by a daemon that was killed: its sessions are gone
            stale.unlink(missing_ok=True)
        for stale in bundle_dir.glob(f"*{HOME_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)
        self._resolver = resolver
        self._personal = personal
        self._schemes = schemes
        self._sessions: dict[str, Session] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, Locked):  # `env` sessions end on lock; held ones end with their command
            for session in [s for s in self._sessions.values() if s.persistent]:
                asyncio.get_running_loop().create_task(self.end(session.id))

    # -- opening and ending ------------------------------------------------------
    async def open(self, refs: dict[str, Ref], *, persistent: bool, command: str = "") -> Session:
        # Notes for the caller: only about providers it named (one with several tokens that it did not
        # name is left out quietly, every run; its choices are said when nothing at all can be served).
        skipped: list[str] = []
        choices: list[str] = []
        providers = dict.fromkeys((*self._schemes.names(), *refs))  # an org's own provider: named by --org-token
        chosen = {p: c for p in providers if (c := self._choose(p, refs.get(p), choices)) is not None}
        schemes = {p: s for p, c in chosen.items() if (s := self._scheme(c, skipped)) is not None}
        endpoints = {p: _endpoint(chosen[p], s) for p, s in schemes.items() if _served(s)}
        luna_swaps = _luna_swaps(chosen) if any(e.scheme.fills_body_tokens for e in endpoints.values()) else {}
        swapped = {c.provider for _, c in luna_swaps.values()}
        for provider in refs:
            if provider in schemes and provider not in endpoints and provider not in swapped:
                skipped.append(f"{provider}: exec sessions do not serve {provider} yet, except inside Luna "
                               "requests; use Forward, or the SDK transports (botocore signer, httpx/requests "
                               "transports)")
        if not endpoints:
            raise FailedPreconditionError(
                "no provider to serve in this session: store a token (qpu-broker token add) or name one with "
                "--token PROVIDER=NAME" + (f" ({'; '.join(skipped + choices)})" if skipped or choices else ""))
        session = Session(secrets.token_hex(8), endpoints, luna_swaps, skipped, persistent, program_name(command))
        try:
            for endpoint in endpoints.values():
                await self._listen(session, endpoint)
        except BaseException:
            await self._close(session)
            raise
        self._sessions[session.id] = session
        log.info("session %s opened%s: %s", session.id, f" for {session.command}" if session.command else "",
                 ", ".join(f"{c.provider} (token {c.token_name!r})" for c in chosen.values()))
        return session

    def _scheme(self, chosen: Chosen, skipped: list[str]) -> Scheme | None:
        """The chosen token's scheme: a custom provider's from the token's owner (providers.Schemes)."""
        org = chosen.ref.kind == ORGANIZATION
        scheme = self._schemes.get(chosen.provider, Owner.ORG if org else Owner.CONFIG)
        if scheme is None:
            skipped.append(f"{chosen.provider}: the organization defines no provider {chosen.provider!r} (any more): "
                           "ask an org admin" if org else f"{chosen.provider}: no such provider in your config")
        return scheme

    def _choose(self, provider: str, ref: Ref | None, choices: list[str]) -> Chosen | None:
        if ref is not None:
            if ref.kind == INLINE:
                raise InvalidArgumentError("a session uses stored tokens: name one with --token PROVIDER=NAME")
            relay = self._resolver.relay_token(provider, {provider: ref})
            if relay is not None:  # its secret is on the org server, which makes the session's calls
                return Chosen(provider, relay.name, ref)
            resolved = self._resolver.resolve(provider, {provider: ref})  # it exists and opens: fail now, not later
            return Chosen(provider, resolved.name or ref.name or ref.id, ref)
        records, total = self._personal.list(provider, 3, 0)
        if total == 1:
            return Chosen(provider, records[0].name, Ref(PERSONAL, id=records[0].id))
        if total > 1:
            default = self._personal.defaults().get(provider)
            try:
                record = self._personal.find(PERSONAL, token_id=default) if default else None
            except NotFoundError:
                record = None  # the default was deleted: as if there were none
            if record is not None:
                return Chosen(provider, record.name, Ref(PERSONAL, id=record.id))
            names = ", ".join(repr(r.name) for r in records) + (", ..." if total > len(records) else "")
            choices.append(f"{provider}: {total} personal tokens ({names}): pick one with --token {provider}=NAME, "
                           f"or mark one with 'qpu-broker token default NAME'")
        return None

    async def end(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await self._close(session)
        log.info("session %s ended", session_id)
        return True

    async def end_persistent(self) -> int:
        ids = [s.id for s in self._sessions.values() if s.persistent]
        for session_id in ids:
            await self.end(session_id)
        return len(ids)

    async def close(self) -> None:
        for session_id in list(self._sessions):
            await self.end(session_id)

    async def _close(self, session: Session) -> None:
        for endpoint in session.endpoints.values():
            if endpoint.listener is not None:
                endpoint.listener.close()
                endpoint.listener = None
            if endpoint.proxy is not None:
                await endpoint.proxy.close()
                endpoint.proxy = None
            self._gate.close(_key(session, endpoint))  # and the connections still open
            if endpoint.bundle is not None:
                endpoint.bundle.unlink(missing_ok=True)
                # and the bundles a client wrote of a user's own CAs with the session's (ca_bundles)
                for kept in endpoint.bundle.parent.glob(f"{endpoint.bundle.stem}{USER_BUNDLE_MARK}*.pem"):
                    kept.unlink(missing_ok=True)
            if endpoint.home is not None:  # the SDK's files, the stand-ins it was given and wrote among them
                shutil.rmtree(endpoint.home, ignore_errors=True)
                endpoint.home = None
            endpoint.standins.clear()

    # -- the loopback endpoint -----------------------------------------------------
    async def _listen(self, session: Session, endpoint: Endpoint) -> None:
        scheme = endpoint.scheme
        key = _key(session, endpoint)
        if _proxied(scheme):
            await self._listen_as_proxy(session, endpoint, scheme, key, lambda host, request: self._requests.proxied(
                session, endpoint, scheme, host, request))
            return
        if scheme.session_tls_names:  # a custom provider whose SDK names its hosts: the placeholder in its header
            await self._listen_as_proxy(session, endpoint, scheme, key, lambda host, request: self._requests.proxied_header(
                session, endpoint, host, request))
            return

        def connection(ticket: Ticket) -> HttpConnection:
            return HttpConnection(ticket, lambda request: self._requests.direct(session, endpoint, request, ticket.prove),
                                  self._config())

        endpoint.listener = await asyncio.get_running_loop().create_server(self._gate.factory(key, connection),
                                                                           "127.0.0.1", 0)
        endpoint.url = f"http://127.0.0.1:{endpoint.listener.sockets[0].getsockname()[1]}"
        if isinstance(scheme, ExchangeScheme):
            self._write_home(session, endpoint, scheme)

    def _write_home(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme) -> None:
        """The files an SDK reads its endpoint and credential from (fujitsu-quantum's config.json and
        credentials.json), in a directory of their own: 0700, made new, removed with the session."""
        bearer, lifetime, _ = scheme.standin()
        files = scheme.session_files(endpoint.url, endpoint.placeholder, bearer)
        if not files:
            return
        ensure_private_dir(self._bundle_dir)
        home = self._bundle_dir / f"{session.id}-{endpoint.provider}{HOME_SUFFIX}"
        home.mkdir(mode=0o700)  # new: a name already there is no home of ours
        endpoint.home = home
        for name, content in files.items():
            with os.fdopen(os.open(home / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as f:
                f.write(content)
        register_standin(endpoint, bearer, lifetime)

    async def _listen_as_proxy(self, session: Session, endpoint: Endpoint, scheme: Scheme, key: str, handle) -> None:
        from qpu_broker.forward.session_ca import make_session_ca, trust_bundle
        from qpu_broker.forward.session_proxy import SessionProxy

        ca = make_session_ca(scheme.session_tls_names)
        ensure_private_dir(self._bundle_dir)
        endpoint.bundle = self._bundle_dir / f"{session.id}-{endpoint.provider}.pem"
        endpoint.bundle.write_bytes(trust_bundle(ca.ca_pem))
        endpoint.proxy = SessionProxy(endpoint.placeholder, ca, lambda host, port: port == 443 and scheme.official(host),
                                      handle, self._config)
        await endpoint.proxy.start(self._gate, key)
        endpoint.url = endpoint.proxy.url


def _key(session: Session, endpoint: Endpoint) -> str:
    return f"{session.id}/{endpoint.provider}"  # the connection gate counts per endpoint


def _proxied(scheme: Scheme) -> TypeGuard[ExchangeScheme]:
    """An SDK that builds its URLs from host names: its session is an HTTPS proxy."""
    return isinstance(scheme, ExchangeScheme) and bool(scheme.session_exchange)


def _served(scheme: Scheme) -> bool:
    return (presents_in_header(scheme) or isinstance(scheme, ExchangeScheme) or scheme.signs) and bool(scheme.session_env)


def _endpoint(chosen: Chosen, scheme: Scheme) -> Endpoint:
    # An access key id's shape (20 upper-case characters), recognisable as ours.
    return Endpoint(chosen, scheme, _placeholder(), "QBSA" + secrets.token_hex(8).upper() if scheme.signs else "")


def _luna_swaps(chosen: dict[str, Chosen]) -> dict[str, tuple[str, Chosen]]:
    """A placeholder per LUNA_<PROVIDER>_TOKEN field the chosen tokens fill. AWS: all three
    parts, even for a key without a session token, because luna-quantum 1.3 fails unless it
    has all three once it has one (token_provider.py, AWSQpuTokens); the Luna hop sends the
    stored token's own parts."""
    out: dict[str, tuple[str, Chosen]] = {}
    for provider, c in chosen.items():
        quirks = traits(provider)
        if quirks.fills_body_tokens:
            continue  # Luna's own key is no entry of its qpu_tokens
        for field in quirks.split_fields or ((provider,) if provider in LUNA_ENV else ()):
            out[_placeholder()] = (field, c)
    return out


def _placeholder() -> str:
    return PLACEHOLDER_PREFIX + secrets.token_urlsafe(32)


