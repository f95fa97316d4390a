"""INI files as dwave-cloud-client (configparser) and botocore (RawConfigParser) read them, kept
as lines, so a key can be taken out with every other line (comments included) as it was.

One parse: the same walk finds values and the lines that removal drops. Indented lines after a
key continue its value (both parsers do so); `#` and `;` lines are comments.
"""

from __future__ import annotations

import dataclasses
import re

_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
_KEY = re.compile(r"^([^\s=:#;][^=:]*?)\s*[=:]\s?(.*)$")


@dataclasses.dataclass
class Entry:
    section: str
    key: str  # lower-case, as both parsers compare keys
    value: str
    lines: list[int]  # the key's line and its continuation lines


def entries(text: str) -> list[Entry]:
    out: list[Entry] = []
    section = ""
    last: Entry | None = None
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            last = None if not stripped else last
            continue
        if line[0] in " \t" and last is not None:  # a continuation of the key above
            last.value += "\n" + stripped
            last.lines.append(i)
            continue
        if m := _SECTION.match(stripped):
            section, last = m.group(1).strip(), None
            continue
        if m := _KEY.match(stripped):
            last = Entry(section, m.group(1).strip().lower(), m.group(2).strip(), [i])
            out.append(last)
        else:
            last = None
    return out


def values(text: str) -> dict[str, dict[str, str]]:
    """section -> key -> value (a later key of a section wins, as in both parsers)."""
    out: dict[str, dict[str, str]] = {}
    for e in entries(text):
        out.setdefault(e.section, {})[e.key] = e.value
    return out


def without(text: str, section: str, keys: tuple[str, ...]) -> str:
    """`text` without `keys` of `section`: every other byte as it was."""
    drop = {i for e in entries(text) if e.section == section and e.key in keys for i in e.lines}
    lines = text.splitlines(keepends=True)
    return "".join(line for i, line in enumerate(lines) if i not in drop)
