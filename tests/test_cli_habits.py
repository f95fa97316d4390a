"""The CLI habits users expect: stop, a status that starts nothing, one-line pipes,
canonical names and providers, and usage errors for bad counts. Real daemon, real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import unicodedata

import pytest
from qpu_broker_client import AlreadyExistsError, QpuTokenType
from qpu_broker_client.autostart import answers


def test_stop_drains_and_exits_and_never_starts_a_daemon(make_daemon):
    d = make_daemon().start()
    r = d.cli("stop")
    assert r.returncode == 0 and r.stdout.strip() == f"stopped the daemon (pid {d.proc.pid})", r.stderr
    assert d.proc.wait(timeout=20) == 0
    again = d.cli("stop", env={"QPU_BROKER_NO_AUTOSTART": ""})
    assert again.returncode == 0 and "no qpu-broker daemon is running" in again.stdout
    assert not answers(d.paths)


def test_status_reports_but_never_starts_a_daemon_or_creates_a_store(make_daemon):
    d = make_daemon()
    r = d.cli("status", env={"QPU_BROKER_NO_AUTOSTART": ""})
    assert r.returncode == 1 and "no qpu-broker daemon answers" in r.stderr
    assert not answers(d.paths) and not d.paths.store.exists()


def test_a_piped_passphrase_is_exactly_one_line(make_daemon):
    d = make_daemon().start()
    twice = d.cli("passphrase", input="pw-one\npw-one\n")
    assert twice.returncode == 1 and "stdin holds 2 lines" in twice.stderr
    assert d.broker().status().key_source == "key-file"  # nothing changed
    assert d.cli("passphrase", input="pw-one\n").returncode == 0
    d.broker().lock()
    assert d.cli("unlock", input="pw-one\n").stdout.strip() == "unlocked"


def test_secrets_names_and_providers_in_their_canonical_form(daemon):
    api = daemon.broker().qpu_token
    blank = daemon.cli("token", "add", "blank", "--provider", "ibm", input="    \n")
    assert blank.returncode == 1 and "only white space" in blank.stderr
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    made = api.create(name=nfd, provider="IBM", token="s3cret")  # stored as NFC, provider ibm
    assert made.name == nfc and made.provider == "ibm"
    assert api.get(name=nfc).id == api.get(name=nfd).id == made.id
    with pytest.raises(AlreadyExistsError):
        api.create(name=nfc, provider="ibm", token="other")
    upper = daemon.cli("token", "add", "Upper", "--provider", "DWave", input="s\n")
    assert upper.returncode == 0, upper.stderr
    listed = daemon.cli("token", "list", "--provider", "DWAVE", "--json")
    assert '"Upper"' in listed.stdout and '"dwave"' in listed.stdout
    assert [t.provider for t in api.get_all(filter_provider="Ibm")[QpuTokenType.PERSONAL]] == ["ibm"]
    bad = daemon.cli("token", "list", "--limit", "-1")
    assert bad.returncode == 2 and "--limit" in bad.stderr
    status = daemon.cli("status")
    assert "(2 personal tokens)" in status.stdout
    api.delete(qpu_token_name="Upper")
    assert "(1 personal token)" in daemon.cli("status").stdout


def _commands(parser, path=()):
    """Every command's path and parser, groups of commands and the top level included."""
    import argparse

    yield list(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_help_on_every_option_and_subcommand_usage_errors(make_daemon):
    import argparse

    from qpu_broker.cli.main import build_parser

    commands = list(_commands(build_parser()))
    assert len(commands) > 60
    for path, parser in commands:
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help"
    d = make_daemon().start()
    r = d.cli("token", "show")  # neither NAME nor --id: the error shows token show's usage
    assert r.returncode == 2 and r.stderr.startswith("usage: qpu-broker token show"), r.stderr


def test_every_help_page_ends_with_an_example_from_one_table(capsys):
    """`--help` of every command, the top level and groups of commands (token, org, org-server, ...)
    included, ends with an example of that command, from its command's table."""
    from qpu_broker.cli.daemon_command import COMMAND as DAEMON
    from qpu_broker.cli.main import build_parser, table

    paths = [path for path, _ in _commands(build_parser())]
    for path in paths:
        with pytest.raises(SystemExit) as done:
            build_parser([*path, "--help"]).parse_args([*path, "--help"])  # the branch `qpu-broker ... --help` builds
        assert done.value.code == 0
        page = capsys.readouterr().out
        assert "\nexample" in page, f"qpu-broker {' '.join(path)} --help ends with no example:\n{page[-300:]}"
        tail = page[page.rindex("\nexample"):].splitlines()
        assert tail[1] in ("example:", "examples:") and len(tail) > 2, (path, page[-300:])
        assert all(line.startswith("  ") and ("qpu-broker " + " ".join(path)).strip() in line for line in tail[2:]), (
            path, tail)
    # The table names commands that exist, each once, and nothing else.
    assert sorted(e.path for e in table()) == sorted(" ".join(p) for p in paths)
    daemon = subprocess.run([sys.executable, "-m", "qpu_broker", "daemon", "--help"], capture_output=True, text=True,
                            check=True).stdout  # `daemon` parses its own arguments (cli/entry.py)
    assert daemon.rstrip().endswith(DAEMON.example)


def test_bash_completion_comes_from_the_parser(short_tmp):
    import subprocess
    import sys

    script = subprocess.run([sys.executable, "-m", "qpu_broker", "completion", "bash"], capture_output=True,
                            text=True, check=True).stdout
    (short_tmp / "qb.bash").write_text(script)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f"source {short_tmp / 'qb.bash'}; COMP_WORDS=(qpu-broker {line}); COMP_CWORD={len(words)}; "
                 "_qpu_broker; echo \"${COMPREPLY[@]}\"")
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("to") == ["token"]
    assert complete("token", "r") == ["rename", "rotate", "rm"]
    assert "--provider" in complete("token", "add", "x", "--pr")
    assert complete("org-server", "user", "rot") == ["rotate-key"]


def _script(shell: str, short_tmp) -> str:
    import subprocess
    import sys

    path = short_tmp / f"qb.{shell}"
    path.write_text(subprocess.run([sys.executable, "-m", "qpu_broker", "completion", shell], capture_output=True,
                                   text=True, check=True).stdout)
    return str(path)


def _run(argv: list[str]) -> list[str]:
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.split()


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed (.ci/run installs it)")
def test_fish_completion(short_tmp):
    script = _script("fish", short_tmp)
    complete = lambda line: _run(["fish", "-c", f"source {script}; complete -C '{line}'"])
    assert complete("qpu-broker to") == ["token"]
    assert complete("qpu-broker token r") == ["rename", "rm", "rotate"]
    assert "--provider" in complete("qpu-broker token add x --pr")
    assert complete("qpu-broker org-server user rot") == ["rotate-key"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)")
def test_zsh_completion_through_bashcompinit(short_tmp):
    script = _script("zsh", short_tmp)
    # bashcompinit calls the function in sh emulation, then zsh filters by the typed prefix.
    words = _run(["zsh", "-c", (f"source {script}; emulate -L sh; setopt kshglob noshglob braceexpand; "
                  "COMP_WORDS=(qpu-broker token r); COMP_CWORD=2; _qpu_broker; echo \"${COMPREPLY[@]}\"")])
    assert {"rename", "rotate", "rm"} <= set(words) and "daemon" not in words
