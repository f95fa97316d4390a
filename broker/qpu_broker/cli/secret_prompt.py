"""Secrets and passphrases as commands read them: from a no-echo prompt or stdin, never argv;
and what is checked before a prompt, so nothing is typed in vain."""

from __future__ import annotations

import os
import sys
from typing import Any

from qpu_broker_client import LockedError, QpuBrokerError


def read_secret(prompt: str, *, confirm: bool = False) -> str:
    """From a no-echo prompt on a terminal (twice when `confirm`), else exactly one line of stdin."""
    if sys.stdin.isatty():
        value = _prompt(prompt)
        if confirm and _prompt("Again: ") != value:
            raise QpuBrokerError("the two entries differ; nothing was changed")
    else:
        lines = sys.stdin.read().splitlines()
        if any(line.strip() for line in lines[1:]):
            raise QpuBrokerError(f"stdin holds {len(lines)} lines: pipe the secret (or passphrase) on one line, "
                                 "once (a terminal asks twice; a pipe gives it once)")
        value = lines[0] if lines else ""
    if not value:
        raise QpuBrokerError("no secret given: type it at the prompt, or pipe it on stdin")
    return value


def _prompt(prompt: str) -> str:
    import getpass  # with termios: only a command that prompts loads them

    _interruptible()
    try:
        return getpass.getpass(prompt)
    except EOFError:  # Ctrl-D: the line getpass leaves open is ended, then one line says so
        print(file=sys.stderr)
        raise QpuBrokerError("nothing was entered (the input ended at the prompt); nothing was changed") from None



_watching: list[bool] = []


def _interruptible() -> None:
    """Ctrl-C ends a prompt whichever thread the kernel hands the SIGINT to. It may pick any of the
    process's threads (grpc's, when the main thread has a signal pending); Python then only notes
    it, and the main thread stays blocked reading the terminal (Ctrl-C did nothing until Enter). So
    noted signals also go to a pipe, and a thread reading it pokes the main thread with SIGUSR1
    (handled as nothing): its read is interrupted, and the noted SIGINT raises KeyboardInterrupt there."""
    if _watching:
        return
    import signal
    import threading

    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    main = threading.main_thread().ident

    def watch() -> None:
        while noted := os.read(read, 64):
            if signal.SIGINT in noted:  # not its own pokes' SIGUSR1: they are noted too
                signal.pthread_kill(main, signal.SIGUSR1)

    threading.Thread(target=watch, name="prompt-interrupts", daemon=True).start()
    _watching.append(True)


def unlocked(s: Any) -> None:
    """Before a prompt: a locked agent would refuse what was typed, after it was typed."""
    if s.locked:
        raise LockedError(f"the agent is locked ({s.lock_reason}); nothing was asked for or changed")
