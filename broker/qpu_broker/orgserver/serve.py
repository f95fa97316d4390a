"""`qpu-broker org-server serve`: gRPC over TLS until SIGTERM.

One server per SQLite store (an flock on the data dir); any number on one PostgreSQL
database (replicas). Plain text only on a loopback address, for tests: enrollment codes,
access tokens and org secrets never cross a network in clear. TLS comes from
--tls-cert/--tls-key, else from the files `init --tls-host` made. A task follows the store's events, whoever wrote them (an
admin's `user rm` on the data dir, another replica), and pushes them to members.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib

from qpu_broker_client.errors import FailedPreconditionError

from qpu_broker.common.hardening import harden_process
from qpu_broker.common.heap import settle as settle_heap
from qpu_broker.common.lockfile import take_lock
from qpu_broker.common.reach import is_loopback
from qpu_broker.common.sd_notify import ready, stopping
from qpu_broker.common.url import netloc
from qpu_broker.orgserver.db import RECORDS_SYNC_DEFAULT, backend
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.listen import check_bindable, parse_listen
from qpu_broker.orgserver.record_writer import RecordWriter
from qpu_broker.orgserver.relay import Relay
from qpu_broker.orgserver.server_names import LOOPBACK_NAMES, cert_names
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.throttle import Throttle
from qpu_broker.orgserver.wire.server import bind, org_server
from qpu_broker.wire.interceptors import RPC_LOG

log = logging.getLogger(__name__)


def _tls_files(layout: OrgLayout, cert: pathlib.Path | None, key: pathlib.Path | None
               ) -> tuple[pathlib.Path, pathlib.Path] | None:
    """The certificate and key both listeners serve (gRPC, the console): the ones given, else init's."""
    if cert is None and layout.tls.exists():
        cert, key = layout.tls.cert, layout.tls.key
    return None if cert is None or key is None else (cert, key)


def _tls(files: tuple[pathlib.Path, pathlib.Path] | None) -> tuple[bytes, bytes] | None:
    if files is None:
        return None
    cert, key = files
    try:
        return key.read_bytes(), cert.read_bytes()
    except OSError as exc:
        raise FailedPreconditionError(f"cannot read the TLS certificate or key: {exc.strerror}: {exc.filename}") from None


def require_tls_off_loopback(layout: OrgLayout, serving: str, listen: str, host: str, tls: object, what: str) -> None:
    """The one rule for both listeners (gRPC, the console): plain text on loopback addresses only
    (console/login.py holds a sign-in link's printed address to it too)."""
    if tls is None and not is_loopback(host):
        raise FailedPreconditionError(
            f"refusing to serve {serving}without TLS on {listen}: {what} would cross the network in clear. Give "
            f"--tls-cert and --tls-key, or make them with 'qpu-broker org-server tls issue --data {layout.root} "
            "--tls-host NAME' (plain text is allowed on loopback addresses only, for tests)")


async def serve(layout: OrgLayout, database: str | None, listen: str, tls_cert: pathlib.Path | None,
                tls_key: pathlib.Path | None, records_sync: str | None = None, console: str | None = None) -> int:
    harden_process()  # it holds the server key and, in use, org secrets
    db = backend(layout.require(database)[0])  # an org's data dir, or the one-line reason it is not
    host, port = parse_listen(listen)
    if records_sync is not None and db.records_sync_refused:
        raise FailedPreconditionError(db.records_sync_refused)
    tls_files = _tls_files(layout, tls_cert, tls_key)
    tls = _tls(tls_files)
    require_tls_off_loopback(layout, "", listen, host, tls, "enrollment codes, access tokens and org secrets")
    console_at = parse_listen(console, "--console") if console is not None else None
    if console_at is not None:
        require_tls_off_loopback(layout, "the console ", console, console_at[0], tls,
                                  "console sign-in links and session cookies")
        from qpu_broker.orgserver.console.render import environment

        environment()  # the console's extra is installed, or the one line saying how
    lock = None
    if db.one_server:
        lock = take_lock(layout.lock_file, f"another org server (pid {{pid}}) is serving {layout.root}: stop it "
                                           "first, or give another --data (replicas need --database postgresql://…)")
    try:
        if port:  # a port of the system's choosing is always free
            check_bindable(listen, host, port)
        if console_at is not None and console_at[1]:
            check_bindable(console, *console_at)
        return await _serve(layout, database, listen, host, tls, records_sync or RECORDS_SYNC_DEFAULT,
                            console_at, tls_files)
    finally:
        if lock is not None:
            os.close(lock)


async def _serve(layout: OrgLayout, database: str | None, listen: str, host: str,
                 tls: tuple[bytes, bytes] | None, records_sync: str, console_at: tuple[str, int] | None,
                 tls_files: tuple[pathlib.Path, pathlib.Path] | None) -> int:
    store, key = layout.open(database)
    # The names it takes access tokens and DeviceToken requests for: its certificate's, read once.
    names = cert_names(tls[1]) if tls is not None else LOOPBACK_NAMES
    service = OrgService(store, key, names=names)
    kind, target = layout.database(database)
    # Relayed calls' records, on a connection of its own.
    writer = RecordWriter(lambda: OrgStore.open(kind, target, synchronous=records_sync))
    writer.start()
    relay = Relay(service, writer)
    server = org_server(service, relay, Throttle())
    if tls is None:
        log.warning("serving WITHOUT TLS on %s (loopback only): for tests; daemons connect over TLS only", listen)
    port = bind(server, listen, tls)
    console = None
    if console_at is not None:  # listening before gRPC starts: ready means both are
        from qpu_broker.orgserver.console.server import start_console

        console = await start_console(service, *console_at, tls_files,
                                      names[0] if tls is not None else console_at[0],
                                      lambda: OrgStore.open(kind, target))
    await server.start()
    stop = asyncio.Event()
    follower = asyncio.get_running_loop().create_task(service.follow_store(store.db.poll_seconds))
    ready(stop)
    log.info("org server for %r ready on %s (%s)", service.org, netloc(host, port), "TLS" if tls else "no TLS")
    settle_heap()  # start-up's objects out of every later collection (common/heap.py)
    await stopping(stop)
    follower.cancel()
    service.end_all("is shutting down")
    if console is not None:
        await console.cleanup()
    await server.stop(grace=5)
    await relay.close()
    writer.close()
    store.close()
    RPC_LOG.flush()
    log.info("stopped")
    return 0
