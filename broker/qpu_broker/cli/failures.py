"""How every command fails: one line on stderr naming what went wrong, exit 1, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from qpu_broker_client.errors import QpuBrokerError


def reported(command: Callable[[], int]) -> int:
    try:
        return command()
    except QpuBrokerError as exc:
        print(f"qpu-broker: {exc}", file=sys.stderr)
    except OSError as exc:  # e.g. a directory we may not create
        print(f"qpu-broker: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        print("qpu-broker: interrupted", file=sys.stderr)
    return 1
