"""Where each SDK keeps plaintext credentials, read from its sources, and what is in them.

- qiskit-ibm-runtime 0.51: `~/.qiskit/qiskit-ibm.json` (accounts/management.py:29-31, no variable
  moves it), a JSON object of named accounts with `token` (storage.py:24-61, written with
  sort_keys and indent 4). `QiskitRuntimeService(name=…)` loads a saved account whatever the
  environment says (qiskit_runtime_service.py:425-441); without a name QISKIT_IBM_TOKEN comes
  first (management.py:184-195), so an account marked default does not beat a session.
- dwave-cloud-client 0.14: `DWAVE_CONFIG_FILE` alone when set; else `$XDG_CONFIG_DIRS` (default
  /etc/xdg), `$XDG_CONFIG_HOME` (default ~/.config) and `.`, each `dwave/dwave.conf` (`./dwave.conf`
  for the last; config/loaders.py:158-223 and homebase); configparser with `[defaults]`
  (loaders.py:336); the environment beats the files (loaders.py:640-641).
- botocore 1.43: `AWS_SHARED_CREDENTIALS_FILE` (~/.aws/credentials, sections named by profile) and
  `AWS_CONFIG_FILE` (~/.aws/config, `[default]` and `[profile NAME]`) (configprovider.py:73-84);
  keys aws_access_key_id, aws_secret_access_key, aws_session_token. The environment's keys come
  first unless code names a profile (`boto3.Session(profile_name=…)`: credentials.py:95, 155-172).
- `.env` files: python-dotenv's search, the first `.env` from a directory up to `/`; qiskit-ionq
  1.1 reads it *before* the environment (helpers.py:797-806), searching from its own install
  directory (python-dotenv's find_dotenv, or the working directory in a notebook).
- fujitsu-quantum 2.4: `$FUJITSU_QUANTUM_HOME/credentials.json`, the variable taken as given
  (`Path(value).absolute()`: against the working directory, no `~`, an empty value is the working
  directory itself), else `~/.fujitsu-quantum` (config.py:57-62, auth.py:39-41); one JSON object
  written with indent 4 in key order (auth.py:49-78), the Cognito sign-in: ClientId, Username,
  AccessToken, RefreshToken, their expiry times, DeviceKey. An exec session points the variable at
  a private directory of its own, so the file never beats a session.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
from collections.abc import Iterator, Mapping

from qpu_broker_client.providers import LUNA_AWS_ENV, LUNA_ENV
from qpu_broker_client.secret import Secret
from qpu_broker_client.trust import untrusted

from qpu_broker.common.secret_shapes import FQC_FIELDS
from qpu_broker.providers import all_schemes
from qpu_broker.sdk_files import dotenv_lines, ini_lines
from qpu_broker.sdk_files.found import Found

QISKIT = "qiskit-json"
INI = "ini"
DOTENV = "dotenv"
FQC = "fujitsu-quantum-json"

# What taking a Fujitsu Quantum Cloud sign-in out removes: its two bearer secrets. ClientId, Username and
# DeviceKey name the user, app and device (no use without a refresh token); the SDK reading the file then
# says "The credentials are outdated. Please run `fujitsu-quantum login`" (auth.py:118-120).
FQC_SECRET_KEYS = ("AccessToken", "RefreshToken")

AWS_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
# qiskit-ionq's names, in the order it reads them from a .env before the environment (helpers.py:799-806).
IONQ_DOTENV_FIRST = ("QISKIT_IONQ_API_TOKEN", "IONQ_API_KEY", "IONQ_API_TOKEN")
QISKIT_BY_NAME = ("a script that names it, QiskitRuntimeService(name=…), sends this key and not an exec "
                  "session's (qiskit_ibm_runtime/qiskit_runtime_service.py:425-441)")
AWS_BY_PROFILE = ("code that names this profile, boto3.Session(profile_name=…), uses this key and not an exec "
                  "session's (botocore/credentials.py:95, 155-172)")
IONQ_BEFORE_ENV = ("qiskit-ionq reads this .env before the environment, so under exec it sends this key "
                   "and not the session's (qiskit_ionq/helpers.py:797-806)")


def credential_variables() -> dict[str, str]:
    """variable -> provider: every variable an exec session puts a credential in, the Luna
    SDK's, and qiskit-ionq's third name."""
    out: dict[str, str] = {}
    for provider, scheme in all_schemes().items():
        for name, template in scheme.session_env.items():
            if template == "{credential}":
                out[name] = provider
    out.update({name: provider for provider, name in LUNA_ENV.items()})
    out["IONQ_API_TOKEN"] = "ionq"  # qiskit-ionq reads it too (helpers.py:804); no session sets it
    return out


# AWS credential sets in a .env: (key id, secret, session token) variables, one credential each.
AWS_VARIABLE_SETS = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
                     tuple(LUNA_AWS_ENV[f] for f in ("aws_access_key", "aws_secret_access_key", "aws_session_token")))


def qiskit_file(home: pathlib.Path) -> pathlib.Path:
    return home / ".qiskit" / "qiskit-ibm.json"


def dwave_files(env: Mapping[str, str], home: pathlib.Path, cwd: pathlib.Path) -> list[pathlib.Path]:
    """Lowest priority first, as dwave-cloud-client ranks them."""
    if env.get("DWAVE_CONFIG_FILE"):
        return [pathlib.Path(os.path.expanduser(env["DWAVE_CONFIG_FILE"]))]
    dirs = [os.path.expanduser(d.rstrip(os.sep)) for d in env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)]
    dirs.append(env.get("XDG_CONFIG_HOME", str(home / ".config")))
    return [*(pathlib.Path(d, "dwave", "dwave.conf") for d in dirs), cwd / "dwave.conf"]


def aws_files(env: Mapping[str, str], home: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(path, kind) of botocore's two files."""
    creds = env.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / ".aws" / "credentials")
    config = env.get("AWS_CONFIG_FILE") or str(home / ".aws" / "config")
    return [(pathlib.Path(os.path.expanduser(creds)), "aws credentials profile"),
            (pathlib.Path(os.path.expanduser(config)), "aws config profile")]


def fujitsu_quantum_file(env: Mapping[str, str], home: pathlib.Path, cwd: pathlib.Path) -> pathlib.Path:
    """fujitsu-quantum's credentials.json: the variable when set at all, even empty (config.py:58-62)."""
    if "FUJITSU_QUANTUM_HOME" in env:
        return cwd / env["FUJITSU_QUANTUM_HOME"] / "credentials.json"  # an absolute value replaces cwd
    return home / ".fujitsu-quantum" / "credentials.json"


def first_dotenv(start: pathlib.Path) -> pathlib.Path | None:
    """python-dotenv's find_dotenv from `start`: the first `.env` up to the root."""
    for d in (start, *start.parents):
        candidate = d / ".env"
        if candidate.is_file():
            return candidate
    return None


def ionq_dotenvs(cwd: pathlib.Path) -> list[pathlib.Path]:
    """The .env files qiskit-ionq would read: from its install directory (a script), or from the
    working directory (a notebook)."""
    starts = [cwd]
    spec = importlib.util.find_spec("qiskit_ionq")
    if spec is not None and spec.origin:
        starts.append(pathlib.Path(spec.origin).parent)
    return [p for p in (first_dotenv(s) for s in starts) if p is not None]


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def in_qiskit(path: pathlib.Path) -> Iterator[Found]:
    text = _read(path)
    if not text:
        return
    try:
        accounts = json.loads(text)
    except ValueError:
        return
    for name, account in accounts.items() if isinstance(accounts, dict) else ():
        if isinstance(account, dict) and isinstance(account.get("token"), str) and account["token"]:
            default = " (marked default)" if account.get("is_default_account") else ""
            yield Found(path, "qiskit account", name, "ibm", Secret(account["token"]), ("token",), name, QISKIT,
                        f"channel {account.get('channel', '?')}{default}", QISKIT_BY_NAME)


def in_fujitsu_quantum(path: pathlib.Path) -> Iterator[Found]:
    text = _read(path)
    try:
        doc = json.loads(text or "null")
    except ValueError:
        return
    if not isinstance(doc, dict) or not doc.get("RefreshToken"):
        return
    # The sign-in under the SDK's names, no access token: the daemon makes it canonical
    # (secret_shapes.fujitsu_quantum_parts) or refuses it naming what is missing or wrong.
    sign_in = {k: doc[k] for k in FQC_FIELDS if k in doc}
    until = doc.get("RefreshTokenExpirationTime")
    note = f"refresh token until {until} by the SDK's reckoning" if isinstance(until, str) else ""
    yield Found(path, "fujitsu-quantum sign-in", "RefreshToken", "fujitsu_quantum", Secret(json.dumps(sign_in)),
                FQC_SECRET_KEYS, "", FQC, note)


def in_dwave(path: pathlib.Path) -> Iterator[Found]:
    text = _read(path)
    for section, keys in ini_lines.values(text or "").items():
        if keys.get("token"):
            yield Found(path, "dwave.conf profile", section, "dwave", Secret(keys["token"]), ("token",), section, INI)


def in_aws(path: pathlib.Path, kind: str) -> Iterator[Found]:
    text = _read(path)
    for section, keys in ini_lines.values(text or "").items():
        key_id, secret, session = (keys.get(k, "") for k in AWS_KEYS)
        if key_id and secret:
            profile = section.removeprefix("profile ").strip() if kind == "aws config profile" else section
            value = ":".join([key_id, secret, *([session] if session else [])])
            yield Found(path, kind, profile, "aws", Secret(value), AWS_KEYS, section, INI,
                        overrides_exec=AWS_BY_PROFILE)


def in_dotenv(path: pathlib.Path, read_by_ionq: bool = False) -> Iterator[Found]:
    text = _read(path)
    if not text:
        return
    values = dotenv_lines.values(text)
    for names in AWS_VARIABLE_SETS:
        key_id, secret, session = (values.get(n, "") for n in names)
        if key_id and secret:
            value = ":".join([key_id, secret, *([session] if session else [])])
            yield Found(path, ".env variables", ", ".join(n for n in names if values.get(n)), "aws", Secret(value),
                        names, "", DOTENV)
    groups: dict[tuple[str, str], list[str]] = {}
    for name, provider in credential_variables().items():
        if values.get(name) and not any(name in s for s in AWS_VARIABLE_SETS):
            groups.setdefault((provider, values[name]), []).append(name)
    for (provider, value), names in groups.items():
        names.sort()
        ionq = read_by_ionq and any(n in IONQ_DOTENV_FIRST for n in names)
        yield Found(path, ".env variable" + ("s" if len(names) > 1 else ""), ", ".join(names), provider, Secret(value),
                    tuple(names), "", DOTENV, overrides_exec=IONQ_BEFORE_ENV if ionq else "")


def find_all(env: Mapping[str, str], home: pathlib.Path, cwd: pathlib.Path,
             extra: list[pathlib.Path] = ()) -> list[Found]:
    """Every plaintext credential in the SDKs' files, and in `extra` files (.env, or any of the
    formats above, told apart by name)."""
    out = list(in_qiskit(qiskit_file(home)))
    out += in_fujitsu_quantum(fujitsu_quantum_file(env, home, cwd))
    for path in dwave_files(env, home, cwd):
        out += in_dwave(path)
    for path, kind in aws_files(env, home):
        out += in_aws(path, kind)
    ionq = {p.resolve() for p in ionq_dotenvs(cwd)}
    seen = {f.path.resolve() for f in out}
    for path in [*(p for p in [first_dotenv(cwd)] if p), *ionq, *extra]:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        out += _by_name(path, path.resolve() in ionq)
    # A .env in a shared folder, a file another user owns: what is in it may be theirs, not ours.
    return [dataclasses.replace(f, foreign=untrusted(f.path) or "") for f in out]


def _by_name(path: pathlib.Path, read_by_ionq: bool) -> Iterator[Found]:
    if path.name == "credentials.json":
        return in_fujitsu_quantum(path)
    if path.name.endswith(".json"):
        return in_qiskit(path)
    if path.name.endswith(".conf"):
        return in_dwave(path)
    if path.name in ("credentials", "config"):
        return in_aws(path, "aws config profile" if path.name == "config" else "aws credentials profile")
    return in_dotenv(path, read_by_ionq)
