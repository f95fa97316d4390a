"""The package as users get it: public API, committed bindings, the systemd unit."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import qpu_broker_client

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_public_api_is_deliberate():
    assert sorted(qpu_broker_client.__all__) == sorted([
        "PROVIDERS", "AgentStatus", "AlreadyExistsError", "Broker", "CheckResult", "DamagedToken",
        "DeadlineExceededError", "FailedPreconditionError", "ForwardResponse", "InvalidArgumentError", "LockedError",
        "NotFoundError", "OrgStatus", "PermissionDeniedError", "QpuBrokerError", "QpuToken", "QpuTokenSource",
        "QpuTokenTypeEnum", "QpuTokenType",
        "ResolvedToken", "ResourceExhaustedError", "Secret", "TokenProvider", "UnauthenticatedError", "UnavailableError",
        "__version__",
    ])
    for name in qpu_broker_client.__all__:
        assert hasattr(qpu_broker_client, name)


def test_the_package_loads_its_names_on_use_and_type_checkers_see_the_same_names():
    # The daemon imports the client's leaves (errors, providers, paths): not its channel or messages.
    code = "import sys, qpu_broker_client.errors, qpu_broker_client.providers, qpu_broker_client.paths; print(sorted(m for m in sys.modules if m.startswith(('grpc', 'qpu_broker_client.broker'))))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    tree = ast.parse((ROOT / "client" / "qpu_broker_client" / "__init__.py").read_text())
    typed = {alias.name: node.module for block in tree.body if isinstance(block, ast.If)
             for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert typed == qpu_broker_client._HOMES
    assert sorted(typed) == sorted(n for n in qpu_broker_client.__all__ if n != "__version__")


# What `qpu-broker token list` never uses and once loaded at every start (issue 26: the CLI within
# 1.3x of `import grpc`): uuid (it loads platform), hashlib and hmac (OpenSSL's), json, getpass and
# the client's CA bundles; and the client's other answers, six dataclasses compiled when made.
NOT_FOR_A_LIST = ("uuid", "hashlib", "hmac", "json", "getpass", "qpu_broker_client.ca_bundles")
ANSWERS = ("AgentStatus", "OrgStatus", "CheckResult", "DamagedToken", "ResolvedToken", "AuditCheck")
# The command's own main against the real daemon, then what the process holds (the console script
# ends with os._exit, and -X importtime misses what importlib.import_module loads).
LIST_THEN_LOOK = """
import sys
from qpu_broker.cli.main import main
assert main(["token", "list"]) == 0
print(sorted(set(sys.modules) & set(sys.argv[1].split())))
ours = [m for m in list(sys.modules.values()) if m.__name__.startswith("qpu_broker_client.") and ".proto" not in m.__name__]
print(sorted(name for module in ours for name in sys.argv[2].split() if name in vars(module)))
"""


def test_token_list_loads_only_what_it_uses(daemon):
    daemon.broker().qpu_token.create(name="listed", provider="ibm", token="s")
    r = subprocess.run([sys.executable, "-c", LIST_THEN_LOOK, " ".join(NOT_FOR_A_LIST), " ".join(ANSWERS)],
                       env=daemon.env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "listed" in r.stdout, r.stderr
    assert r.stdout.splitlines()[-2:] == ["[]", "[]"]


def test_client_never_imports_the_daemon():
    code = "import sys, qpu_broker_client, qpu_broker_client.broker; print(any(m.startswith('qpu_broker.') or m == 'qpu_broker' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


PACKAGE = ROOT / "broker" / "qpu_broker"
# The daemon's layers, lowest first: a module imports its own folder and folders ranked below it.
RANK = {"common": 0, "store": 1, "keys": 2, "providers": 2, "tokens": 3, "sdk_files": 3, "forward": 4, "org": 5, "wire": 6,
        "daemon": 7, "cli": 8}
# The org server is its own program: it shares the leaves, the wire's policy, registration and values,
# and (to forward and sign with relay tokens) the daemon's forwarder, providers and token types.
ORGSERVER_MAY_IMPORT = {"common", "store", "keys", "orgserver", "wire.interceptors", "wire.registration",
                        "wire.proto_values", "forward",
                        "providers", "tokens"}
# Its backends sit under its store: they import the leaves and each other, nothing else of the server.
ORGSERVER_DB_MAY_IMPORT = {"common", "store", "orgserver.db"}
# Only the wire layers speak gRPC or touch the bindings: the daemon's wire/ and the org server's
# orgserver/wire/ here; in the client, the modules that make calls or convert messages.
GRPC_ALLOWED = ("wire/", "orgserver/wire/")
CLIENT = ROOT / "client" / "qpu_broker_client"
CLIENT_WIRE = ("connection.py", "broker.py", "wire_messages.py", "org_messages.py")
_GRPC = re.compile(r"^\s*(import grpc|from grpc|from qpu_broker_client\.proto|from qpu_broker_client import proto)",
                   re.MULTILINE)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_every_module_lives_in_a_layer_folder():
    loose = [name for name, _ in _modules() if "/" not in name and name not in ("__init__.py", "__main__.py")]
    assert loose == [], loose
    folders = {name.split("/")[0] for name, _ in _modules() if "/" in name}
    assert folders == set(RANK) | {"orgserver"}, folders


def test_imports_point_down_the_layers():
    wrong = []
    for name, text in _modules():
        folder = name.split("/")[0]
        for target in re.findall(r"^\s*from qpu_broker\.([\w.]+) import", text, re.MULTILINE):
            top = target.split(".")[0]
            if name.startswith("orgserver/db/"):
                ok = top in ORGSERVER_DB_MAY_IMPORT or target.startswith("orgserver.db")
            elif folder == "orgserver":
                ok = top in ORGSERVER_MAY_IMPORT or target in ORGSERVER_MAY_IMPORT
            elif folder == "cli" and target == "orgserver.cli":
                ok = True  # `qpu-broker org-server ...`: one command line for both programs
            elif folder in RANK:
                ok = top == folder or (top in RANK and RANK[top] < RANK[folder])
            else:  # __main__: the entry point
                ok = True
            if not ok:
                wrong.append(f"{name} imports qpu_broker.{target}")
    assert wrong == []


def test_only_orgserver_db_knows_which_backend_it_is():
    """A new backend touches orgserver/db/ only: the rest of the server asks the backend's class
    (poll interval, one server per store, where a store is made), never which kind it has."""
    knowing = []
    for name, text in _modules():
        if not name.startswith("orgserver/") or name.startswith("orgserver/db/"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module == "qpu_broker.orgserver.db":
                knowing += [f"{name} imports {a.name}" for a in node.names if a.name in ("SQLITE", "POSTGRESQL")]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                knowing += [f"{name} imports {m}" for m in modules if m.split(".")[0] in ("sqlite3", "psycopg")]
    assert knowing == []


def _names_of_providers(node: ast.AST, names: frozenset[str]) -> list[str]:
    """The provider names `node` holds as literals: a string, or the strings of a tuple, list or set."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in names]


def test_only_providers_know_which_provider_it_is():
    """A new provider touches providers/ and the provider list (qpu_broker_client/providers.py) only:
    the rest of the daemon and the org server ask a provider's scheme what it needs (split fields,
    Luna's body tokens, QPU time, secret shapes: providers.traits), never compare its name to one."""
    from qpu_broker_client.providers import PROVIDERS, SPLIT_FIELDS

    names = frozenset(PROVIDERS) | {f for fields in SPLIT_FIELDS.values() for f in fields}
    knowing = []
    for name, text in _modules():
        if name.startswith("providers/"):
            continue
        tree = ast.parse(text)
        # A module's own constant holding a provider's name is that name.
        constants = {t.id for node in tree.body if isinstance(node, ast.Assign) and _names_of_providers(node.value, names)
                     for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            held: list[str] = []
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    held += _names_of_providers(side, names)
                    held += [side.id] if isinstance(side, ast.Name) and side.id in constants else []
            elif isinstance(node, ast.Subscript):  # schemes["aws"], out["aws"]
                held = _names_of_providers(node.slice, names)
            elif isinstance(node, ast.Dict):  # a table keyed by provider
                held = [n for key in node.keys if key is not None for n in _names_of_providers(key, names)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                held = [n for arg in node.args[:1] for n in _names_of_providers(arg, names)]
            knowing += [f"{name}:{node.lineno} {n}" for n in held]
    assert knowing == [], knowing


def test_only_the_wire_layers_import_grpc_or_proto():
    speakers = [name for name, text in _modules() if _GRPC.search(text)]
    assert speakers and all(name.startswith(GRPC_ALLOWED) for name in speakers), speakers


def _imports_bindings(text: str) -> list[str]:
    """The generated modules (`*_pb2`, `*_pb2_grpc`: ours, grpc's, protobuf's) a module imports."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if "_pb2" in a.name]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found += [f"{module}.{a.name}" for a in node.names if "_pb2" in module or "_pb2" in a.name]
    return found


def test_only_the_wire_layers_import_generated_messages():
    """Domain records are plain types (client/usage.py's, the stores', the queue's): a message is made
    or read only in a wire layer, which converts at the edge (org_messages.py, proto_values.py)."""
    outside = [f"qpu_broker/{name} imports {m}" for name, text in _modules() if not name.startswith(GRPC_ALLOWED)
               for m in _imports_bindings(text)]
    for path in sorted(CLIENT.rglob("*.py")):
        name = path.relative_to(CLIENT).as_posix()
        if name.startswith("proto/") or name in CLIENT_WIRE:
            continue
        outside += [f"qpu_broker_client/{name} imports {m}" for m in _imports_bindings(path.read_text())]
    assert outside == []
    assert all(_imports_bindings((CLIENT / name).read_text()) for name in CLIENT_WIRE)  # the list is not stale


def test_domain_modules_load_no_generated_messages():
    """Not through another module either (as the client's usage.py once brought org_pb2 to the
    usage queue, the use records and the org store): the daemon's layers below wire/, the org
    server's domain, and the client's values load no `_pb2` module."""
    below = [name for name, _ in _modules() if name.split("/")[0] in RANK and RANK[name.split("/")[0]] < RANK["wire"]]
    org = [name for name, _ in _modules() if name.startswith("orgserver/") and not name.startswith("orgserver/wire/")
           and name != "orgserver/serve.py"]  # the entry point assembles the wire
    client = [p.relative_to(CLIENT).as_posix() for p in sorted(CLIENT.rglob("*.py"))]
    client = [n for n in client if n not in CLIENT_WIRE and not n.startswith(("proto/", "transports/"))]  # transports call Broker
    modules = ["qpu_broker." + n.removesuffix(".py").replace("/", ".") for n in below + org]
    modules += ["qpu_broker_client." + n.removesuffix(".py").replace("/", ".") for n in client]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = """if True:
        import importlib, sys
        for m in sys.argv[1:]:
            importlib.import_module(m)
            loaded = sorted(k for k in sys.modules if "_pb2" in k)
            if loaded:
                sys.exit(f"{m} loads {loaded}")
    """
    assert len(modules) > 80  # the walk sees the tree
    r = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_committed_bindings_match_proto():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-proto"), "--check"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "qpu-broker").symlink_to("/bin/true")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "qpu-broker.service"
    shutil.copy(ROOT / "systemd" / "qpu-broker.service", unit)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    verify = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], check=False, env=env, capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--user", str(unit)], check=False, env=env,
                         capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout).group(1))
    assert exposure <= 2.0, sec.stdout
    text = unit.read_text()
    assert "Type=notify" in text and re.search(r"^ExecStart=\S+ daemon$", text, re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_org_server_unit_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "qpu-org-server.service"
    text = (ROOT / "systemd" / "qpu-org-server.service").read_text()
    assert "Type=notify" in text and re.search(r"^ExecStart=\S+ org-server serve --data \S+ --listen \S+$", text, re.MULTILINE)
    unit.write_text(text.replace("/usr/local/bin/qpu-broker", "/bin/true"))  # verify wants the program to exist
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], check=False, capture_output=True,
                         text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout).group(1))
    assert exposure <= 2.0, sec.stdout


_NOQA = re.compile(r"#\s*noqa\b(?::[\s,]*([A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.IGNORECASE)


def test_every_noqa_names_a_rule_ruff_is_told_to_run():
    """A `# noqa: CODE` whose rule is not selected hides nothing and claims a check that never runs;
    RUF100 (selected too) then reports any that stops being needed."""
    import tokenize
    import tomllib

    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    selected = set(ruff.get("lint", {}).get("extend-select", []))
    excluded = [ROOT / p for p in ruff.get("extend-exclude", [])]
    claims: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if any(part.startswith(".") for part in rel.parts) or any(path.is_relative_to(e) for e in excluded):
            continue
        with path.open("rb") as f:
            comments = [t for t in tokenize.tokenize(f.readline) if t.type == tokenize.COMMENT]
        for t in comments:
            for m in _NOQA.finditer(t.string):
                for code in re.split(r"[\s,]+", m[1]) if m[1] else ["(a bare noqa)"]:
                    claims.setdefault(code, []).append(f"{rel}:{t.start[0]}")
    assert claims, "no noqa comment found: is the walk looking at the tree?"
    assert "RUF100" in selected
    unselected = {code: where for code, where in claims.items() if code not in selected}
    assert not unselected, f"noqa naming rules that pyproject.toml's [tool.ruff.lint] does not select: {unselected}"
