"""`qpu-broker doctor`: what is wrong, each with the command that fixes it.

Checks: plaintext credentials in the SDKs' files; SDK settings that beat an exec session (the
precedence read from each SDK's source: sdk_files/locations.py); the daemon's health and lock
state; the org link; the clock against a provider's (SigV4 is refused past AWS_CLOCK_SKEW).
Exit status: 0 nothing to fix, 1 a warning or a problem (each with its fix), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex

from qpu_broker_client import Broker, QpuBrokerError, UnavailableError

from qpu_broker.cli.arguments import readable_file, to_json
from qpu_broker.cli.daemon_calls import on_broker
from qpu_broker.cli.failures import UsageError
from qpu_broker.common.commands import Command

PROBLEM, WARNING, OK, INFO = "problem", "warning", "ok", "info"
CLOCK_WARN = datetime.timedelta(minutes=1)
CLOCK_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str
    check: str  # plaintext | override | daemon | org | clock
    message: str
    fix: str = ""


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="files", action="append", default=[], type=readable_file, metavar="FILE",
                   help="look in this file too, as 'import --from' does (repeatable)")
    p.add_argument("--clock-url", metavar="URL",
                   help="a server whose Date header the clock is compared with (default: AWS Braket, us-east-1)")
    p.add_argument("--no-clock", action="store_true", help="skip the clock check (no network)")
    p.add_argument("--json", action="store_true", help="one JSON object per finding")


def _files(args: argparse.Namespace) -> list[Finding]:
    from qpu_broker.cli.import_command import found_here
    from qpu_broker.sdk_files.locations import DOTENV

    out = []
    from_args = "".join(f" --from {shlex.quote(str(f))}" for f in args.files)
    for n, f in enumerate(found_here(args.files), 1):
        fix = f"qpu-broker import{from_args} --pick {n} --remove"
        if f.foreign:  # never import it: the key may be another user's
            where = shlex.quote(str(f.path.parent))
            out.append(Finding(PROBLEM if f.overrides_exec else WARNING, "foreign",
                               f"{f.provider} key in {f.where()}, which another user could have written "
                               f"({f.foreign}){': ' + f.overrides_exec if f.overrides_exec else ''}",
                               f"work outside {where}, or have its owner remove it; never import it"))
        elif f.overrides_exec:
            # A .env qiskit-ionq reads beats every session; a saved account or profile only code that names it.
            level = PROBLEM if f.format == DOTENV else WARNING
            out.append(Finding(level, "override", f"{f.provider} key in {f.where()}: {f.overrides_exec}", fix))
        else:
            out.append(Finding(WARNING, "plaintext", f"plaintext {f.provider} key in {f.where()}", fix))
    return out


def _daemon(b: Broker) -> list[Finding]:
    try:
        s = b.status()
    except UnavailableError:
        return [Finding(INFO, "daemon", f"no daemon answers on {b.socket}; client commands start one")]
    out = [Finding(OK, "daemon", f"daemon pid {s.pid} answers, {s.personal_tokens} personal token"
                                 f"{'' if s.personal_tokens == 1 else 's'}")]
    if s.locked:
        out.append(Finding(WARNING, "daemon", f"the agent is locked ({s.lock_reason}): no token can be used",
                           "qpu-broker unlock"))
    out += [Finding(WARNING, "daemon", w, "qpu-broker status") for w in s.warnings]
    org = b.org_status()
    if org.state == "not-logged-in":
        out.append(Finding(INFO, "org", "not logged in to an organization server"))
    elif org.state in ("removed", "key-revoked"):
        out.append(Finding(PROBLEM, "org", f"organization {org.org or org.server}: {org.detail}",
                           f"qpu-broker org login --server {org.server}"))
    elif org.state in ("disconnected", "unavailable"):
        out.append(Finding(WARNING, "org", f"organization server {org.server} {org.state}: {org.detail or 'no answer'}",
                           "qpu-broker org status"))
    else:
        out.append(Finding(OK if org.state == "connected" else INFO, "org", f"organization {org.org!r}: {org.state}, "
                                                                           f"{org.tokens} org tokens"))
    return out


def _clock(url: str, now: datetime.datetime) -> Finding:
    import email.utils
    import urllib.error
    import urllib.request

    from qpu_broker.providers.sigv4 import AWS_CLOCK_SKEW

    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=CLOCK_TIMEOUT) as answer:
            date = answer.headers.get("Date")
    except urllib.error.HTTPError as exc:  # any status carries a Date
        date = exc.headers.get("Date")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Finding(INFO, "clock", f"cannot compare the clock with {url}: {getattr(exc, 'reason', exc)}")
    try:
        theirs = email.utils.parsedate_to_datetime(date or "")
    except (TypeError, ValueError):
        return Finding(INFO, "clock", f"{url} answered no usable Date header")
    skew = now - theirs
    said = f"this machine's clock is {abs(skew.total_seconds()):.0f} s {'ahead of' if skew > datetime.timedelta() else 'behind'} {url}'s"
    if abs(skew) >= AWS_CLOCK_SKEW:
        return Finding(PROBLEM, "clock", f"{said}: AWS refuses SigV4 requests past "
                                         f"{AWS_CLOCK_SKEW.total_seconds() / 60:.0f} minutes (RequestTimeTooSkewed)",
                       "sudo timedatectl set-ntp true")
    if abs(skew) >= CLOCK_WARN:
        return Finding(WARNING, "clock", said, "sudo timedatectl set-ntp true")
    return Finding(OK, "clock", said)


def _doctor(b: Broker, args: argparse.Namespace) -> int:
    if args.clock_url is None:
        from qpu_broker.providers.aws import Aws

        args.clock_url = f"https://{Aws.hosts[0]}/"  # any answer carries AWS's Date
    if not args.clock_url.startswith(("https://", "http://")):
        raise UsageError(f"--clock-url is an http(s) URL, not {args.clock_url[:60]!r}")
    findings = _files(args)
    try:
        findings += _daemon(b)
    except QpuBrokerError as exc:
        findings.append(Finding(PROBLEM, "daemon", f"the daemon answered with an error: {exc}", "qpu-broker status"))
    if not args.no_clock:
        findings.append(_clock(args.clock_url, datetime.datetime.now(datetime.UTC)))
    for f in findings:
        if args.json:
            print(to_json(dataclasses.asdict(f)))
        else:
            print(f"{f.level:<8} {f.check:<9} {f.message}" + (f"\n{'':19}fix: {f.fix}" if f.fix else ""))
    bad = [f for f in findings if f.level in (PROBLEM, WARNING)]
    if not args.json:
        print(f"{len(bad)} to fix" if bad else "nothing to fix")
    return 1 if bad else 0


# doctor reports on a daemon: it never starts one.
COMMAND = Command("doctor", "say what is wrong (plaintext keys, settings that beat exec, daemon, org link, clock) and "
                            "what fixes it",
                  "qpu-broker doctor --json      # exit 1 when something needs fixing",
                  on_broker(_doctor, autostart=False), _options)
