"""`qpu-broker daemon`: start-up checks, serving, and a draining shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import signal
import time
from collections.abc import Callable, Mapping

from qpu_broker_client.daemon_socket import answers_at, check_length
from qpu_broker_client.errors import FailedPreconditionError, QpuBrokerError
from qpu_broker_client.paths import Paths
from qpu_broker_client.trust import PinnedDir, ensure_private_dir, pin_private_dir

from qpu_broker.common.config import Config, load_config
from qpu_broker.common.event_loop import event_loop_runner
from qpu_broker.common.hardening import harden_process
from qpu_broker.common.heap import settle as settle_heap
from qpu_broker.common.lockfile import take_lock
from qpu_broker.common.sd_notify import ready, stopping
from qpu_broker.forward.forwarder import Forwarder, RelayHop
from qpu_broker.forward.sessions import Sessions
from qpu_broker.forward.use_records import UseRecords
from qpu_broker.keys.data_key import Keyring
from qpu_broker.org.access import OrgAccess
from qpu_broker.org.admin import OrgTokenAdmin
from qpu_broker.org.link import OrgLink
from qpu_broker.org.quotas import OrgQuotas
from qpu_broker.org.relay import OrgRelay
from qpu_broker.org.secret_cache import SecretCache
from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.org.session import CONNECTED, OrgSession
from qpu_broker.org.state import OrgState
from qpu_broker.org.sync import OrgSync
from qpu_broker.org.usage_reporter import UsageReporter
from qpu_broker.providers import Schemes
from qpu_broker.providers.exchange_cache import ExchangeCache
from qpu_broker.store.anchor import GenerationAnchor
from qpu_broker.store.db import Store
from qpu_broker.tokens.agent_lock import AgentLock
from qpu_broker.tokens.audit_log import AuditLog
from qpu_broker.tokens.auto_lock import Activity, auto_lock
from qpu_broker.tokens.events import Event, Events, Locked, TokenChanged
from qpu_broker.tokens.integrity import StoreIntegrity
from qpu_broker.tokens.org_login import OrgLoginStore
from qpu_broker.tokens.org_tokens import OrgTokens
from qpu_broker.tokens.personal import PersonalTokens
from qpu_broker.tokens.resolution import Resolver
from qpu_broker.tokens.usage_queue import Login, UsageQueue, UsageRecorder
from qpu_broker.wire.interceptors import RPC_LOG
from qpu_broker.wire.org_link import OrgClient
from qpu_broker.wire.server import build_server, set_serving

log = logging.getLogger(__name__)


def _take_lock(path: pathlib.Path, what: str) -> int:
    return take_lock(path, f"another qpu-broker daemon (pid {{pid}}) is running on {what}: use it, or stop it "
                           "first ('systemctl --user stop qpu-broker' or kill it)")


def prepare(paths: Paths) -> tuple[list[int], PinnedDir]:
    """All checks that must pass before serving; returns the held lock fds and the socket's directory,
    held: the socket is bound, and later removed, through it, never through its name again."""
    os.umask(0o077)
    shorter = "QPU_BROKER_SOCKET or QPU_BROKER_HOME to a shorter path"
    check_length(str(paths.socket), shorter)  # other clients connect by name
    socket_dir = pin_private_dir(paths.socket.parent)  # 0700, ours, on a path nobody else can change
    fds: list[int] = []
    try:
        socket_at = socket_dir.at(paths.socket.name)
        check_length(socket_at, shorter)
        for directory in (paths.config_dir, paths.data_dir, paths.state_dir):
            ensure_private_dir(directory)  # the same, each: never tightened
        socket_lock, store_lock = paths.lock_files
        fds.append(_take_lock(pathlib.Path(socket_dir.at(socket_lock.name)), str(paths.socket)))
        fds.append(_take_lock(store_lock, f"the store {paths.store}"))
        if os.path.lexists(socket_at):
            if answers_at(socket_at):
                raise FailedPreconditionError(f"another process answers on {paths.socket}: stop it, or set QPU_BROKER_SOCKET")
            log.info("removing the stale socket %s", paths.socket)
            os.unlink(socket_at)
    except BaseException:
        for fd in fds:
            os.close(fd)
        socket_dir.close()
        raise
    return fds, socket_dir


class Settings:
    """The daemon's current config; `reload()` re-reads config.toml and tells every part.

    A bad file changes nothing: the running config stays, and the error names the key."""

    def __init__(self, path: pathlib.Path, config: Config) -> None:
        self.path = path
        self.current = config
        self._parts: list[Callable[[Config], None]] = []

    def wire(self, *parts: Callable[[Config], None]) -> None:
        self._parts.extend(parts)

    def reload(self) -> Config:
        config = load_config(self.path)  # InvalidArgumentError naming the bad key: nothing applied
        for apply in self._parts:
            apply(config)
        self.current = config
        logging.getLogger().setLevel(config.log_level.upper())
        log.info("config reloaded from %s", self.path)
        return config


@dataclasses.dataclass(frozen=True)
class Vault:
    """The store's parts, one job each, wired once here (for the daemon and in-process tests)."""

    keys: Keyring  # the data key: locked or not, and why
    integrity: StoreIntegrity  # the writer, the generation, the anchor, the state MAC; rollbacks held
    agent: AgentLock  # lock, unlock, passphrase, accepting a store in question
    personal: PersonalTokens
    org_login: OrgLoginStore

    def close(self) -> None:
        self.keys.close()  # the key dropped first, then the writer drained and the files closed
        self.integrity.close()


def open_vault(config: Config, store_path: pathlib.Path, key_file: pathlib.Path, events: Events, *,
               environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic) -> Vault:
    """Open the store: its key first (made, or unwrapped if it can be), then its integrity checked
    (a store in question is held), then the parts that read and write it."""
    reader, writer = Store(store_path), Store(store_path)
    keys = Keyring(config, reader=reader, writer=writer, store_path=store_path, key_file=key_file,
                   environ=os.environ if environ is None else environ, monotonic=monotonic,
                   on_lock=lambda: events.publish(Locked()))
    integrity = StoreIntegrity(keys, reader, writer, GenerationAnchor(key_file.with_name("store.generation")),
                               store_path)
    return Vault(keys, integrity, AgentLock(keys, integrity, events),
                 PersonalTokens(config, integrity, keys, events, clock=clock), OrgLoginStore(integrity, keys, events))


def forgetting(cache: ExchangeCache, schemes: Schemes) -> Callable[[str], None]:
    """Drops what was derived from a token's secret (a token id, or "" for all): exchanged bearers, signing keys."""
    def forget_derived(prefix: str) -> None:
        cache.forget(prefix)
        schemes.forget()
    return forget_derived


def open_forwarding(config: Config, personal: PersonalTokens, events: Events, schemes: Schemes, cache: ExchangeCache,
                    forget_derived: Callable[[str], None], org: OrgTokens, records: UseRecords,
                    relay: RelayHop | None) -> tuple[Resolver, Forwarder]:
    """What a call uses, wired once here (for the daemon and in-process tests): the resolver over the
    personal tokens and the org's, and the forwarder over it. The resolver's opened secrets are wiped
    at once on a lock or a change; derived credentials (bearers, signing keys) are reached only through
    a secret, which a locked vault refuses, so they are dropped on the loop."""
    resolver = Resolver(personal, config.secret_max_bytes, org)

    def drop_derived(event: Event) -> None:
        if isinstance(event, TokenChanged):
            forget_derived(event.token_id)
        elif isinstance(event, Locked):
            forget_derived("")

    events.subscribe_at_once(resolver.on_event)
    events.subscribe(drop_derived)
    return resolver, Forwarder(config, schemes, resolver, cache, records, relay=relay)


@dataclasses.dataclass(frozen=True)
class Org:
    """The org domain's parts, one job each, wired once here over one client of the org server
    (the gRPC one for the daemon; one answering in memory for in-process tests)."""

    link: OrgLink  # login, lock, logout, status; runs the sync and the usage reporter
    session: OrgSession  # the link's state, the member, the last contact and the grace
    state: OrgState  # the org's tokens as the Watch last said
    secrets: SecretCache  # their secrets, and their ends
    access: OrgAccess  # what resolution and listing reach (through the state and the grace)
    admin: OrgTokenAdmin  # token changes, decided by the server
    quotas: OrgQuotas
    relay: OrgRelay  # calls with relay tokens (the forwarder's RelayHop)
    sync: OrgSync  # the Watch stream, run by the link
    reporter: UsageReporter
    usage_login: Callable[[], Login]  # whose records are made now (the login's id, the member)


def open_org(server: OrgServerApi, login: OrgLoginStore, usage: UsageQueue, usage_ready: asyncio.Event,
             grace_seconds: float, forget_derived: Callable[[str], None], *, clock: Callable[[], float] = time.time,
             monotonic: Callable[[], float] = time.monotonic) -> Org:
    """`usage_ready`: set by `usage` when a record is ready to send (UsageQueue's on_queued)."""
    session = OrgSession(grace_seconds, lambda: login.locked, monotonic)
    secrets = SecretCache(forget_derived, clock)
    state = OrgState(secrets)
    quotas = OrgQuotas(server, monotonic)
    access = OrgAccess(session, state, secrets, quotas, server)

    def usage_login() -> Login:  # the login (whichever replica is connected) and the member: records go under it only
        return server.login_id, session.user

    reporter = UsageReporter(usage, server, usage_ready, lambda: session.state == CONNECTED, usage_login)
    sync = OrgSync(server, session, state, access, login, on_connected=reporter.wake)
    link = OrgLink(login, server, session, state, secrets, access, quotas, sync, reporter, usage)
    return Org(link, session, state, secrets, access, OrgTokenAdmin(server, state, access), quotas,
               OrgRelay(server, quotas, access.require), sync, reporter, usage_login)


async def serve(paths: Paths, config: Config, hardening_problems: list[str], socket_dir: PinnedDir) -> int:
    started = time.monotonic()
    settings = Settings(paths.config_file, config)
    events = Events(asyncio.get_running_loop())  # listeners run on this loop, whoever publishes
    vault = open_vault(config, paths.store, paths.key_file, events)
    cache = ExchangeCache()
    # Custom providers: the config's (read at start) for personal and inline tokens, the org's (as the
    # org link last heard them, read at each call) for org tokens.
    schemes = Schemes(config.custom.values(), lambda: org.state.custom_providers())

    forget_derived = forgetting(cache, schemes)
    usage_ready = asyncio.Event()
    usage = UsageQueue(paths.usage_queue, on_queued=usage_ready.set)
    audit = AuditLog(paths.audit_log, paths.audit_anchor, vault.keys.key)
    org_client = OrgClient()
    org = open_org(org_client, vault.org_login, usage, usage_ready, config.org_grace_seconds, forget_derived)
    # Who hears what the vault does, in one place (the resolver's and the forwarder's: open_forwarding).
    # Cached secrets are wiped on the thread that locks (a hold locks on the writer thread), before
    # anything else can read them; the rest runs on the loop.
    resolver, forwarder = open_forwarding(config, vault.personal, events, schemes, cache, forget_derived, org.access,
                                          UseRecords(UsageRecorder(usage, org.usage_login), audit.append),
                                          relay=org.relay)
    events.subscribe_at_once(org.link.wipe_secrets)
    events.subscribe(org.link.on_event)
    events.subscribe(audit.on_event)
    sessions = Sessions(forwarder, resolver, vault.personal, schemes, lambda: settings.current, paths.runtime_dir / "sessions")
    events.subscribe(sessions.on_event)
    settings.wire(vault.personal.reconfigure, vault.keys.reconfigure, lambda c: resolver.reconfigure(c.secret_max_bytes),
                  forwarder.reconfigure, lambda c: org.link.reconfigure(c.org_grace_seconds))
    stop = asyncio.Event()  # set by SIGTERM, SIGINT or the Stop call
    activity = Activity()
    socket_at = socket_dir.at(paths.socket.name)
    server, health_servicer = build_server(vault.agent, vault.personal, forwarder, resolver,
                                           (org.link, org.access, org.admin, org_client), sessions, socket_at, str(paths.socket),
                                           str(paths.store), hardening_problems, stop, activity, settings.reload, audit)
    await server.start()
    os.chmod(socket_at, 0o600)
    await set_serving(health_servicer, True)
    audit.open()
    await org.link.start()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload_logging_errors, settings)
    ready(stop, "locked" if vault.keys.locked else "unlocked")
    log.info("ready on %s in %.0f ms (store %s, key %s, %s)", paths.socket, (time.monotonic() - started) * 1000,
             paths.store, vault.keys.source.value, "locked" if vault.keys.locked else "unlocked")
    settle_heap()  # start-up's objects out of every later collection (a first call may wait its ~10 ms once)
    locker = loop.create_task(auto_lock(vault.agent, activity, lambda: settings.current.auto_lock_seconds, stop))
    anchoring = loop.create_task(audit.keep_anchored(stop))
    await stopping(stop)
    await locker
    await anchoring
    log.info("stopping: draining in-flight calls (up to %.0f s)", config.drain_seconds)
    await set_serving(health_servicer, False)
    await server.stop(grace=config.drain_seconds)
    await sessions.close()
    await org.link.close()
    await forwarder.close()
    usage.close()
    audit.close()
    vault.close()
    RPC_LOG.flush()
    try:
        os.unlink(socket_at)
    except FileNotFoundError:
        pass
    log.info("stopped")
    return 0


def _reload_logging_errors(settings: Settings) -> None:
    try:
        settings.reload()
    except QpuBrokerError as exc:
        log.error("config not reloaded, the running one stays: %s", exc)


def run(paths: Paths, config: Config) -> int:
    problems = harden_process()
    lock_fds, socket_dir = prepare(paths)
    try:
        return event_loop_runner()(serve(paths, config, problems, socket_dir))
    finally:
        for fd in lock_fds:
            os.close(fd)
        socket_dir.close()
