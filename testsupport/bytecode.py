"""The tree's bytecode compiled once, as pip compiles it at install: an editable tree under
PYTHONDONTWRITEBYTECODE (some shells set it) would otherwise recompile every module of ours at each
daemon, org server and CLI start, and tests and benches would time the compiler."""

from __future__ import annotations

import compileall
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def compile_tree() -> None:
    for package in ("broker", "client", "testsupport"):
        compileall.compile_dir(ROOT / package, quiet=1)
