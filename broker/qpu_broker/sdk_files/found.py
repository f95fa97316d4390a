"""One plaintext credential found in a file: where, under which name, for which provider."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from qpu_broker_client.secret import Secret


@dataclasses.dataclass(frozen=True)
class Found:
    path: pathlib.Path
    kind: str  # what holds it, in the SDK's words: "qiskit account", "dwave.conf profile", ...
    name: str  # the account, profile or variable name(s) in the file
    provider: str
    secret: Secret = dataclasses.field(repr=False)
    keys: tuple[str, ...]  # what removal takes out: the keys of `section` (a .env's variables, a JSON file's keys)
    section: str = ""  # the JSON object or INI section holding `keys` ("" in a .env)
    format: str = ""  # how the file is written: locations.QISKIT, FQC, INI or DOTENV
    note: str = ""  # how an SDK uses it that matters (a default account, read before the environment)
    overrides_exec: str = ""  # set: why this beats an exec session's variables (SDK file:line)
    # set: why another user could have written the file (trust.untrusted): its key may be theirs, so
    # it is never stored (a victim's work would run on, and show itself to, their account)
    foreign: str = ""

    def where(self) -> str:
        return f"{display(self.path)}: {self.kind} {self.name!r}"

    def token_name(self) -> str:
        """The name `import` stores it under unless told otherwise."""
        return f"{self.name} ({display(self.path)})"[:128]

    def as_dict(self) -> dict[str, str]:
        """For --json: never the secret."""
        return {"file": str(self.path), "kind": self.kind, "name": self.name, "provider": self.provider,
                "note": self.note, "overrides_exec": self.overrides_exec, "foreign": self.foreign}


def display(path: pathlib.Path) -> str:
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text
