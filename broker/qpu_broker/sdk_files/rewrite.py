"""Taking secrets out of a file: everything else kept byte for byte (a qiskit account file and
fujitsu-quantum's credentials.json are written back the way their SDKs write them), atomically (a
temp file in the same directory, fsynced, renamed over), with the file's mode and owner; a 0600
backup only if asked. A file that changed since it was read is left alone."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator

from qpu_broker_client.errors import FailedPreconditionError

from qpu_broker.providers import traits
from qpu_broker.sdk_files import dotenv_lines, ini_lines
from qpu_broker.sdk_files.found import Found, display
from qpu_broker.sdk_files.locations import DOTENV, FQC, INI, QISKIT

SDK_LOCK_WAIT = 10.0  # seconds: an SDK's refresh holds its lock for one call to Cognito
SDK_LOCK_POLL = 0.05  # filelock's own poll interval


def _without(text: str, found: list[Found]) -> str:
    for f in found:
        if f.format == QISKIT:
            accounts = json.loads(text)
            accounts[f.section].pop("token", None)
            text = json.dumps(accounts, sort_keys=True, indent=4)  # as qiskit's storage.py writes it
        elif f.format == FQC:
            sign_in = json.loads(text)
            for key in f.keys:
                sign_in.pop(key, None)
            text = json.dumps(sign_in, indent=4)  # as fujitsu-quantum's auth.py:78 writes it, in key order
        elif f.format == INI:
            text = ini_lines.without(text, f.section, f.keys)
        elif f.format == DOTENV:
            text = dotenv_lines.without(text, f.keys)
    return text


def _core(f: Found) -> bytes:
    """What must not be left in the file: the secret (an AWS set's secret access key, a Fujitsu
    Quantum Cloud sign-in's refresh token)."""
    value = f.secret.reveal()
    if f.format == FQC:
        return json.loads(value)["RefreshToken"].encode()
    return traits(f.provider).file_secret(value)


def _backup(real: pathlib.Path, data: bytes) -> pathlib.Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(100):
        path = real.with_name(f"{real.name}.qpu-broker-backup-{stamp}{f'-{n}' if n else ''}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise FailedPreconditionError(f"cannot name a backup of {display(real)}: too many exist")


@contextlib.contextmanager
def _sdk_lock(f: Found, wait: float) -> Iterator[None]:
    """fujitsu-quantum's own lock on its credentials.json, held while the file is rewritten: its refresh
    reads the file and writes it all back under that lock (auth.py:143-190), so a refresh running
    across the rewrite would put the refresh token back. The lock is `credentials.json.lock` beside
    the path the SDK names (auth.py:42), an flock (filelock's UnixFileLock)."""
    if f.format != FQC:
        yield
        return
    lock = f.path.with_name(f.path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FailedPreconditionError(
                        f"fujitsu-quantum holds {display(lock)} (a refresh or sign-in under way): nothing was taken "
                        "out; run the command again") from None
                time.sleep(SDK_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the flock


def take_out(found: list[Found], *, backup: bool = False, lock_wait: float = SDK_LOCK_WAIT) -> pathlib.Path | None:
    """Remove the secrets of `found` (all in one file) from it; returns the backup's path, if any."""
    with _sdk_lock(found[0], lock_wait):
        return _rewrite(found, backup)


def _rewrite(found: list[Found], backup: bool) -> pathlib.Path | None:
    path = found[0].path
    real = path.resolve(strict=True)  # a symlinked file is rewritten where it is, the link kept
    before = real.read_bytes()
    st = os.stat(real)
    after = _without(before.decode("utf-8"), found).encode("utf-8")
    if any(_core(f) in after for f in found):
        raise FailedPreconditionError(f"{display(path)} holds the secret somewhere else too: take it out by hand")
    saved = _backup(real, before) if backup else None
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(after)
            f.flush()
            os.fsync(f.fileno())
        if real.read_bytes() != before:
            raise FailedPreconditionError(f"{display(path)} changed while it was being rewritten: nothing was taken "
                                          "out; run the command again")
        os.replace(tmp, real)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return saved
