"""The org domain in process, as daemon/main.open_org wires it, over an org server in memory
(testsupport/org_memory): no daemon, no org server process, no socket.

The real-process tests (test_org_*.py) hold the contract end to end; these hold the domain's
rules one by one: applying Watch events, the secret cache and the grace (clocks injected), the
usage reporter, quota reservations and the relay calls' assembly.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from qpu_broker.common.org_limits import RELAY_BODY_MAX
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.daemon.main import Org, open_org
from qpu_broker.forward.forwarder import ForwardCall, LunaFill, SignCall
from qpu_broker.org.records import (
    CAUGHT_UP,
    CHANGED,
    DELETED,
    HEARTBEAT,
    SNAPSHOT,
    PushedToken,
    WatchEvent,
)
from qpu_broker.org.session import CONNECTED, DISCONNECTED, LOCKED, REMOVED, UNAVAILABLE
from qpu_broker.tokens.events import Locked
from qpu_broker.tokens.usage_queue import UsageQueue
from qpu_broker_client.errors import (
    REMOVED_MARK,
    FailedPreconditionError,
    LockedError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import ANSWERED, Quota, UsageRecord

from testsupport.org_memory import MemoryOrgServer

ORG = Reach(owner=Owner.ORG)
NOW = 2_000_000_000.0


def pushed(server_id: str, name: str, version: int = 1, *, provider: str = "ionq", relay: bool = False,
           metered: bool = False, expires: float = 0.0, own: Reach = ORG) -> PushedToken:
    return PushedToken(server_id, name, provider, version, own, None, 1, 2, metered, relay,
                       int(expires * 1_000_000))


class Login:
    """The sealed login as the link reads it (tokens/org_login.OrgLoginStore): here, never locked."""

    locked = False

    def stored(self) -> bool:
        return False

    async def save(self, login) -> None:
        pass


@dataclasses.dataclass
class Rig:
    org: Org
    server: MemoryOrgServer
    usage: UsageQueue
    clock: list[float]  # [wall, monotonic]
    usage_ready: asyncio.Event
    forgotten: list[str]  # cache-key prefixes whose derived credentials were dropped

    def apply(self, *events: WatchEvent) -> None:
        async def run():
            for e in events:
                await self.org.state.apply(e, self.server.fetch_secrets)
        asyncio.run(run())


def new_rig(tmp) -> Rig:
    """A daemon's org side in process, against an org server in memory (close its `usage`)."""
    clock = [NOW, 100.0]
    forgotten: list[str] = []
    server = MemoryOrgServer()
    usage = UsageQueue(tmp / "usage.db", clock=lambda: clock[0])
    ready = asyncio.Event()
    org = open_org(server, Login(), usage, ready, 60.0, forgotten.append, clock=lambda: clock[0],
                   monotonic=lambda: clock[1])
    return Rig(org, server, usage, clock, ready, forgotten)


@pytest.fixture
def rig(short_tmp):
    made = new_rig(short_tmp)
    yield made
    made.usage.close()


def snapshot(*tokens: PushedToken, revision: int = 5, store_id: str = "store-1", **more) -> WatchEvent:
    return WatchEvent(SNAPSHOT, tokens, revision, store_id, heartbeat_seconds=2.0, **more)


# -- applying Watch events -----------------------------------------------------------------------
def test_a_paged_snapshot_is_applied_at_its_last_page_with_secrets_of_cached_tokens_only(rig):
    rig.server.secrets = {"t1": (1, b"cached-secret"), "t2": (1, b"relay-secret-never-asked")}
    wide = Reach(("org-wide.test:443",), owner=Owner.ORG)
    rig.apply(WatchEvent(SNAPSHOT, (pushed("t1", "Cached"),), 0, "store-1", more=True))
    assert len(rig.org.state) == 0 and rig.server.calls == []  # nothing until the last page
    rig.apply(snapshot(pushed("t2", "Relay", relay=True), org_reach={"ionq": wide}))
    state = rig.org.state
    assert sorted(t.name for t in state.tokens()) == ["Cached", "Relay"]
    assert rig.server.calls == [("FetchSecrets", ["t1"])]  # the relay token's secret never asked for
    cached = state.lookup(name="Cached")
    assert cached.handle.startswith("org_") and "t1" not in cached.handle
    assert state.lookup(handle=cached.handle) == cached
    assert cached.reach.hosts == ("org-wide.test:443",)  # the org-wide settings merged in
    assert rig.org.access.secret(cached).reveal() == b"cached-secret"
    with pytest.raises(FailedPreconditionError, match="relay token"):
        rig.org.access.secret(state.lookup(name="Relay"))
    assert (state.revision, state.store_id, state.synced, state.heartbeat) == (5, "store-1", True, 2.0)


def test_a_change_renames_and_rotates_and_a_deletion_forgets(rig):
    rig.server.secrets = {"t1": (1, b"v1")}
    rig.apply(snapshot(pushed("t1", "Old")))
    key_v1 = rig.org.access.cache_key(rig.org.state.lookup(name="Old"))
    rig.server.secrets = {"t1": (2, b"v2")}
    rig.forgotten.clear()
    rig.apply(WatchEvent(CHANGED, (pushed("t1", "New", version=2),), 6))
    assert rig.org.state.lookup(name="Old") is None
    renamed = rig.org.state.lookup(name="New")
    assert rig.org.access.secret(renamed).reveal() == b"v2"
    assert rig.forgotten == [key_v1.rsplit(":", 1)[0] + ":"]  # the old version's bearer goes with it
    rig.apply(WatchEvent(DELETED, (pushed("t1", "New", version=2),), 7), WatchEvent(HEARTBEAT))
    assert rig.org.state.lookup(handle=renamed.handle) is None and len(rig.org.secrets) == 0
    assert rig.org.state.revision == 7


def test_a_resumed_stream_catches_up_and_a_snapshot_of_another_store_is_foreign(rig):
    rig.apply(snapshot(pushed("t1", "A")))
    assert rig.org.state.foreign(snapshot(store_id="store-2"))
    assert not rig.org.state.foreign(snapshot(store_id="store-1"))
    rig.org.state.stream_started()
    assert not rig.org.state.synced
    rig.apply(WatchEvent(CAUGHT_UP, revision=9, store_id="store-1", heartbeat_seconds=3.0))
    assert (rig.org.state.revision, rig.org.state.synced, rig.org.state.heartbeat) == (9, True, 3.0)


def test_a_snapshot_drops_tokens_it_no_longer_lists_and_a_bad_custom_provider(rig):
    rig.apply(snapshot(pushed("t1", "A"), pushed("t2", "B"),
                       custom_providers={"good": '{"official_hosts": ["api.good.test"], "auth": "bearer"}',
                                         "bad": "{not json"}))
    assert set(rig.org.access.custom_providers()) == {"good"}
    rig.apply(snapshot(pushed("t2", "B"), revision=8))
    assert [t.name for t in rig.org.state.tokens()] == ["B"] and rig.org.access.custom_providers() == {}


# -- the secret cache: ends and grace --------------------------------------------------------------
def test_an_expired_token_is_refused_and_its_secret_dropped_by_the_wall_clock(rig):
    rig.server.secrets = {"t1": (1, b"soon-gone")}
    rig.org.session.state = CONNECTED

    async def run():
        await rig.org.state.apply(snapshot(pushed("t1", "Ends", expires=NOW + 30)), rig.server.fetch_secrets)
        token = rig.org.access.find(name="Ends")
        assert rig.org.access.secret(token).reveal() == b"soon-gone"
        rig.clock[0] = NOW + 30  # the wall clock reaches its end before the loop's timer fires
        with pytest.raises(FailedPreconditionError, match="expired at"):
            rig.org.access.find(name="Ends")
        assert len(rig.org.secrets) == 0 and [t.name for t in rig.org.access.tokens()] == ["Ends"]  # still listed
        rig.org.secrets.drop()  # no timer left behind on the loop

    asyncio.run(run())


def test_grace_counts_from_the_last_contact_and_past_it_everything_goes(rig):
    rig.server.secrets = {"t1": (1, b"held")}
    rig.apply(snapshot(pushed("t1", "A")))
    session = rig.org.session
    session.contact()  # at monotonic 100
    session.state = DISCONNECTED
    rig.clock[1] = 160.0  # exactly the grace: still usable
    token = rig.org.access.find(name="A")
    assert rig.org.access.secret(token).reveal() == b"held"
    rig.forgotten.clear()
    key = rig.org.access.cache_key(token)
    rig.clock[1] = 160.5
    with pytest.raises(UnavailableError, match=r"org-a.test:443, org-b.test:443 have been unreachable .* \(60 s\)"):
        rig.org.access.find(name="A")
    assert session.state == UNAVAILABLE and len(rig.org.state) == 0 and len(rig.org.secrets) == 0
    assert rig.forgotten == ["org:"]
    rig.apply(snapshot(pushed("t1", "A")))
    assert rig.org.access.cache_key(rig.org.state.lookup(name="A")) != key  # a new epoch: nothing derived before


def test_a_connected_link_keeps_its_secrets_however_long_the_silence(rig):
    rig.apply(snapshot(pushed("t1", "A")))
    rig.org.session.state = CONNECTED
    rig.clock[1] += 10_000
    assert rig.org.access.find(name="A").name == "A"
    with pytest.raises(NotFoundError, match="named 'B'"):
        rig.org.access.find(name="B")


# -- usage reporting -----------------------------------------------------------------------------------
def _use(token: str) -> UsageRecord:
    return UsageRecord("", "", token, token, "ionq", "forward", "POST", "api.ionq.co", "/v0.3/jobs", 0, "", 10, 0, 0)


def test_the_reporter_sends_this_logins_finished_records_and_deletes_them_once_taken(rig):
    login = ("org-a.test:443", "ada")
    rig.usage.add(login, _use("mine"), ANSWERED, 200)
    rig.usage.add(("org-a.test:443", "someone-else"), _use("theirs"), ANSWERED, 200)
    unfinished = rig.usage.begin(login, _use("in-flight"), ANSWERED)
    reporter = rig.org.reporter

    async def run():
        assert await reporter.send_batch() == 0  # not connected: nothing goes
        rig.org.session.member(rig.server.member)
        rig.org.session.state = CONNECTED
        rig.server.fail["ReportUsage"] = UnavailableError("the organization server is unavailable")
        assert await reporter.send_batch() is None  # refused: kept on disk
        assert rig.usage.waiting("org-a.test:443") == 3
        del rig.server.fail["ReportUsage"]
        assert await reporter.send_batch() == 1
        assert [r.token_id for r in rig.server.reported] == ["mine"]
        assert await reporter.send_batch() == 0
        rig.usage.finish(unfinished, 200, ANSWERED)
        assert await reporter.send_batch() == 1

    asyncio.run(run())
    assert [r.token_id for r in rig.server.reported] == ["mine", "in-flight"]
    assert rig.usage.waiting("org-a.test:443") == 1  # the other member's, never sent as this one's


def test_a_new_connection_ends_the_reports_back_off(rig, monkeypatch):
    """Reports refused by a replica that died back off (up to a minute); the stream coming up again,
    on another replica, sends them at once rather than when the back-off ends."""
    import time

    from qpu_broker.org import usage_reporter

    monkeypatch.setattr(usage_reporter, "USAGE_RETRY_FIRST", 0.05)
    login = ("org-a.test:443", "ada")
    rig.usage.add(login, _use("mine"), ANSWERED, 200)
    rig.org.session.member(rig.server.member)
    rig.org.session.state = CONNECTED
    rig.server.fail["ReportUsage"] = UnavailableError("the organization server is unavailable")

    async def run() -> float:
        task = asyncio.create_task(rig.org.reporter.run())
        deadline = time.monotonic() + 10
        while sum(1 for m, _ in rig.server.calls if m == "ReportUsage") < 6:  # the back-off now 1.6 s
            assert time.monotonic() < deadline, "the reporter stopped trying"
            await asyncio.sleep(0.01)
        del rig.server.fail["ReportUsage"]
        woken = time.monotonic()
        rig.org.reporter.wake()  # what the sync calls once the stream is up
        while not rig.server.reported:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        return time.monotonic() - woken

    assert asyncio.run(run()) < 0.5
    assert [r.token_id for r in rig.server.reported] == ["mine"]


def test_a_record_queued_wakes_the_reporter(short_tmp):
    async def run():
        ready = asyncio.Event()
        usage = UsageQueue(short_tmp / "usage.db", on_queued=ready.set)
        try:
            usage.add(("s", "m"), _use("t"), ANSWERED)
            assert ready.is_set()
        finally:
            usage.close()

    asyncio.run(run())


# -- quotas -------------------------------------------------------------------------------------------
QUOTA = Quota(7, "", "t1", "Metered", "requests", 10, 3_600_000_000, 0, used=3)


def test_a_reservation_is_the_servers_and_brings_the_quotas_use(rig):
    rig.apply(snapshot(pushed("t1", "Metered", metered=True)))
    token = rig.org.state.lookup(name="Metered")
    rig.server.quotas = [QUOTA]
    assert asyncio.run(rig.org.access.reserve(token)).startswith("res-")
    assert rig.server.calls[-1] == ("Reserve", "t1") and rig.org.quotas.known() == [QUOTA]
    rig.server.fail["Reserve"] = UnavailableError("down")
    with pytest.raises(UnavailableError, match="'Metered' has a quota, and the organization server org-a.test:443 "
                                               "cannot count this use now"):
        asyncio.run(rig.org.access.reserve(token))
    rig.server.fail["Reserve"] = ResourceExhaustedError("quota 7 used up")
    with pytest.raises(ResourceExhaustedError, match="used up"):  # the server's refusal, as it said it
        asyncio.run(rig.org.access.reserve(token))


def test_status_asks_for_quotas_at_most_once_a_second_and_only_when_one_binds(rig):
    rig.server.quotas = [QUOTA]

    async def refresh() -> int:
        await rig.org.link.refresh_quotas()
        return sum(1 for m, _ in rig.server.calls if m == "ListQuotas")

    rig.org.session.state = CONNECTED
    rig.apply(snapshot(pushed("t1", "Plain")))
    assert asyncio.run(refresh()) == 0  # no metered token: nothing to ask
    rig.apply(snapshot(pushed("t1", "Metered", metered=True)))
    assert asyncio.run(refresh()) == 1 and rig.org.quotas.known() == [QUOTA]
    assert asyncio.run(refresh()) == 1
    rig.clock[1] += 1.0
    assert asyncio.run(refresh()) == 2


# -- relay calls ----------------------------------------------------------------------------------------
def test_a_relay_forward_is_assembled_for_the_server_and_counts_metered_quotas_again(rig):
    rig.org.session.state = CONNECTED
    rig.apply(snapshot(pushed("r1", "Relay", relay=True, metered=True), pushed("r2", "Dwave", provider="dwave",
                                                                                relay=True)))
    relay, dwave = rig.org.state.lookup(name="Relay"), rig.org.state.lookup(name="Dwave")
    call = ForwardCall("luna", "POST", "https://api.aqarios.com/v1/jobs", [("content-type", "application/json")], {},
                       timeout=30.0, region="eu", service="svc")

    async def run():
        await rig.org.link.refresh_quotas()
        reply = await rig.org.relay.relay_forward(relay, call, b'{"qpu_tokens": {}}',
                                                  LunaFill({"dwave": dwave}, Secret(b"own-luna-key")))
        assert b"".join([c async for c in reply.body]) == b"relayed"
        await rig.org.link.refresh_quotas()  # asked again at once: the relayed use was counted there

    asyncio.run(run())
    asked = [what for m, what in rig.server.calls if m == "RelayForward"]
    assert len(asked) == 1
    sent = asked[0]
    assert (sent.call.token_id, sent.call.provider, sent.call.method, sent.call.url, sent.call.region,
            sent.call.service) == ("r1", "luna", "POST", "https://api.aqarios.com/v1/jobs", "eu", "svc")
    assert sent.call.headers == (("content-type", "application/json"),) and sent.timeout_seconds == 30.0
    assert sent.luna_qpu_tokens == {"dwave": "r2"} and sent.luna_api_key.reveal() == b"own-luna-key"
    assert "own-luna-key" not in repr(sent) and "qpu_tokens\": {}" not in repr(sent)  # neither the key nor the body
    assert [m for m, _ in rig.server.calls].count("ListQuotas") == 2


def test_a_relay_body_over_the_limit_is_refused_naming_the_tokens(rig):
    rig.org.session.state = CONNECTED
    rig.apply(snapshot(pushed("r1", "Relay", relay=True)))
    call = ForwardCall("ionq", "POST", "https://api.ionq.co/v0.3/jobs", [], {})
    with pytest.raises(ResourceExhaustedError, match=f"'Relay'.*at most {RELAY_BODY_MAX} bytes"):
        asyncio.run(rig.org.relay.relay_forward(rig.org.state.lookup(name="Relay"), call, b"x" * (RELAY_BODY_MAX + 1)))
    assert not any(m == "RelayForward" for m, _ in rig.server.calls)


def test_a_relay_sign_names_the_token_and_the_body_digest_and_needs_a_login(rig):
    rig.apply(snapshot(pushed("r1", "Braket", provider="aws", relay=True)))
    token = rig.org.state.lookup(name="Braket")
    call = SignCall("aws", "GET", "https://braket.us-east-1.amazonaws.com/devices", [("host", "x")], "e3b0", {},
                    region="us-east-1", service="braket", body_bytes=0)
    with pytest.raises(FailedPreconditionError, match="not logged in"):
        asyncio.run(rig.org.relay.relay_sign(token, call))
    rig.org.session.state = CONNECTED
    headers = asyncio.run(rig.org.relay.relay_sign(token, call))
    assert headers[0][0] == "authorization"
    sent = rig.server.calls[-1][1]
    assert (sent.call.token_id, sent.body_sha256, sent.body_bytes, sent.call.region) == ("r1", "e3b0", 0, "us-east-1")


# -- the sync ------------------------------------------------------------------------------------------
def test_the_sync_connects_on_a_snapshot_and_stops_for_good_when_removed(rig):
    rig.server.secrets = {"t1": (1, b"s")}
    rig.server.streams = [[snapshot(pushed("t1", "A")),
                           UnauthenticatedError("you were removed", mark=REMOVED_MARK)]]
    connected = []

    async def run():
        sync = rig.org.sync.run()
        stream = asyncio.get_running_loop().create_task(sync)
        while rig.org.session.state != CONNECTED:
            await asyncio.sleep(0)
        connected.append(rig.usage_ready.is_set())  # the reporter was woken: what waited goes now
        await stream  # the removal ends it: no reconnect with a dead device

    asyncio.run(asyncio.wait_for(run(), 5))
    assert connected == [True]
    assert rig.org.session.state == REMOVED and "removed from acme" in rig.org.session.detail
    assert len(rig.org.state) == 0 and len(rig.org.secrets) == 0 and not rig.server.has_device


def test_the_sync_moves_to_the_next_server_when_one_stops_answering_and_refuses_another_org(rig):
    rig.org.session.member(rig.server.member)
    rig.org.session.contact()  # within the grace throughout
    other = dataclasses.replace(rig.server.member, org="look-alike")
    rig.server.streams = [[UnavailableError("gone")]]

    async def run():
        task = asyncio.get_running_loop().create_task(rig.org.sync.run())
        while rig.server.current == 0:
            await asyncio.sleep(0)
        rig.server.member = other  # the next server answers for another org
        while "look-alike" not in rig.org.session.detail:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), 5))
    assert rig.org.session.state == DISCONNECTED and rig.org.session.org == "acme"
    assert [at for m, at in rig.server.calls if m == "WhoAmI"][:2] == [0, 1]


# -- the link ------------------------------------------------------------------------------------------
def test_status_says_what_the_link_holds_and_a_lock_drops_it_all(rig):
    rig.server.secrets = {"c1": (1, b"cached")}
    rig.apply(snapshot(pushed("c1", "Cached", metered=True), pushed("r1", "Relay", relay=True)))
    session = rig.org.session
    session.member(rig.server.member)
    session.state = CONNECTED
    session.contact()
    rig.clock[1] += 2.5
    rig.usage.add(("org-a.test:443", "ada"), _use("c1"), ANSWERED)
    s = rig.org.link.status()
    assert (s.state, s.server, s.org, s.user, s.tokens, s.seconds_since_contact, s.grace_seconds, s.usage_waiting) == (
        CONNECTED, "org-a.test:443", "acme", "ada", 2, 2.5, 60.0, 1)
    assert (s.metered_tokens, s.relay_tokens, s.cached_tokens, s.servers) == (
        ["Cached"], ["Relay"], ["Cached"], ["org-a.test:443", "org-b.test:443"])
    rig.org.link.wipe_secrets(Locked())  # at once, on the thread that locked
    assert len(rig.org.secrets) == 0 and len(rig.org.state) == 2
    rig.forgotten.clear()
    rig.org.link.on_event(Locked())  # then on the loop: everything else
    assert session.state == LOCKED and len(rig.org.state) == 0 and not rig.server.has_device
    assert rig.forgotten == ["org:"]
    with pytest.raises(LockedError, match="qpu-broker unlock"):
        rig.org.access.find(name="Cached")
    assert rig.org.access.tokens() == []
