"""The local audit log: every use and change of a personal token, never a secret; an entry
edited, removed, moved or cut off the end is found by `qpu-broker audit --verify`."""

from __future__ import annotations

import json

import pytest
from conftest import wait_for
from qpu_broker_client import (
    LockedError,
    PermissionDeniedError,
    QpuToken,
    TokenProvider,
)
from qpu_broker_client.providers import PROVIDERS

MINE = TokenProvider(ionq=QpuToken("personal", name="my-ionq"))


def _entries(d) -> list[dict]:
    r = d.cli("audit", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _verify(d) -> tuple[int, str]:
    r = d.cli("audit", "--verify")
    return r.returncode, r.stdout + r.stderr


@pytest.fixture
def used(rig):
    """The rig's daemon after a create, a rename, a rotation, uses and a refusal of personal tokens."""
    d, hw, canary = rig
    b = d.broker()
    b.qpu_token.rename("my-ionq", "my-ionq-2")
    b.qpu_token.rename("my-ionq-2", "my-ionq")
    b.qpu_token.update(qpu_token_name="my-ionq", token=hw.secrets["ionq"])  # rotated (to the value the fake expects)
    for _ in range(3):
        b.forward("GET", hw.servers["ionq"].url("/v0.3/jobs?secret-query=1"), provider="ionq", qpu_tokens=MINE)
    with pytest.raises(PermissionDeniedError):
        b.forward("GET", "https://catcher.example.com/x", provider="ionq", qpu_tokens=MINE)
    return d, hw, canary


def test_uses_and_changes_are_logged_without_secrets(used):
    d, hw, canary = used
    entries = _entries(d)
    events = [e["event"] for e in entries]
    assert events[0] == "daemon-started"
    assert events.count("token-created") == len(PROVIDERS)  # the rig's, one per provider
    assert events.count("token-renamed") == 2 and events.count("token-rotated") == 1
    uses = [e for e in entries if e["event"] == "token-used" and e["token_name"] == "my-ionq"]
    assert [(u["outcome"], u["status"]) for u in uses] == [("answered", 200)] * 3 + [("refused-destination", 0)]
    assert uses[0]["host"] == hw.servers["ionq"].netloc and uses[0]["path"] == "/v0.3/jobs"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    raw = d.paths.audit_log.read_text()
    assert hw.secrets["ionq"] not in raw and canary not in raw and "secret-query" not in raw
    text = d.cli("audit").stdout
    assert "token-used  my-ionq (ionq)  forward GET" in text and "token-renamed  my-ionq-2 (ionq)  (was 'my-ionq')" in text
    assert _verify(d) == (0, f"audit log {d.paths.audit_log}: intact, {len(entries)} entries\n")
    assert d.cli("audit", "--since", "1h").stdout == text
    assert d.cli("audit", "--since", "2099-01-01").stdout == ""


TAMPERS = ("edit", "remove-middle", "swap", "cut-tail", "empty", "garbage", "forge")


def _tampered(lines: list[str], tamper: str) -> list[str]:
    lines = list(lines)
    if tamper == "edit":
        entry = json.loads(lines[5])
        entry["token_name"] = "someone-else"
        lines[5] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    elif tamper == "remove-middle":
        del lines[4]
    elif tamper == "swap":
        lines[3], lines[4] = lines[4], lines[3]
    elif tamper == "cut-tail":
        lines = lines[:-3]
    elif tamper == "empty":
        lines = []
    elif tamper == "garbage":
        lines.insert(2, "not json\n")
    else:  # a whole new chain, as someone without the data key would make it
        import hashlib

        prev, forged = "0" * 64, []
        for n, line in enumerate(lines, 1):
            entry = json.loads(line)
            entry.update(seq=n, prev=prev)
            entry.pop("mac")
            entry["mac"] = prev = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
            forged.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
        lines = forged
    return lines


def test_tampering_is_found(used):
    d, _, _ = used
    log = d.paths.audit_log
    pristine = log.read_text()
    lines = pristine.splitlines(keepends=True)
    wait_for(lambda: d.paths.audit_anchor.exists() and d.paths.audit_anchor.read_text().split()[0] == str(len(lines)),
             "the anchor to catch up")
    for tamper in TAMPERS:  # one daemon, each tamper on the pristine log in turn (verifying writes no entry)
        log.write_text("".join(_tampered(lines, tamper)))
        code, out = _verify(d)
        assert code == 1 and "NOT intact" in out, (tamper, out)
        assert "Traceback" not in out and out.count("\n") == 1, (tamper, out)
        log.write_text(pristine)
    assert _verify(d)[0] == 0


def test_the_chain_continues_across_restarts_and_locks(used):
    d, _, _ = used
    d.stop()
    d.start()
    b = d.broker()
    b.qpu_token.get("my-ionq")  # a read is no change: no entry
    b.lock()
    with pytest.raises(LockedError):
        b.verify_audit()
    locked = d.cli("audit", "--verify")
    assert locked.returncode != 0 and "run 'qpu-broker unlock' first" in locked.stderr
    events = [e["event"] for e in _entries(d)]
    assert events[-2:] == ["daemon-started", "locked"]
    assert d.cli("audit").returncode == 0  # reading needs no key


@pytest.mark.parametrize("cut", ["tail", "all", "anchor"])
def test_a_log_cut_while_the_daemon_was_stopped_is_found_after_it_starts_again(used, cut):
    d, _, _ = used
    lines = d.paths.audit_log.read_text().splitlines(keepends=True)
    wait_for(lambda: d.paths.audit_anchor.read_text().split()[0] == str(len(lines)), "the anchor to catch up")
    d.stop()
    lines = d.paths.audit_log.read_text().splitlines(keepends=True)  # with the stop's own entries, if any
    if cut == "tail":
        d.paths.audit_log.write_text("".join(lines[:-4]))
    elif cut == "all":
        d.paths.audit_log.write_text("")
    else:  # the anchor removed (the log itself intact): its newest entries can no longer be vouched for
        d.paths.audit_anchor.unlink()
    d.start()
    d.broker().qpu_token.rename("my-ionq", "my-ionq-3")  # more entries after the cut
    code, out = _verify(d)
    assert code == 1 and "NOT intact" in out, out
    events = [e["event"] for e in _entries(d)]
    assert "chain-broken" in events
