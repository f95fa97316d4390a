"""`qpu-broker org-server ...`: set up, administer and run the org server.

User, group and provider commands work on the data dir directly (the server need not
run, and no network credential is needed: whoever can read the data dir owns the org
anyway); a running server notices their changes within a fraction of a second.
Enrollment codes are printed once, to stdout, and never stored in clear.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import sys
import time

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import PROVIDERS, check_provider
from qpu_broker_client.usage import (
    EVERY_MEMBER,
    QPU_US,
    REQUESTS,
    Quota,
    iso,
    quota_line,
    usage_dict,
    usage_line,
)

from qpu_broker.common.lifetimes import expiry_text, expiry_us, is_expired
from qpu_broker.common.names import canonical_name
from qpu_broker.common.reach import Owner, Reach, bounded_org_reach, make_reach
from qpu_broker.common.since import parse_since, parse_span, parse_until
from qpu_broker.orgserver import quota_admin
from qpu_broker.orgserver.admin_record import (
    ACTOR,
    AdminQuery,
    AdminRecord,
    code_terms,
    entry_dict,
    entry_line,
    local_operator,
    reach_change,
    reach_text,
    token_change,
)
from qpu_broker.orgserver.custom_definitions import (
    define,
    definition_file,
    describe,
    read_definitions,
    undefine,
)
from qpu_broker.orgserver.devices import Devices
from qpu_broker.orgserver.groups import Groups, describe_access
from qpu_broker.orgserver.layout import OrgLayout
from qpu_broker.orgserver.quotas import Quotas
from qpu_broker.orgserver.store import (
    OrgStore,
    OrgTokenRecord,
    UsageQuery,
)
from qpu_broker.orgserver.tls_files import (
    check_tls_hosts,
    issue_server_certificate,
    make_tls_files,
)
from qpu_broker.orgserver.users import (
    CodeTerms,
    add_users,
    new_users,
    read_user_lines,
    remove_users,
)

FOLLOW_POLL_SECONDS = 0.5


def _reach_from_args(args: argparse.Namespace, where: str) -> Reach:
    try:
        ca_pem = args.ca_file.read_bytes() if args.ca_file else b""
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read --ca-file: {exc.strerror}: {exc.filename}") from None
    return bounded_org_reach(make_reach(hosts=args.host, plain_http_hosts=args.plain_http_host, ca_pem=ca_pem,
                                        token_url=args.token_url, owner=Owner.ORG, where=where), where)


def _describe(reach: Reach) -> dict:
    return {"hosts": list(reach.hosts), "plain_http_hosts": list(reach.plain_http_hosts),
            "ca": "set" if reach.ca_pem else "", "token_url": reach.token_url}


def _line(d: dict) -> str:
    return (f"hosts={','.join(d['hosts']) or '-'} plain_http_hosts={','.join(d['plain_http_hosts']) or '-'} "
            f"ca={d['ca'] or '-'} token_url={d['token_url'] or '-'}")


def _expiry(expires_us: int) -> str:
    """A token's end as a listing shows it: never, the time, or expired at the time."""
    if not expires_us:
        return "never"
    return f"{'expired ' if is_expired(expires_us, _now_us()) else ''}{expiry_text(expires_us)}"


def _token(store: OrgStore, args: argparse.Namespace) -> None:
    if args.token_verb == "list":
        tokens = store.tokens()
        rows = [{"name": t.name, "provider": t.provider, "version": t.version, "mode": mode_name(t.relay),
                 "relay": t.relay, "own": _describe(t.own), "groups": None if t.groups is None else list(t.groups),
                 "expires_at": expiry_text(t.expires_us) if t.expires_us else None,
                 "expired": is_expired(t.expires_us, _now_us())} for t in tokens]
        if args.json:
            print(json.dumps(rows))
        for row, t in zip(rows, tokens, strict=True) if not args.json else ():
            access = describe_access(None if row["groups"] is None else tuple(row["groups"]))
            print(f"{row['provider']:8} {row['name']}  mode={row['mode']}  access={access}  "
                  f"expires={_expiry(t.expires_us)}  {_line(row['own'])}")
        return
    record = store.token(name=canonical_name(args.name))
    if args.token_verb == "set-access":
        groups = args.group or ([] if args.admins_only else None)
        now = Groups(store, _record(store)).set_access(record, groups)
        print(f"{record.name!r} is for {describe_access(now.groups)}"
              f"{'' if now.groups is None else ' (and org admins)'}; a running server pushes this within a second")
        return
    if args.token_verb == "set-expiry":
        # A new version, as every change: daemons fetch its secret again if they dropped it at the end.
        expires_us = expiry_us(_now_us(), 0 if args.never else args.expires_in)
        _replace_token(store, "token.update", record, dataclasses.replace(record, expires_us=expires_us))
        print(f"{record.name!r} {'never expires' if args.never else 'expires at ' + expiry_text(expires_us)}; "
              "a running server pushes this within a second")
        return
    if args.token_verb in ("cache", "relay"):  # `relay on` is `cache off`: the older name, kept for scripts
        relay = (args.state == "on") == (args.token_verb == "relay")
        # A new version: daemons drop what they held of it (its secret, bearers made from it) at once.
        _replace_token(store, "token.relay", record, dataclasses.replace(record, relay=relay))
        print(f"{record.name!r}: {MODE_CHANGED[relay]}; a running server pushes this within a second")
        return
    own = _reach_from_args(args, f"organization token {record.name!r}")
    _replace_token(store, "token.update", record, dataclasses.replace(record, own=own))
    print(f"{record.name!r} may also reach {', '.join(own.hosts + own.plain_http_hosts) or 'no extra host'}; "
          "a running server pushes this within a second")


def mode_name(relay: bool) -> str:
    return "relay" if relay else "cached"


# What a change of mode means, said when it is made.
MODE_CHANGED = {
    True: "relay: its secret stays on this server, which makes every call with it. Members' daemons held it "
          "until now: rotate the provider key if a member may have copied it",
    False: "cached: members' daemons will hold its secret in memory, trusting members' machines (a member who is "
           "root on theirs can read it, and use it without quotas or the usage record)",
}


def _replace_token(store: OrgStore, action: str, record: OrgTokenRecord, changed: OrgTokenRecord) -> None:
    """The token's next version (its secret kept), and its admin record entry."""
    new = dataclasses.replace(changed, version=record.version + 1, updated_us=_now_us())
    with _record(store).changing() as note:
        store.replace_token(new, None)
        note(action, new.name, token_change(record, new, rotated=False))


def _now_us() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1e6)


def _record(store: OrgStore) -> AdminRecord:
    """The admin record, its entries by the local operator (`run` sets ACTOR)."""
    return AdminRecord(store, _now_us)


def _terms(args: argparse.Namespace) -> CodeTerms:
    default = CodeTerms()
    return CodeTerms(args.uses if args.uses is not None else default.uses,
                     parse_span(args.expires_in, "--expires-in") // 1_000_000 if args.expires_in else default.expires_in_seconds,
                     parse_span(args.device_ttl, "--device-ttl") // 1_000_000 if args.device_ttl else 0)


def _when(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC") if us else "never"


def _code_terms_line(code) -> str:
    uses = f"enrolls up to {code.uses_left} devices" if code.uses_left > 1 else "enrolls one device"
    ttl = f", each expiring {code.device_ttl_us // 1_000_000} s after it enrolls" if code.device_ttl_us else ""
    return f"{uses}{ttl}; expires {_when(code.expires_us)}"


def _add_users(store: OrgStore, args: argparse.Namespace) -> None:
    wanted = [(name, args.role) for name in args.name]
    if args.from_file is not None:
        wanted += read_user_lines(args.from_file, args.from_file.name)
    if not wanted:
        raise InvalidArgumentError("name the users to add, or give --from FILE (- for stdin): one per line, NAME [ROLE]")
    made = new_users(wanted, _terms(args))
    add_users(store, _record(store), made)
    if args.json:
        print(json.dumps([{"name": u.name, "role": u.role, "code": new.code, "expires": _when(code.expires_us)}
                          for u, code, new in made]))
    elif len(made) == 1 and args.from_file is None:
        user, code, new = made[0]
        print(f"added {user.role} {user.name!r}; their enrollment code follows, shown this once ({_code_terms_line(code)}); "
              "they run 'qpu-broker org login' with it:", file=sys.stderr)
        print(new.code)
    else:
        print(f"added {len(made)} users; each line is NAME<TAB>ENROLLMENT CODE, shown this once "
              f"({_code_terms_line(made[0][1])}):", file=sys.stderr)
        for user, _, new in made:
            print(f"{user.name}\t{new.code}")


def _devices(devices: Devices, args: argparse.Namespace) -> None:
    if args.org_verb == "device":
        removed = devices.remove(args.id)
        print(f"removed device {removed.id} ({removed.name}) of {removed.user!r}: running servers end its org access "
              "within a second")
        return
    rows = devices.list(args.name)
    if args.json:
        print(json.dumps([{"id": d.id, "user": d.user, "name": d.name, "created": _when(d.created_us),
                           "expires": _when(d.expires_us), "last_seen": _when(d.last_seen_us)} for d in rows]))
        return
    if not rows:
        print(f"{args.name!r} has no device (an open enrollment code enrolls one: 'qpu-broker org login')",
              file=sys.stderr)
    for d in rows:
        print(f"{d.id}  {d.name}  created {_when(d.created_us)}  expires {_when(d.expires_us)}  "
              f"last seen {_when(d.last_seen_us)}")


def _new_code(devices: Devices, args: argparse.Namespace) -> None:
    rotate = args.user_verb == "rotate-key"
    code, text = devices.new_code(args.name, _terms(args), withdraw_others=rotate)
    if rotate:
        print(f"withdrew every enrollment code and device of {args.name!r} (running servers end their org access within "
              f"a second); a new enrollment code follows, shown this once ({_code_terms_line(code)}):", file=sys.stderr)
    else:
        print(f"another enrollment code for {args.name!r} follows, shown this once ({_code_terms_line(code)}); their "
              "devices so far keep working:", file=sys.stderr)
    print(text)


def _provider(store: OrgStore, args: argparse.Namespace) -> None:
    if args.provider_verb == "show":
        doc = {p: _describe(r) for p, r in sorted(store.org_reach().items())}
        defined = read_definitions(store)
        if args.json:  # the settings by provider, as before; the org's definitions under a key no provider name
            # can be (names start with a letter)
            print(json.dumps({**doc, "_custom": {n: d.as_dict() for n, d in sorted(defined.items())}}))
        elif not doc:
            print("no org-wide settings: org tokens go to their providers' official hosts only")
        for provider, d in doc.items() if not args.json else ():
            print(f"{provider}: {_line(d)}")
        for name, d in sorted(defined.items()) if not args.json else ():
            print(f"custom {name}: {describe(d)}")
        return
    if args.provider_verb in ("define", "undefine"):
        _define(store, args)
        return
    provider = check_provider(args.provider)
    if args.provider_verb == "clear":
        if provider not in store.org_reach():  # a typo must not read as done (nor be recorded as a change)
            print(f"{provider}: no org-wide settings to clear (see 'org-server provider show'); nothing changed")
            return
        with _record(store).changing() as note:
            before = store.org_reach().get(provider)
            store.set_org_reach(provider, None)
            note("provider.clear", provider, f"was {reach_text(before)}" if before is not None else "was not set")
        print(f"{provider}: org tokens go to the official hosts only")
        return
    if provider not in PROVIDERS and provider not in store.custom_providers():
        raise InvalidArgumentError(f"the organization defines no provider {provider!r}: define it first with "
                                   f"'qpu-broker org-server provider define {provider} --file {provider}.toml'")
    reach = _reach_from_args(args, f"provider {provider}")
    with _record(store).changing() as note:
        before = store.org_reach().get(provider)
        store.set_org_reach(provider, reach)
        note("provider.set", provider, reach_text(reach) + (f" ({reach_change(before, reach) or 'as before'})"
                                                             if before is not None else ""))
    if before is not None and before != reach:  # "set" replaces: say what went, so nothing is lost unseen
        print(f"{provider}: replaced {_line(_describe(before))}", file=sys.stderr)
    print(f"{provider}: org tokens may also reach {', '.join(reach.hosts + reach.plain_http_hosts) or 'no extra host'}"
          f"{'; extra CA set' if reach.ca_pem else ''}{'; token URL ' + reach.token_url if reach.token_url else ''}")


def _define(store: OrgStore, args: argparse.Namespace) -> None:
    if args.provider_verb == "undefine":
        undefine(store, _record(store), args.provider)
        tokens = [t.name for t in store.tokens() if t.provider == args.provider]
        print(f"{args.provider}: no longer defined; members' daemons refuse its org tokens within a second"
              + (f" ({', '.join(map(repr, tokens))}: define it again, or delete them)" if tokens else ""))
        return
    definition = definition_file(args.provider, args.file)
    before = define(store, _record(store), definition)
    if before is not None and before != definition:  # a redefinition: say what went, so nothing is lost unseen
        print(f"{definition.name}: replaced {describe(before)}", file=sys.stderr)
    print(f"{definition.name}: {describe(definition)}; members' daemons get it within a second. Admins add its org "
          f"tokens with 'qpu-broker token add NAME --type organization --provider {definition.name}'")


def _group(store: OrgStore, args: argparse.Namespace) -> None:
    groups = Groups(store, _record(store))
    if args.group_verb == "list":
        listed = groups.list()
        if args.json:
            print(json.dumps([{"name": g.name, "members": g.members} for g in listed]))
        elif not listed:
            print("no groups: every member may use every org token not limited to admins")
        for g in listed if not args.json else ():
            print(f"{g.name}: {', '.join(g.members) or '(no members)'}")
    elif args.group_verb == "add":
        g = groups.add(args.name, args.member)
        print(f"added the group {g.name!r} with {len(g.members)} member{'s' if len(g.members) != 1 else ''}; "
              f"open tokens to it with 'org-server token set-access NAME --group {g.name}'")
    elif args.group_verb == "rm":
        orphaned = groups.remove(args.name)
        print(f"removed the group {args.name!r}: its members lose the tokens they had through it within a second"
              + (f"; now for org admins only (it was their last group): {', '.join(map(repr, orphaned))}"
                 if orphaned else ""))
    elif args.group_verb == "add-member":
        g = groups.add_members(args.group, args.member)
        print(f"{g.name!r}: {', '.join(g.members)}; their daemons get its tokens within a second")
    elif args.group_verb == "rm-member":
        g = groups.remove_members(args.group, args.member)
        print(f"{g.name!r}: {', '.join(g.members) or '(no members)'}; the removed members' daemons drop what they "
              "had only through it within a second")


def _usage(store: OrgStore, args: argparse.Namespace) -> None:
    """Reads the data dir like the other admin commands; `--follow` polls it (the server writes it)."""
    if args.action == "prune":
        _prune_usage(store, args)
        return
    if args.before:
        raise InvalidArgumentError("--before goes with 'usage prune': to list records from a time on, use --since")
    query = UsageQuery(args.member, args.token, parse_since(args.since, _now_us()) if args.since else 0)
    while True:
        page = store.usage(query)
        for row in page.records:
            print(json.dumps(usage_dict(row)) if args.json else usage_line(row), flush=True)
        query = dataclasses.replace(query, after_seq=page.after_seq)  # past what this read examined, matched or not
        if page.more:
            continue  # the next page at once
        if not args.follow:
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def _audit(store: OrgStore, args: argparse.Namespace) -> None:
    query = AdminQuery(parse_since(args.since, _now_us()) if args.since else 0, args.actor, args.action)
    while True:
        entries, more = _record(store).entries(query)
        for e in entries:
            print(json.dumps(entry_dict(e)) if args.json else entry_line(e))
        if not more:
            return
        query = dataclasses.replace(query, after_seq=entries[-1].seq)


def _prune_usage(store: OrgStore, args: argparse.Namespace) -> None:
    """The org keeps its whole usage record until an admin says otherwise: the record is the org's
    audit, so nothing drops rows on its own. Pruning takes a prefix (what arrived before a time),
    for everyone at once, so reads and follows resume exactly where they were."""
    if not args.before or args.member or args.token or args.since or args.follow:
        raise InvalidArgumentError("usage prune takes --before WHEN only (e.g. --before 400d, or a date): it removes "
                                   "every member's records that reached the server before then")
    now = _now_us()
    before = parse_since(args.before, now, "--before")
    if before > now:
        raise InvalidArgumentError(f"--before {args.before!r} is in the future: name a time already past")
    # The entry first, in its own transaction: the prune goes in batches (a big one must not hold the
    # server's writes), and one stopped half way is what the entry says, finished by running it again.
    with _record(store).changing() as note:
        note("usage.prune", "usage", f"records that arrived before {iso(before)}")
    gone = store.prune_usage(before)
    print(f"removed {gone} usage record{'' if gone == 1 else 's'} that reached the server before {iso(before)}")


def _quota(store: OrgStore, args: argparse.Namespace) -> None:
    quotas = Quotas(store)
    if args.quota_verb == "list":
        for q in quotas.status(args.member or None):
            print(json.dumps(dataclasses.asdict(q)) if args.json else quota_line(q))
        return
    if args.quota_verb == "rm":
        quota_admin.remove(store, _record(store), args.id)
        print(f"quota #{args.id} removed; members' daemons hear of it within a second")
        return
    token_id = store.token(name=canonical_name(args.token)).id if args.token else ""
    if args.requests is not None:
        unit, limit = REQUESTS, args.requests
    else:
        if not math.isfinite(args.qpu_seconds):
            raise InvalidArgumentError(f"--qpu-seconds {args.qpu_seconds} is not a number of seconds")
        unit, limit = QPU_US, math.ceil(args.qpu_seconds * 1_000_000) if args.qpu_seconds > 0 else int(args.qpu_seconds)
    member = EVERY_MEMBER if args.each_member else args.member
    same = [q for q in store.quotas() if (q.member, q.token_id, q.unit) == (member, token_id, unit)]
    now = _now_us()
    valid_from = parse_since(args.valid_from, now, "--from") if args.valid_from else 0
    valid_until = parse_until(args.until, now, "--until") if args.until else 0
    if args.start:
        start = parse_since(args.start, now, "--start")
    elif valid_from:
        start = valid_from  # the windows start with the span
    elif same:
        start = same[0].start_us  # a new limit keeps the windows, and this one's count
    else:
        start = int(datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1e6)
    q = quota_admin.write(store, _record(store),
                          Quota(0, member, token_id, args.token, unit, limit, parse_span(args.per, "--per"), start,
                                valid_from_us=valid_from, valid_until_us=valid_until))
    print(f"quota #{q.id}: {q.describe()}; members' daemons hear of it within a second")


def run(args: argparse.Namespace) -> int:
    layout = OrgLayout(args.data)
    ACTOR.set(local_operator())  # who every change this command makes is recorded as
    if args.org_verb == "serve":
        from qpu_broker.common.event_loop import event_loop_runner
        from qpu_broker.orgserver.serve import serve

        if (args.tls_cert is None) != (args.tls_key is None):
            print("qpu-broker: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
            return 2
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return event_loop_runner()(serve(layout, args.database, args.listen, args.tls_cert, args.tls_key,
                                         args.records_sync, args.console))
    if args.org_verb == "init":
        tls_hosts = check_tls_hosts(args.tls_host)  # before anything is written
        store, _ = layout.create(args.database)
        [(user, code, new)] = new_users([(args.admin, "admin")], _terms(args))
        with _record(store).changing() as note:
            store.set_meta("org", args.org)
            store.add_users([user], [code])
            note("org.init", args.org, f"first admin {user.name!r}; {code_terms(code)}")
        if tls_hosts:
            make_tls_files(layout.tls, args.org, tls_hosts)
            print(f"made a CA and a server certificate for {', '.join(args.tls_host)} in {layout.tls.directory}; "
                  f"members log in with --ca {layout.tls.ca}", file=sys.stderr)
        print(f"created the organization {args.org!r} in {args.data}; the enrollment code of admin {args.admin!r} "
              f"follows, shown this once ({_code_terms_line(code)}); log in with 'qpu-broker org login':", file=sys.stderr)
        print(new.code)
        return 0
    if args.org_verb == "tls":
        layout.require(args.database)  # an org's data dir, or the one-line reason it is not
        hosts = check_tls_hosts(args.tls_host)
        if not layout.tls.ca_key.exists() and not layout.tls.exists():  # no TLS yet: what init --tls-host makes
            store, _ = layout.open(args.database)
            make_tls_files(layout.tls, store.meta("org") or "org", hosts)
            store.close()
            print(f"made a CA and a server certificate for {', '.join(hosts)} in {layout.tls.directory}: restart "
                  f"'org-server serve' to use them; members log in with --ca {layout.tls.ca}", file=sys.stderr)
            return 0
        expires = issue_server_certificate(layout.tls, hosts)
        print(f"issued a server certificate for {', '.join(hosts)}, valid until {expires:%Y-%m-%d}, in "
              f"{layout.tls.cert}: restart 'org-server serve' to use it (members keep {layout.tls.ca})", file=sys.stderr)
        return 0
    store, key = layout.open(args.database)
    if args.org_verb == "console-login":
        from qpu_broker.orgserver.console.login import console_login

        return console_login(store, _record(store), args.admin, args.url)
    devices = Devices(store, key, store.meta("org") or "org", store.meta("store_id") or "", _now_us, _record(store))
    if args.org_verb == "provider":
        _provider(store, args)
        return 0
    if args.org_verb == "token":
        _token(store, args)
        return 0
    if args.org_verb == "group":
        _group(store, args)
        return 0
    if args.org_verb == "usage":
        _usage(store, args)
        return 0
    if args.org_verb == "quota":
        _quota(store, args)
        return 0
    if args.org_verb == "audit":
        _audit(store, args)
        return 0
    if args.org_verb == "device" or args.user_verb == "devices":
        _devices(devices, args)
        return 0
    if args.user_verb == "add":
        _add_users(store, args)
    elif args.user_verb == "list":
        users = store.users()
        if args.json:
            print(json.dumps([{"name": u.name, "role": u.role} for u in users]))
        else:
            for u in users:
                print(f"{u.role:7} {u.name}")
    elif args.user_verb == "rm":
        remove_users(store, _record(store), args.name, _now_us())
        print(f"removed {', '.join(repr(n) for n in args.name)}: their codes and devices no longer work, and running "
              "servers end their daemons' org access within a second")
    elif args.user_verb in ("rotate-key", "code"):
        _new_code(devices, args)
    elif args.user_verb == "set-role":
        with _record(store).changing() as note:
            before = store.user(args.name)
            store.set_role(args.name, args.role)  # NOT_FOUND when there is no such user
            note("user.set-role", args.name, f"{before.role if before else '?'} -> {args.role}")
        print(f"{args.name!r} is now {'an admin' if args.role == 'admin' else 'a ' + args.role}")
    return 0
