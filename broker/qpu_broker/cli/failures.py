"""How every command fails: one line on stderr naming what went wrong, no traceback, and the
exit status a shell gives the same event: 1 for an error, 130 for Ctrl-C, death by SIGPIPE
when the reader of our output went away (`qpu-broker status | head -1`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from qpu_broker_client.errors import QpuBrokerError

INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a command Ctrl-C ended


class UsageError(Exception):
    """A command line that cannot run: argparse shows the subcommand's usage with it (cli/main.py)."""


def reported(command: Callable[[], int]) -> int:
    try:
        return command()
    except QpuBrokerError as exc:
        print(f"qpu-broker: {exc}", file=sys.stderr)
    except BrokenPipeError:
        reader_gone()
    except OSError as exc:  # e.g. a directory we may not create
        print(f"qpu-broker: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        return interrupted()
    return 1


def interrupted() -> int:
    """Ctrl-C: quiet, as a shell's commands are (a prompt's line is ended, so the shell's starts afresh)."""
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return INTERRUPTED


def reader_gone() -> NoReturn:
    """Our output's reader left. Python ignores SIGPIPE and raises instead; end as every Unix tool
    does when it writes to a closed pipe, killed by SIGPIPE, silently: the shell then knows why."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_kill(threading.get_ident(), signal.SIGPIPE)  # this thread: delivered before it returns
    os._exit(128 + signal.SIGPIPE)  # not reached
