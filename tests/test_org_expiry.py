"""Org token lifetimes: an admin sets one (`token add --type organization --expires-in`, Python
`create(expires_in=)`, `org-server token set-expiry`); members see it (ListTokens, Watch); from
that moment the server refuses relayed calls and Reserve with the token and FetchSecrets leaves it
out, and members' daemons stop using it (cached, relay, exec) and drop its secret, with no grace,
even cut off from the server. It stays listed, marked expired; a new lifetime renews it. Real
processes (an org server, an admin's and a member's daemon, the member's own gRPC client), and
the server's rules in-process with its clock injected."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import sys

import grpc
import pytest
from conftest import wait_for
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.orgserver.db import SQLITE
from qpu_broker.orgserver.service import ORG_ONLY, OrgService
from qpu_broker.orgserver.store import OrgStore
from qpu_broker.orgserver.users import new_users
from qpu_broker_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QpuToken,
    QpuTokenType,
    TokenProvider,
    UnavailableError,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

RELAY = TokenProvider(ionq=QpuToken("organization", name="Relay IonQ"))
BOTH = ("Org IonQ", "Relay IonQ")
EXEC = ("import os, urllib.request as u; r = u.Request(os.environ['IONQ_API_URL'] + '/jobs', "
        "headers={'Authorization': 'apiKey ' + os.environ['IONQ_API_KEY']}); print(u.urlopen(r).status)")
LIFETIME = 3  # seconds: what the admin CLI gives both tokens, long enough for the push to arrive first


def _expired(name: str) -> str:
    """The refusal's words, with the time left open."""
    return (rf"organization token '{name}' expired at \d{{4}}-\d\d-\d\dT[\d:]+\+00:00: ask an org admin to rotate it "
            rf"\(qpu-broker token rotate '{name}' --type organization --expires-in 90d\)")


def _uses(rig) -> dict[str, object]:
    """The member's three ways to use the tokens: 200, or the error each raised."""
    out: dict[str, object] = {}
    for way, call in (("cached", lambda: rig.forward(rig.member).status_code),
                      ("relay", lambda: rig.member.broker().forward("GET", rig.fake.url("/v0.3/jobs"), provider="ionq",
                                                                    qpu_tokens=RELAY).status_code)):
        try:
            out[way] = call()
        except (FailedPreconditionError, NotFoundError, UnavailableError) as exc:
            out[way] = exc
    r = rig.member.cli("exec", "--org-token", "ionq=Org IonQ", "--", sys.executable, "-c", EXEC)
    out["exec"] = int(r.stdout.strip()) if r.returncode == 0 else r.stderr
    return out


def _org_tokens(daemon) -> dict[str, QpuToken]:
    return {t.name: t for t in daemon.broker().qpu_token.get_all()[QpuTokenType.ORGANIZATION]}


def test_an_expired_org_token_is_refused_everywhere_until_an_admin_renews_it(member_rig):
    rig = member_rig
    admin = rig.admin.broker()
    (rig.member.home / "config.toml").write_text(  # where the exec session's endpoint sends (the org allows it)
        f'[org]\ngrace_seconds = 900\n[providers.ionq]\nendpoint = "https://{rig.fake.netloc}"\n')
    assert rig.member.cli("reload").returncode == 0

    # Set at creation, through the daemon: Python's create(expires_in=) and the CLI's --expires-in.
    hour = datetime.timedelta(hours=1)
    made = admin.qpu_token.create(name="Org IonQ", provider="ionq", token=rig.secret, token_type="organization",
                                  expires_in=hour, cached=True)
    assert made.expires_at is not None and abs(made.expires_at - datetime.datetime.now(datetime.UTC) - hour).total_seconds() < 60
    r = rig.admin.cli("token", "add", "Relay IonQ", "--type", "organization", "--provider", "ionq", "--relay",
                      "--expires-in", "1h", "--json", input=rig.secret + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["expires_at"], r.stdout + r.stderr
    # Members are told it (ListTokens through their daemon, from the push), and use the tokens meanwhile.
    seen = wait_for(lambda: (t := _org_tokens(rig.member)).keys() == set(BOTH) and t, "the member's daemon to get both")
    assert all(seen[n].expires_at is not None for n in BOTH)
    wait_for(lambda: _uses(rig) == {"cached": 200, "relay": 200, "exec": 200}, "the member's uses before the end")

    # The admin CLI shortens both lives; the member's daemon hears it, then is cut off from the server.
    for name in reversed(BOTH):  # the relay token first: it ends no later than the cached one
        r = rig.server.cli("token", "set-expiry", name, "--expires-in", f"{LIFETIME}s")
        assert r.returncode == 0 and "expires at" in r.stdout, r.stderr
    wait_for(lambda: all(t.expires_at < seen[t.name].expires_at for t in _org_tokens(rig.member).values()),
             "the member's daemon to hear of the new expiry")
    rig.server.stop()
    # No grace (900 s here): at the end, the timer on the daemon's loop drops the cached secret, with
    # no server and no call to prompt it.
    wait_for(lambda: re.search(r"organization token 'Org IonQ' expired at \S+: its secret dropped", rig.member.log()),
             "the member's daemon to drop the secret at the end", timeout=LIFETIME + 10)
    uses = _uses(rig)
    for way in ("cached", "relay"):
        assert isinstance(uses[way], FailedPreconditionError) and re.fullmatch(_expired(BOTH[way == "relay"]), str(uses[way])), uses
    assert re.search(_expired("Org IonQ"), uses["exec"]), uses["exec"]
    with pytest.raises(FailedPreconditionError, match=_expired("Org IonQ")):
        rig.forward(rig.admin)  # an admin's daemon too: the org's word holds for everyone
    # Listed, marked: an admin sees which tokens need renewing, a member why theirs is refused.
    for line in [x for x in rig.member.cli("token", "list").stdout.splitlines() if "IonQ" in x]:
        assert re.search(r"\bexpired \d{4}-", line), line

    # The server's own word, to the member's own gRPC client: listed with the time, never used.
    rig.server.start(port=rig.server.port)
    stub, md = rig.member_client()
    listed = {t.name: t for t in stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens}
    assert set(listed) == set(BOTH) and all(t.HasField("expires_at") for t in listed.values())
    assert stub.FetchSecrets(org_pb2.FetchSecretsRequest(), metadata=md).secrets == []
    assert stub.FetchSecrets(org_pb2.FetchSecretsRequest(ids=[listed["Org IonQ"].id]), metadata=md).secrets == []
    for call, request in ((stub.Reserve, org_pb2.ReserveRequest(token_id=listed["Org IonQ"].id)),
                          (stub.RelayForward, org_pb2.RelayForwardRequest(
                              token_id=listed["Relay IonQ"].id, provider="ionq", url=rig.fake.url("/v0.3/jobs"))),
                          (stub.RelaySign, org_pb2.RelaySignRequest(
                              token_id=listed["Relay IonQ"].id, provider="ionq", url=rig.fake.url("/v0.3/jobs")))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=md)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION, caught.value
        assert re.fullmatch(_expired("Relay IonQ" if call is not stub.Reserve else "Org IonQ"),
                            caught.value.details().removeprefix("qpu-broker: ")), caught.value.details()
    assert all("expires=expired 20" in x for x in rig.server.cli("token", "list").stdout.splitlines()), "admin's list"

    # Out of range: one line, nothing changed. (A lifetime counts from now on the server's clock, so
    # no expiry can be set in the past; 0 means never.)
    for bad in ("0", "-5m", "9999999w", "soon"):
        r = rig.server.cli("token", "set-expiry", "Org IonQ", f"--expires-in={bad}")
        assert r.returncode == 2 and "not a lifetime like 90d" in r.stderr and "Traceback" not in r.stderr, r.stderr
    from qpu_broker.common.lifetimes import LIFETIME_MAX

    with pytest.raises(InvalidArgumentError, match="lifetime must be from 1 s to 36500 days"):
        admin.qpu_token.update(qpu_token_name="Org IonQ", token_type="organization", expires_in=LIFETIME_MAX + 1)
    admin_stub, admin_md = rig.server.admin_client()
    with pytest.raises(grpc.RpcError) as caught:
        admin_stub.CreateToken(org_pb2.CreateTokenRequest(name="x", provider="ionq", secret=b"s",
                                                          expires_in_seconds=2**64 - 1), metadata=admin_md)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(_org_tokens(rig.admin)) == set(BOTH)

    # Renewed: a rotation with a new lifetime (the CLI), or a new lifetime alone (Python).
    r = rig.admin.cli("token", "rotate", "Org IonQ", "--type", "organization", "--expires-in", "90d",
                      input=rig.secret + "\n")
    assert r.returncode == 0, r.stderr
    admin.qpu_token.update(qpu_token_name="Relay IonQ", token_type="organization", expires_in=90 * 86400)
    wait_for(lambda: _uses(rig) == {"cached": 200, "relay": 200, "exec": 200}, "the member's uses after renewal")
    assert rig.secret not in rig.member.log() and rig.secret not in rig.server.log()


def test_the_server_enforces_an_expiry_by_its_own_clock(short_tmp, as_local_operator):
    """In-process, the clock injected: exactly at the end the token is out of FetchSecrets, relay
    and Reserve (for admins too), still listed; a bad lifetime changes nothing; a new one renews."""
    from qpu_broker.common.lifetimes import LIFETIME_MAX

    now = [1_900_000_000.0]
    store = OrgStore.open(SQLITE, str(short_tmp / "org.db"))
    service = OrgService(store, os.urandom(32), clock=lambda: now[0])
    made = new_users([("alice", "admin"), ("bob", "member")])
    store.add_users([u for u, _, _ in made], [c for _, c, _ in made])
    users = {u.name: u for u, _, _ in made}
    cached = service.create("cached", "ionq", b"s1", ORG_ONLY, relay=False, expires_in=60)
    relay = service.create("relay", "ionq", b"s2", ORG_ONLY, relay=True, expires_in=60)
    service.create("forever", "ionq", b"s3", ORG_ONLY, relay=False)
    assert cached.expires_us == (1_900_000_000 + 60) * 1_000_000

    def fetched(user: str) -> list[str]:
        return sorted(r.name for r, _ in service.secrets(users[user], []))

    now[0] += 59.999
    assert fetched("bob") == ["cached", "forever"] and service.reserve(users["bob"], cached.id) == ([], "")
    now[0] = 1_900_000_060.0  # the very moment: no grace
    assert fetched("bob") == fetched("alice") == ["forever"]
    for token in (cached, relay):
        for user in users.values():
            with pytest.raises(FailedPreconditionError, match=_expired(token.name)):
                service.usable(user, token.id)  # what RelayForward and RelaySign check first
        with pytest.raises(FailedPreconditionError, match=_expired(token.name)):
            service.reserve(users["bob"], token.id)
    assert sorted(r.name for r in service.list_page(users["bob"], "", 0)[0]) == ["cached", "forever", "relay"]

    before = store.token(token_id=cached.id)
    for bad in (-1, LIFETIME_MAX + 1, float("inf"), float("nan")):
        with pytest.raises(InvalidArgumentError, match="lifetime"):
            service.update(before, name=None, secret=b"new", own=None, expires_in=bad)
        with pytest.raises(InvalidArgumentError, match="lifetime"):
            service.create("new", "ionq", b"s", ORG_ONLY, expires_in=bad)
    assert store.token(token_id=cached.id) == before and len(store.tokens()) == 3
    renewed = service.update(before, name=None, secret=b"s1-new", own=None, expires_in=90 * 86400)
    assert renewed.expires_us == int((now[0] + 90 * 86400) * 1_000_000)
    assert fetched("bob") == ["cached", "forever"] and service.usable(users["bob"], cached.id) == renewed
    kept = service.update(renewed, name="cached2", secret=None, own=None)  # a rename keeps the end
    assert kept.expires_us == renewed.expires_us
    assert service.update(kept, name=None, secret=None, own=None, expires_in=0).expires_us == 0  # 0: never
    store.close()


def test_a_daemon_drops_an_expired_tokens_secret_by_a_timer():
    """OrgExpiry in-process: a token whose end has come is refused and its secret dropped at once;
    its timer fires on the next loop turn; a cancelled or replaced timer never fires."""
    from qpu_broker.org.expiry import OrgExpiry
    from qpu_broker.tokens.org_tokens import OrgToken

    now = [2_000_000_000.0]

    def token(server_id: str, ends: float) -> OrgToken:
        return OrgToken("org_" + server_id, server_id, f"T{server_id}", "ionq", 1, Reach(owner=Owner.ORG), 0, 0,
                        expires_us=int(ends * 1_000_000))

    async def run() -> list[str]:
        fired: list[str] = []
        done = asyncio.Event()
        expiry = OrgExpiry(lambda: now[0], lambda sid: (fired.append(sid), done.set()))
        later = token("a", now[0] + 3600)
        assert expiry.check(later) is later and not expiry.expired(token("never", 0))
        expiry.arm(later)
        gone = token("b", now[0] - 1)
        expiry.arm(gone)
        expiry.cancel("b")
        expiry.arm(token("c", now[0] - 2))
        expiry.arm(token("c", now[0] - 1))  # a new version's end replaces the old one's timer
        now[0] += 3600  # the wall clock reaches a's end: refused at once, whatever its timer does
        await asyncio.wait_for(done.wait(), 5)
        # a's timer is an hour away on the loop's clock (as after a laptop's sleep): the refused
        # use drops its secret at once.
        with pytest.raises(FailedPreconditionError, match=_expired("Ta")):
            expiry.check(later)
        await asyncio.sleep(0)  # one more loop turn: a timer left behind would have run by now
        expiry.clear()
        return fired

    assert asyncio.run(run()) == ["c", "a"]
