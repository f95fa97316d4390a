"""A real PostgreSQL server in a temp dir, on a Unix socket only (no TCP port), for the org
server's PostgreSQL store: started with initdb and pg_ctl from the distribution's packages
(`.ci/run` installs them), stopped with pg_ctl. Shared by the tests and bench/.

As root (CI), the server runs as the `postgres` user the package made: PostgreSQL refuses to
run as root.
"""

from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

# Tests: no fsync (a crash of the test machine loses a throwaway database). The bench keeps
# PostgreSQL's defaults (durable commits), as a deployment would.
FAST = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def bindir() -> pathlib.Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return pathlib.Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return pathlib.Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed (no initdb): install the distribution's postgresql package "
                       "(.ci/run does)")


class Postgres:
    def __init__(self, *, fast: bool = True, max_connections: int = 200) -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="qbpg-", dir="/tmp"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self._bin = bindir()
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
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
