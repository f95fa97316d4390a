"""The daemon's configuration: a frozen dataclass built once at start-up.

Built from defaults, then `<config dir>/config.toml`; validated with messages
that name the bad key. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any

from qpu_broker_client.errors import InvalidArgumentError

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class Config:
    name_max_chars: int = 128
    secret_max_bytes: int = 16 * 1024
    log_level: str = "info"
    # Argon2id is calibrated to take at least this long (never less than 0.25 s).
    kdf_seconds: float = 0.25
    # How long SIGTERM waits for in-flight calls before cutting them off.
    drain_seconds: float = 10.0


# table -> key -> (Config field, type, check, what a valid value is)
_SCHEMA: dict[str, dict[str, tuple[str, type, Any, str]]] = {
    "limits": {
        "name_max_chars": ("name_max_chars", int, lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
        "secret_max_bytes": ("secret_max_bytes", int, lambda v: 1 <= v <= 1024 * 1024, "an integer from 1 to 1048576"),
    },
    "agent": {
        "log_level": ("log_level", str, lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
        "drain_seconds": ("drain_seconds", (int, float), lambda v: 0 <= v <= 600, "a number of seconds from 0 to 600"),
    },
    "store": {
        "kdf_seconds": ("kdf_seconds", (int, float), lambda v: 0.25 <= v <= 60, "a number of seconds from 0.25 to 60"),
    },
}


def load_config(path: pathlib.Path) -> Config:
    """Read `path` if it exists; raise InvalidArgumentError naming any bad key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"config {path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for table, body in doc.items():
        known = _SCHEMA.get(table)
        if known is None:
            raise InvalidArgumentError(f"config {path}: unknown table [{table}]; known tables: {', '.join(_SCHEMA)}")
        if not isinstance(body, dict):
            raise InvalidArgumentError(f"config {path}: {table} must be a table [{table}]")
        for key, value in body.items():
            if key not in known:
                raise InvalidArgumentError(f"config {path}: unknown key {table}.{key}; known keys: {', '.join(known)}")
            field, kind, check, expected = known[key]
            if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
                raise InvalidArgumentError(f"config {path}: {table}.{key} must be {expected}, not {value!r}")
            values[field] = value
    return Config(**values)
