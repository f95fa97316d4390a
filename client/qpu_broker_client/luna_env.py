"""The calling process's LUNA_* variables fill the TokenProvider fields it leaves empty
(an explicit field wins), as the Luna SDK 1.x does; they travel to the daemon as
inline tokens, which it never stores or logs."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import InvalidArgumentError
from .providers import LUNA_AWS_ENV, LUNA_ENV
from .tokens import QpuToken, TokenProvider


def merged_fields(qpu_tokens: TokenProvider | None, environ: Mapping[str, str] | None = None) -> dict[str, QpuToken]:
    """Explicit fields, then each empty field from its environment variable."""
    env = os.environ if environ is None else environ
    qpu_tokens = TokenProvider.coerce(qpu_tokens)  # luna-quantum's own TokenProvider too
    fields = dict(qpu_tokens.items()) if qpu_tokens is not None else {}
    for field, var in LUNA_ENV.items():
        if field not in fields and env.get(var):
            fields[field] = QpuToken("inline", token=env[var])
    if not {"aws", "aws_access_key", "aws_secret_access_key"} & set(fields):
        present = {f: env[v] for f, v in LUNA_AWS_ENV.items() if env.get(v)}
        if present:
            for needed in ("aws_access_key", "aws_secret_access_key"):
                if needed not in present:
                    have = ", ".join(LUNA_AWS_ENV[f] for f in present)
                    raise InvalidArgumentError(f"{LUNA_AWS_ENV[needed]} is not set, but {have} is: AWS needs both halves")
            fields.update({f: QpuToken("inline", token=v) for f, v in present.items()})
    return fields
