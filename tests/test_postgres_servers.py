"""Which PostgreSQL server the tests start (testsupport/postgres.py): the distribution's where it is
installed, else one on PATH, else the test extra's wheel, whose server then runs the store's tests
on a machine with only Python (as another user when root: PostgreSQL refuses root)."""

from __future__ import annotations

import os

import psycopg

from testsupport import postgres as pg


def _server_at(folder):
    folder.mkdir(parents=True)
    (folder / "initdb").touch(mode=0o755)
    return folder


def test_the_distributions_newest_server_comes_first(tmp_path, monkeypatch):
    for version in ("9", "15"):  # by number: 15 is newer than 9
        _server_at(tmp_path / "postgresql" / version / "bin")
    monkeypatch.setattr(pg, "DISTRIBUTION", str(tmp_path / "postgresql/*/bin/initdb"))
    monkeypatch.setenv("PATH", str(_server_at(tmp_path / "on-path")))
    assert pg.bindir() == tmp_path / "postgresql/15/bin"


def test_without_the_distributions_the_one_on_path_then_the_wheels(tmp_path, monkeypatch):
    monkeypatch.setattr(pg, "DISTRIBUTION", str(tmp_path / "none/*/bin/initdb"))
    monkeypatch.setenv("PATH", str(_server_at(tmp_path / "on-path")))
    assert pg.bindir() == tmp_path / "on-path"
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert pg.bindir() == pg.wheel()
    assert all((pg.wheel() / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def test_the_wheels_server_runs_where_the_distribution_has_none():
    server = pg.Postgres(bin_dir=pg.wheel()).start()
    try:
        with psycopg.connect(server.create_database("from_the_wheel")) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert version.startswith("18."), version
            assert os.stat(f"/proc/{backend}").st_uid != 0, "the server runs as root"
    finally:
        server.stop()
