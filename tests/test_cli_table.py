"""The command table (common/commands.py; issue 24): every command of both programs is one entry
with its help, example, arguments and handler, and each example is a command line its own parser
takes. In process: parsing reaches no daemon and no org server."""

from __future__ import annotations

import io
import shlex

import pytest
from qpu_broker.cli.main import build_parser, table
from qpu_broker.common.commands import Command, Group, examples


def test_a_command_cannot_be_made_without_its_example_or_its_handler():
    with pytest.raises(TypeError):
        Command("x", "does x", run=lambda args: 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Command("x", "does x", "qpu-broker x")  # type: ignore[call-arg]


def test_every_entry_has_examples_and_every_command_a_handler():
    entries = table()
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths)), "a command is in the table twice"
    for entry in entries:
        assert entry.help and examples(entry) and all(examples(entry)), entry.path
        parent = entry.path.rpartition(" ")[0]
        assert not entry.path or isinstance(next(e for e in entries if e.path == parent), Group), entry.path
        if isinstance(entry, Command):
            assert callable(entry.run) and callable(entry.arguments), entry.path
        else:  # a group leads to commands
            assert any(e.path.rpartition(" ")[0] == entry.path for e in entries if e.path), entry.path


def invocations(line: str) -> list[list[str]]:
    """The `qpu-broker ...` command lines in a shell line: after pipes, `;`, `&&`, inside `$(...)`;
    never in a comment."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, command = [], []
    for word in [*lexer, ";"]:
        if word.startswith("$(") and word.endswith(")"):
            found += invocations(word[2:-1])
        elif set(word) <= set("|&;<>()"):
            if command[:1] == ["qpu-broker"]:
                found.append(command[1:])
            command = []
        else:
            command.append(word)
    return found


def test_invocations_are_found_where_a_shell_runs_them():
    assert invocations("pass show x | qpu-broker token add 'My token' --provider ibm  # qpu-broker lock") == [
        ["token", "add", "My token", "--provider", "ibm"]]
    assert invocations('eval "$(qpu-broker env)"; qpu-broker env --end') == [["env"], ["env", "--end"]]
    assert invocations("mkdir -p d && qpu-broker completion bash > d/qpu-broker") == [["completion", "bash"]]


def test_every_example_is_parsed_by_its_own_command(monkeypatch, tmp_path):
    monkeypatch.delenv("QPU_ORG_DATA", raising=False)  # examples give --data themselves
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org-ca.pem").write_bytes(b"")  # org login's --ca opens its file when parsed
    for entry in table():
        own = entry.path.split()
        ran = []
        for line in examples(entry):
            found = invocations(line)
            assert found, f"{entry.path!r}: no qpu-broker command in {line!r}"
            for argv in found:
                assert argv[:len(own)] == own, f"{entry.path!r}'s example runs another command: {line!r}"
                try:
                    args = build_parser(argv).parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{entry.path!r}: its parser refuses its example {line!r}")
                ran.append(args._run)
                for value in vars(args).values():
                    if isinstance(value, io.IOBase):
                        value.close()
        if isinstance(entry, Command):
            assert entry.run in ran, f"{entry.path!r}: no example runs it"
