"""`.env` files as python-dotenv reads them (qiskit-ionq calls its dotenv_values): KEY=value,
`export KEY=value`, quoted values, comments; kept as lines, so a variable can be taken out with
every other line as it was."""

from __future__ import annotations

import re

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")


def _value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        inner = raw[1:-1]
        return inner.encode().decode("unicode_escape") if raw[0] == '"' and "\\" in inner else inner
    return re.sub(r"\s+#.*$", "", raw)  # an unquoted value ends at a comment


def entries(text: str) -> list[tuple[int, str, str]]:
    """(line index, name, value) of each assignment on one line."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if (m := _LINE.match(line)) and not line.lstrip().startswith("#"):
            out.append((i, m.group(1), _value(m.group(2))))
    return out


def values(text: str) -> dict[str, str]:
    return {name: value for _, name, value in entries(text)}


def without(text: str, names: tuple[str, ...]) -> str:
    drop = {i for i, name, _ in entries(text) if name in names}
    return "".join(line for i, line in enumerate(text.splitlines(keepends=True)) if i not in drop)
