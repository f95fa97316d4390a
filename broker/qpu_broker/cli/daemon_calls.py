"""A command the daemon answers: its handler gets a Broker, open for the command's length."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from qpu_broker_client import Broker

Handler = Callable[[Broker, argparse.Namespace], int | None]


def on_broker(handler: Handler, *, autostart: bool | None = None) -> Callable[[argparse.Namespace], int | None]:
    """`run` of a table entry (common/commands.py). autostart=False: a command that reports on a
    daemon (status, stop, doctor) and must never start one; None: as the config says."""
    def run(args: argparse.Namespace) -> int | None:
        with Broker(autostart=autostart) as broker:
            return handler(broker, args)
    return run
