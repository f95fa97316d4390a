"""How an `org-server` command reaches its org: the data dir's layout, or its store opened;
every change it makes recorded as the local operator's, at the wall clock's time."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

from qpu_broker.orgserver.admin_record import ACTOR, AdminRecord, local_operator
from qpu_broker.orgserver.devices import Devices
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.store import OrgStore

Run = Callable[[argparse.Namespace], int | None]


def on_layout(handler: Callable[[OrgLayout, argparse.Namespace], int | None]) -> Run:
    """`run` of a command that makes or serves the data dir (init, serve, tls)."""
    def run(args: argparse.Namespace) -> int | None:
        layout = OrgLayout(args.data)
        ACTOR.set(local_operator())  # who every change this command makes is recorded as
        return handler(layout, args)
    return run


def on_store(handler: Callable[[OrgStore, argparse.Namespace], int | None]) -> Run:
    """`run` of a command on the org's store, opened from the data dir."""
    return on_layout(lambda layout, args: handler(layout.open(args.database)[0], args))


def on_devices(handler: Callable[[Devices, argparse.Namespace], int | None]) -> Run:
    """`run` of a command on users' devices and codes, which needs the server's key too."""
    def devices(layout: OrgLayout, args: argparse.Namespace) -> int | None:
        store, key = layout.open(args.database)
        return handler(Devices(store, key, store.meta("org") or "org", store.meta("store_id") or "", now_us,
                               record(store)), args)
    return on_layout(devices)


def now_us() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1e6)


def record(store: OrgStore) -> AdminRecord:
    """The admin record, its entries by the local operator (`run` sets ACTOR)."""
    return AdminRecord(store, now_us)

