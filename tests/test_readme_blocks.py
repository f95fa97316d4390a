"""The README's shell and Python blocks, run as a reader copies them, against the real daemon, the
real org server and loopback fakes: a README edit that breaks a block fails here.

Every ```sh and ```python block is either run (RUN: its fixture, blocks in the order given) or
listed in NOT_RUN with the reason; a block is named by the start of its first line. What a run
may change is listed too: lines of run blocks that are not run (LINES_NOT_RUN with the reason,
and lines in synopsis notation), and per fixture the README's example values that stand for the
reader's own (`substitutions`: /srv/qpu-org is the fixture's data dir) and the Python names a
block leaves to the reader (`reader_names`). An entry that no longer matches the README fails.
The reader's own tools are stand-ins on PATH (`pass`, `jupyter`), their script is solve.py.

Shell blocks run a logical line at a time in bash, with an
empty HOME, stdin holding what the line's prompt asks for; a line fails on a non-zero exit, a
traceback or a secret in its output, and SAYS holds what some lines must print. Python blocks of
a fixture run in one interpreter, one namespace (as a notebook reads them), with no terminal:
getpass reads the fixture's answers from stdin.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import DEADLINE, wait_for

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # where its text starts in README.md
    lang: str
    text: str

    @property
    def name(self) -> str:
        return next(line for line in self.text.splitlines() if line.strip()).strip()


def readme_blocks(text: str | None = None) -> list[Block]:
    """The README's sh and python blocks, in order."""
    lines = (README.read_text() if text is None else text).split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if m.group(1) in ("sh", "python"):
            blocks.append(Block(i + 2, m.group(1), "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


# A block is named by the start of its first line (unique among the blocks).
NOT_RUN = {
    "python3 -m pip install . &&": "installs the package and runs a daemon in the foreground (the fixtures run one)",
    "python3 -m pip install -q -e '.[test]'": "the test suite itself",
    'r = b.forward("GET", "https://quantum.cloud.ibm.com/': "sends to IBM's real host (tests/test_forward.py: fakes)",
    "qpu-broker import      ": "alternatives, not a sequence (--all --remove takes out what --pick picks); "
                               "tests/test_import_doctor.py runs each against files the SDKs' own writers made",
    "qpu-broker request --provider ionq": "sends to the providers' real hosts",
    "# 1. Create the org": "makes and serves an org in the foreground, then copies to another machine: "
                           "testsupport/orgserver.py runs the same init and serve for the org fixture",
    "# serve it beside gRPC, with the same certificate": "serves in the foreground and prints a link for a browser: "
                                                          "tests/test_console.py and test_console_browser.py run both",
    "ls = Broker()": "sends to Luna's real host, with a request body the reader makes",
    "install -Dm644 systemd/qpu-broker.service": "needs a systemd user session",
    "qpu-broker org-server provider define quantinuum": "reads the TOML block above from a file the reader writes, "
                                                         "for a provider the fixtures have no fake of: "
                                                         "tests/test_org_custom_providers.py defines, sets and uses one",
}

# Run order per fixture (state carries from block to block, as for a reader going down the page).
RUN = {
    "personal": [
        "qpu-broker token add 'My Leap token'",
        "import getpass",
        "from qpu_broker_client import Broker, QpuTokenTypeEnum",
        'qpu-broker token add "My Personal IBM Token"',
        "mkdir -p ~/.local/share/bash-completion/completions",
        "from qpu_broker_client import Broker, QpuToken, TokenProvider",
        'headers = b.sign("POST"',
        "qpu-broker exec -- python solve.py",
        "qpu-broker audit --since 2h",
    ],
    "org": [
        "qpu-broker org login --server org.acme.example:7443",
        'qpu-broker token add "Acme IBM" --provider ibm --type organization --expires-in 90d',
        'qpu-broker token add "Acme IBM" --provider ibm --type organization              # an admin: relay',
        "qpu-broker org-server group add physics",
        "# each member may make 1000 requests a day",
        "from qpu_broker_client import Broker\n",
        "qpu-broker org-server usage --data /srv/qpu-org ",
        "qpu-broker org-server audit --data /srv/qpu-org ",
        "qpu-broker org-server user list|add|set-role",
        "qpu-broker org-server tls issue",
    ],
}

ZSHRC = 'eval "$(qpu-broker completion zsh)"'

# Lines of run blocks that are not run. Lines in synopsis notation ([optional], a|b, ..., …) are
# for reading, not copying, and are not run either (see synopsis()).
LINES_NOT_RUN = {
    "qpu-broker org logout": "ends the login the blocks after it use (tests/test_org.py logs out)",
    "qpu-broker org-server provider define quantinuum": "its file is the reader's (see \"Custom providers\"): "
                                                         "tests/test_org_custom_providers.py defines one",
    "qpu-broker org-server usage --data /srv/qpu-org --follow": "follows until interrupted",
    "qpu-broker org-server device rm 3f9a1c0b7d2e4f55": "an example device id (tests/test_org_devices.py)",
    'qpu-broker token add "Acme IBM" --provider ibm --type organization      # admins only':
        "made by the Lifetimes block the org fixture runs first",
    'qpu-broker token add "Acme IBM" --provider ibm --type organization              # an admin':
        "made by the Lifetimes block the org fixture runs first",
    'qpu-broker token add "Acme D-Wave" --provider dwave --type organization --cached   # admins':
        "the Relay block, run after, makes it",
    ZSHRC: "a zsh line: test_the_zshrc_line_runs_in_zsh runs it where zsh is installed",
}


# What a line's output must say, where the README's comment promises it.
SAYS = {
    "qpu-broker org status        # which tokens this daemon relays and which it holds": [
        r"relay \(.*\): Acme IBM\n", r"cached \(.*\): Acme D-Wave\n"],
    "qpu-broker token list        # MODE column": [r"MODE", r"relay +Acme IBM", r"cached +Acme D-Wave"],
    "qpu-broker token list                     # KIND": [r"KIND +MODE +NAME +PROVIDER +ID +UPDATED +EXPIRES\n"],
    "qpu-broker audit --verify": [r"intact, \d+ entries"],
}


def synopsis(line: str) -> bool:
    """A line in the README's synopsis notation: `[--json]`, `list|add`, `...` or `…` outside quotes."""
    bare = re.sub(r"'[^']*'|\"[^\"]*\"|#.*$", "", line)
    return bool(re.search(r"\s\[-|\.\.\.|…|\w\|\w", bare))


def shell_lines(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            out.append(pending.strip())
        pending = ""
    return out


@dataclasses.dataclass
class Fixture:
    env: dict[str, str]
    cwd: pathlib.Path
    substitutions: dict[str, str]  # README example value -> the fixture's
    answer: Callable[[str], str]  # what a line's (or a Python block's) prompts are answered with
    secrets: list[str]  # never in any output
    reader_names: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> Python expression
    substituted: set[str] = dataclasses.field(default_factory=set)


def _bin(directory: pathlib.Path, secret: str) -> pathlib.Path:
    """The commands the README's lines call: ours, and stand-ins for the reader's own tools."""
    directory.mkdir(parents=True)
    scripts = {
        "qpu-broker": f'exec {shlex.quote(sys.executable)} -m qpu_broker "$@"',
        "python": f'exec {shlex.quote(sys.executable)} "$@"',
        "python3": f'exec {shlex.quote(sys.executable)} "$@"',
        "pass": f"echo {shlex.quote(secret)}",  # the reader's password manager
        "jupyter": 'test "${DWAVE_API_TOKEN#qbs_}" != "$DWAVE_API_TOKEN"',  # a program run in an env session
    }
    for name, body in scripts.items():
        (directory / name).write_text(f"#!/bin/sh\n{body}\n")
        (directory / name).chmod(0o755)
    return directory


def _reader_home(root: pathlib.Path, secret: str, base_env: dict[str, str]) -> tuple[dict[str, str], pathlib.Path]:
    home = root / "reader"
    home.mkdir(mode=0o700)
    bin_dir = _bin(root / "bin", secret)
    env = {**base_env, "HOME": str(home), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share")}
    # The reader's script: an SDK under exec sees a session placeholder, never the key.
    (home / "solve.py").write_text('import os\nassert os.environ["DWAVE_API_TOKEN"].startswith("qbs_")\n')
    return env, home


def run_shell(block: Block, fx: Fixture) -> list[str]:
    ran = []
    for line in shell_lines(block.text):
        if synopsis(line) or any(line.startswith(prefix) for prefix in LINES_NOT_RUN):
            continue
        command = line
        for example, ours in fx.substitutions.items():
            if example in command:
                command = command.replace(example, ours)
                fx.substituted.add(example)
        says = next((v for k, v in SAYS.items() if line.startswith(k)), [])
        # A read the README says something of may need a moment: changes reach daemons by a push.
        wait_for(lambda line=line, command=command, says=says: _says(block, line, command, says, fx),
                 f"README.md:{block.line}: {line} to say {says}")
        ran.append(line)
    return ran


def _says(block: Block, line: str, command: str, says: list[str], fx: Fixture) -> bool:
    """Run one line: it must succeed without a traceback or a secret; whether it says `says`."""
    r = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=fx.env, cwd=fx.cwd, input=fx.answer(line) + "\n", capture_output=True, text=True,
                       timeout=DEADLINE * 2, check=False)
    where = f"README.md:{block.line}: {line}"
    assert r.returncode == 0 and "Traceback" not in r.stderr, (
        f"{where}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    assert not [x for x in fx.secrets if x in r.stdout + r.stderr], f"{where} shows a secret"
    return all(re.search(said, r.stdout) for said in says)


DRIVER = r"""
import contextlib, io, json, sys, traceback
channel = sys.stdout
ns = {"__name__": "__main__"}
for message in sys.stdin:
    block = json.loads(message)
    sys.stdin, out = io.StringIO(block["stdin"]), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block["code"], block["where"], "exec"), ns)
        answer = {"ok": True, "out": out.getvalue()}
    except BaseException:
        answer = {"ok": False, "out": out.getvalue() + traceback.format_exc()}
    channel.write(json.dumps(answer) + "\n")
    channel.flush()
"""


class PythonSession:
    """One interpreter for a fixture's Python blocks, without a terminal (getpass reads stdin)."""

    def __init__(self, fx: Fixture) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=fx.env, cwd=fx.cwd, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # no controlling terminal: no /dev/tty to prompt on

    def run(self, block: Block, fx: Fixture) -> None:
        given = "".join(f"{name} = {value}\n" for name, value in fx.reader_names.items()
                        if re.search(rf"\b{name}\b", block.text))
        prompts = block.text.count("getpass(")
        self.proc.stdin.write(json.dumps({"code": given + block.text, "stdin": (fx.answer(block.text) + "\n") * prompts,
                                          "where": f"README.md:{block.line}"}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer["ok"], f"README.md:{block.line}:\n{answer['out'][-3000:]}"
        assert not [x for x in fx.secrets if x in answer["out"]], f"README.md:{block.line} shows a secret"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=DEADLINE)


def named(name: str, blocks: list[Block]) -> list[Block]:
    """The blocks `name` names: those whose text starts with it, past leading blank lines."""
    return [b for b in blocks if b.text.lstrip("\n").startswith(name)]


def run_blocks(fixture: str, fx: Fixture) -> None:
    blocks = readme_blocks()
    session = PythonSession(fx)
    try:
        for name in RUN[fixture]:
            [block] = named(name, blocks)
            if block.lang == "python":
                session.run(block, fx)
            else:
                assert run_shell(block, fx), f"README.md:{block.line}: no line of this block ran"
    finally:
        session.close()
    assert fx.substituted == set(fx.substitutions), f"example values no line has: {set(fx.substitutions) - fx.substituted}"


# -- the table matches the README --------------------------------------------------------------
def test_every_readme_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    run = [name for names in RUN.values() for name in names]
    assert len(set(run) | set(NOT_RUN)) == len(run) + len(NOT_RUN), "a block both run and not, or run twice"
    ambiguous = {n: [b.line for b in named(n, blocks)] for n in [*run, *NOT_RUN] if len(named(n, blocks)) != 1}
    assert not ambiguous, f"names matching no README block, or several (README.md lines): {ambiguous}"
    unlisted = [f"README.md:{b.line}: {b.name}" for b in blocks if not any(named(n, [b]) for n in [*run, *NOT_RUN])]
    assert not unlisted, f"README blocks neither run nor in NOT_RUN (with the reason): {unlisted}"
    lines = [line for name in run for b in named(name, blocks) for line in shell_lines(b.text)]
    unused = [p for p in LINES_NOT_RUN if not any(line.startswith(p) for line in lines)]
    assert not unused, f"LINES_NOT_RUN entries matching no line of a run block: {unused}"
    unsaid = [p for p in SAYS if not any(line.startswith(p) for line in lines)]
    assert not unsaid, f"SAYS entries matching no line of a run block: {unsaid}"


def test_synopsis_lines_are_told_from_commands():
    assert synopsis("qpu-broker org-server quota list --data /srv/qpu-org [--member bob] [--json]")
    assert synopsis("qpu-broker org-server provider show|clear ... --data /srv/qpu-org")
    assert not synopsis("qpu-broker token add 'a|b ...' --provider ibm   # and [--json] in a comment")
    assert not synopsis("qpu-broker token add \"Short-lived\" --provider ionq --expires-in 90d")


# -- the blocks, run -------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it): "
                                                        "the README's ~/.zshrc line is not run")
def test_the_zshrc_line_runs_in_zsh(short_tmp):
    line = next((line for b in readme_blocks() if b.lang == "sh" for line in shell_lines(b.text)
                if line.startswith(ZSHRC)), None)
    assert line, f"no README line starts with {ZSHRC}"
    env, _ = _reader_home(short_tmp, "", dict(os.environ))
    # The line on a line of its own (its comment ends it), its status kept (zsh's set -e misses it).
    script = f"autoload -U compinit && compinit -u || exit 99\n{line}\nrc=$?\nwhence -w _qpu_broker\nexit $rc"
    r = subprocess.run(["zsh", "-c", script],
                       env=env, capture_output=True, text=True, timeout=DEADLINE * 2, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"README: {line}\n{r.stdout}\n{r.stderr}"
    assert "_qpu_broker: function" in r.stdout, f"README: {line} made no completion function\n{r.stdout}"


@pytest.fixture
def personal(make_daemon, short_tmp):
    """A daemon for loopback fakes of every provider, the tokens the README's readers have, an empty HOME."""
    from testsupport.hardware import start_hardware, write_config

    hw = start_hardware(short_tmp / "hw", f"canary{secrets.token_hex(8)}")
    d = make_daemon()
    write_config(d.home, hw)
    d.start()
    api = d.broker().qpu_token
    # Tokens the README's blocks use without making them: the reader's own.
    api.create(name="My IBM Token", provider="ibm", token=hw.secrets["ibm"])
    api.create(name="my-aws", provider="aws", token=hw.secrets["aws"])
    env, home = _reader_home(short_tmp, hw.secrets["ibm"], d.env)

    def answer(text: str) -> str:
        provider = re.search(r"--provider (\w+)", text)
        return hw.secrets[provider.group(1) if provider else "ibm"]

    token_id = "$(qpu-broker token show 'My Personal IBM Token' --json | python3 -c 'import json,sys;" \
               "print(json.load(sys.stdin)[\"id\"])')"
    yield Fixture(env, home, {"7b02435025f8766562090c70": token_id}, answer,
                  [v.split(":")[-1] for v in hw.secrets.values()],
                  {"key_id": repr(hw.secrets["aws"].split(":")[0]), "secret": repr(hw.secrets["aws"].split(":")[1]),
                   "payload": 'b"{}"'})
    hw.close()


def test_personal_token_blocks_run_as_written(personal):
    run_blocks("personal", personal)


@pytest.fixture
def org(make_daemon, short_tmp):
    """The real org server (alice its admin; bob, carol and dan members) and a daemon not yet logged in."""
    from testsupport.fakes import make_ca
    from testsupport.orgserver import OrgServer

    ca = make_ca(short_tmp / "ca")
    server = OrgServer(short_tmp / "org", ca, "Acme Quantum", "--tls-host", "localhost").start()  # a CA of its own too
    for name in ("bob", "carol", "dan"):
        server.add_user(name)
    d = make_daemon().start()
    env, home = _reader_home(short_tmp, "", d.env)
    (home / "acme-org-ca.pem").write_bytes(ca.ca_file.read_bytes())
    (home / "staff.txt").write_text("erin\nfrank admin\n")
    secret = f"canary-org-{secrets.token_hex(8)}"
    never_shown = [secret]  # and every enrollment code a prompt is answered with

    def answer(text: str) -> str:
        if "org_login" in text or "org login" in text:
            never_shown.append(server.code_for("alice"))
            return never_shown[-1]
        return secret

    port = server.port
    yield Fixture(env, home, {"/srv/qpu-org": str(server.data), "org.acme.example:7443": f"localhost:{port}",
                              "org1.acme.example:7443": f"localhost:{port}", "org2.acme.example:7443": f"127.0.0.1:{port}"},
                  answer, never_shown, {"start": "None", "end": "None"})
    server.stop()


def test_org_blocks_run_as_written(org):
    run_blocks("org", org)
