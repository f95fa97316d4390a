"""The `qpu-broker` console script and `python -m qpu_broker`.

The daemon starts without the client commands' parser and imports. A client command
ends with os._exit once its output is flushed: grpc's teardown at interpreter exit was
a sixth of a one-line command's CPU, and nothing of ours needs it. The daemon and the
org server end the usual way (their logs flush).
"""

from __future__ import annotations

import os
import sys


def entry() -> None:
    from qpu_broker.cli.failures import interrupted, reader_gone

    argv = sys.argv[1:]
    try:
        if argv[:1] == ["daemon"]:
            from qpu_broker.cli.daemon_command import main as daemon

            sys.exit(daemon(argv[1:]))
        from qpu_broker.cli.main import main

        try:
            code = main(argv)
        except SystemExit as done:  # argparse's --help (0) and usage errors (2)
            code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        sys.stdout.flush()  # what is still buffered: the reader may have left by now
    except KeyboardInterrupt:  # before a command's own handling (its imports, its parse)
        code = interrupted()
    except BrokenPipeError:  # `qpu-broker token list | head -1`
        reader_gone()
    if argv[:1] == ["org-server"]:
        sys.exit(code)
    sys.stderr.flush()
    os._exit(code)
