"""Devices, not bearer keys (issue 21): what `user add` prints is an enrollment code that enrolls
one device and reads nothing; the daemon's device key never leaves it; removal of a device or a
user ends access within 2 s, streams included; service devices expire; an org of the release
before keeps working. Real org server, real daemons, members' own gRPC clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time

import grpc
import pytest
from conftest import wait_for
from qpu_broker.orgserver.access_tokens import AccessTokens
from qpu_broker.orgserver.db.schema import SQLITE_MIGRATIONS
from qpu_broker.store.sqlite import open_db
from qpu_broker.wire.org_device import DeviceAccess
from qpu_broker_client import UnauthenticatedError
from qpu_broker_client.error_mapping import ERROR_MARK_KEY
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import make_ca
from testsupport.orgserver import (
    ORG,
    Device,
    OrgServer,
    store_login_of_release_before,
    stored_org_login,
)

ENDED_WITHIN = 2.0  # the contract: a removed device or user loses access within 2 s, streams included


@pytest.fixture
def org(short_tmp):
    server = OrgServer(short_tmp, make_ca(short_tmp / "ca")).start()
    yield server
    server.stop()


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _refused_unthrottled(call) -> grpc.RpcError:
    """The refusal a call gets once its peer's back-off (from failures just before) has passed:
    attempts refused inside a back-off add none."""
    def checked():
        err = _refused(call)
        return None if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else err

    return wait_for(checked, "the back-off to pass", timeout=15)


def _mark(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(ERROR_MARK_KEY, "")


def _every_read(stub, md) -> dict:
    """Every call a member could read or use anything with (one of each)."""
    return {
        "WhoAmI": lambda: stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md),
        "ListTokens": lambda: stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md),
        "FetchSecrets": lambda: stub.FetchSecrets(org_pb2.FetchSecretsRequest(), metadata=md),
        "Watch": lambda: next(stub.Watch(org_pb2.WatchRequest(), metadata=md)),
        "GetToken": lambda: stub.GetToken(org_pb2.GetTokenRequest(name="Org IonQ"), metadata=md),
        "RelayForward": lambda: stub.RelayForward(org_pb2.RelayForwardRequest(token_id="x", provider="ionq",
                                                                              url="https://api.ionq.co/"), metadata=md),
        "ListUsage": lambda: stub.ListUsage(org_pb2.ListUsageRequest(), metadata=md),
        "ListDevices": lambda: stub.ListDevices(org_pb2.ListDevicesRequest(), metadata=md),
    }


def test_the_code_user_add_printed_reads_nothing_before_or_after_it_enrolled_and_enrolls_once(org, make_daemon):
    admin, admin_md = org.client(org.admin_code)
    canary = b"canary-org-secret-" + os.urandom(8).hex().encode()
    admin.CreateToken(org_pb2.CreateTokenRequest(name="Org IonQ", provider="ionq", secret=canary), metadata=admin_md)
    code = org.add_user("bob")
    assert code.startswith("qbe_")
    stub, md = org.stub(code)  # bob's own gRPC client, the code as its bearer: no daemon

    def nothing_read():
        said = []
        for method, call in _every_read(stub, md).items():
            err = _refused(call)
            assert canary.decode() not in err.details()
            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:  # a code sent as a bearer counts as a failure
                assert "too many failed attempts" in err.details(), method
                continue
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED, method
            assert "an enrollment code only enrolls a device: run qpu-broker org login" in err.details(), method
            said.append(method)
        assert said  # the first few are told why; then the peer is throttled

    nothing_read()
    d = make_daemon().start()
    status = d.broker().org_login(org.address, code, ca_pem=org.ca.ca_file.read_bytes())
    assert status.user == "bob" and len(status.device_id) == 16
    nothing_read()  # the code is no credential after it enrolled either
    err = _refused_unthrottled(lambda: org.enroll(code))  # a second enrollment with one code
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "was used already" in err.details()
    assert _mark(err) == "key-revoked"

    def login_again():
        out = d.cli("org", "login", "--server", org.address, "--ca", str(org.ca.ca_file), input=code + "\n")
        return None if "too many failed attempts" in out.stderr else out

    out = wait_for(login_again, "the back-off to pass", timeout=15)
    assert out.returncode == 1 and "was used already" in out.stderr and code not in out.stderr, out.stderr
    assert d.broker().org_status().device_id == status.device_id  # the refused login left the device alone
    # An API key of the release before, as a bearer, is refused the same way (by its form).
    old_style = "qbo_" + code.split("_", 2)[1] + "_" + code.split("_", 2)[2]
    err = _refused_unthrottled(lambda: stub.ListTokens(org_pb2.ListTokensRequest(),
                                                       metadata=[("authorization", f"Bearer {old_style}")]))
    assert "only enrolls a device" in err.details()
    listing = json.loads(org.cli("user", "devices", "bob", "--json").stdout)
    assert [(x["id"], x["name"]) for x in listing] == [(status.device_id, os.uname().nodename[:64])]
    assert code not in org.log() and code.split("_", 2)[2] not in d.log()


def test_a_code_expired_withdrawn_or_of_a_removed_user_is_refused_saying_which(org):
    soon = org.add_user("eve", "member", "--expires-in", "1s")
    made_by = time.time()  # the code was made before this, so it has expired a second after
    wait_for(lambda: time.time() > made_by + 1.05, "eve's code to expire")
    err = _refused(lambda: org.enroll(soon))
    assert "expired on" in err.details() and _mark(err) == "key-revoked"
    first = org.add_user("bob")
    spare = org.code_for("bob")  # a second laptop's code: the first stays good
    org.enroll(spare)
    rotated = org.cli("user", "rotate-key", "bob")
    assert rotated.returncode == 0 and "withdrew every enrollment code and device" in rotated.stderr
    err = _refused(lambda: org.enroll(first))
    assert "was withdrawn" in err.details() and _mark(err) == "key-revoked"
    carol = org.add_user("carol")
    assert org.cli("user", "rm", "carol").returncode == 0
    err = _refused(lambda: org.enroll(carol))
    assert "removed from Acme" in err.details() and _mark(err) == "removed"
    # A wrong secret for a real code id learns nothing: "not valid", whatever that code's state.
    forged = first[:-3] + ("AAA" if not first.endswith("AAA") else "BBB")
    assert "is not valid" in _refused(lambda: org.enroll(forged)).details()
    # Terms a person's code cannot have, and a device that is not there: one line each.
    r = org.cli("user", "add", "dan", "--uses", "3")
    assert r.returncode != 0 and "are for service members" in r.stderr and r.stderr.count("\n") == 1
    r = org.cli("device", "rm", "0123456789abcdef")
    assert r.returncode != 0 and "no device with id" in r.stderr and r.stderr.count("\n") == 1


def test_removing_a_device_or_a_user_ends_access_within_2s_streams_included(member_rig):
    member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                               token_type="organization")
    wait_for(lambda: member_rig.member.broker().org_status().tokens == 1, "the member's daemon to hold it")
    assert member_rig.forward(member_rig.member).status_code == 200
    daemon_device = member_rig.member.broker().org_status().device_id
    other, other_md = member_rig.member_client()  # a second device of bob's, with an open stream
    stream = other.Watch(org_pb2.WatchRequest(), metadata=other_md)
    assert next(stream).kind == org_pb2.WatchEvent.KIND_SNAPSHOT
    ended: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as exc:
            ended.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    admin, admin_md = member_rig.server.admin_client()
    devices = admin.ListDevices(org_pb2.ListDevicesRequest(user="bob"), metadata=admin_md).devices
    assert daemon_device in [x.id for x in devices] and len(devices) == 2
    admin.RemoveDevice(org_pb2.RemoveDeviceRequest(id=daemon_device), metadata=admin_md)
    removed = time.monotonic()
    member = member_rig.member.broker()
    wait_for(lambda: member.org_status().state == "key-revoked", "the daemon's device to be ended", timeout=ENDED_WITHIN)
    assert time.monotonic() - removed <= ENDED_WITHIN
    assert "removed this device" in member.org_status().detail and member.org_status().tokens == 0
    with pytest.raises(UnauthenticatedError, match="removed this device"):
        member_rig.forward(member_rig.member)
    # bob's other device is not touched: its stream goes on and its calls work.
    assert other.WhoAmI(org_pb2.WhoAmIRequest(), metadata=other_md).user == "bob" and not ended
    assert member_rig.server.cli("user", "rm", "bob").returncode == 0
    removed = time.monotonic()
    wait_for(lambda: ended, "bob's other stream to end", timeout=ENDED_WITHIN)
    assert time.monotonic() - removed <= ENDED_WITHIN
    assert ended[0].code() is grpc.StatusCode.UNAUTHENTICATED and _mark(ended[0]) == "removed"
    err = _refused(lambda: other.ListTokens(org_pb2.ListTokensRequest(), metadata=other_md))
    assert "removed from Acme" in err.details()
    # A member cannot list or remove devices, nor make codes.
    code = member_rig.server.add_user("mallory")
    stub, md = member_rig.server.client(code)
    for call in (lambda: stub.ListDevices(org_pb2.ListDevicesRequest(), metadata=md),
                 lambda: stub.RemoveDevice(org_pb2.RemoveDeviceRequest(id=daemon_device), metadata=md),
                 lambda: stub.NewEnrollmentCode(org_pb2.NewEnrollmentCodeRequest(user="mallory"), metadata=md)):
        assert _refused(call).code() is grpc.StatusCode.PERMISSION_DENIED


def test_service_devices_expire_each_on_its_own_streams_included(org, make_daemon):
    r = org.cli("user", "add", "ci", "--role", "service", "--uses", "3", "--device-ttl", "6s", "--json")
    assert r.returncode == 0, r.stderr
    [made] = json.loads(r.stdout)
    assert (made["name"], made["role"]) == ("ci", "service") and made["code"].startswith("qbe_") and made["expires"]
    first = org.enroll(made["code"])
    stub, _ = org.stub("")
    md = [("authorization", f"Bearer {first.access_token(stub)}")]
    assert stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md).role == org_pb2.ROLE_SERVICE
    stream = stub.Watch(org_pb2.WatchRequest(), metadata=md)
    assert next(stream).kind == org_pb2.WatchEvent.KIND_SNAPSHOT
    d = make_daemon().start()
    status = d.broker().org_login(org.address, made["code"], ca_pem=org.ca.ca_file.read_bytes())
    assert status.role == "service" and status.device_expires_us > time.time() * 1e6
    assert "expires 20" in d.cli("org", "status").stdout
    org.enroll(made["code"])
    err = _refused(lambda: org.enroll(made["code"]))  # three devices: the code is used up
    assert "was used already" in err.details()
    expires = json.loads(org.cli("user", "devices", "ci", "--json").stdout)[0]["expires"]
    assert expires != "never"
    # The first device's stream ends at its expiry, without any admin's doing; its token goes with it.
    with pytest.raises(grpc.RpcError) as ended:
        for _ in stream:
            pass
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED and "expired" in ended.value.details()
    assert _mark(ended.value) == "device-removed"
    err = _refused(lambda: stub.DeviceToken(first.token_request()))
    assert "expired" in err.details()
    wait_for(lambda: d.broker().org_status().state == "key-revoked", "the daemon's device to expire too",
             timeout=6 + ENDED_WITHIN)
    assert "expired" in d.broker().org_status().detail


def test_a_device_proves_its_key_within_minutes_and_an_aged_token_is_told_apart(org):
    device = org.enroll(org.admin_code)
    stub, _ = org.stub("")
    now = int(time.time() * 1e6)
    err = _refused(lambda: stub.DeviceToken(device.token_request(now - 600_000_000)))
    assert "clock" in err.details() and "NTP" in err.details()
    signed_by_another = Device(device.id, Device.enroll(stub, org.code_for("alice")).private_key, device.store_id, "")
    assert "not valid" in _refused(lambda: stub.DeviceToken(signed_by_another.token_request())).details()
    other_org = Device(device.id, device.private_key, "another-store", "")  # a signature for another org's store
    assert "not valid" in _refused(lambda: stub.DeviceToken(other_org.token_request())).details()
    # A token this org made that has aged is told apart (the daemon gets a new one and tries again).
    server_key = base64.urlsafe_b64decode((org.data / "server.key").read_bytes().strip())
    aged = AccessTokens(server_key, ("localhost",)).mint(device.id, now - 1, "localhost")
    err = _refused(lambda: stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {aged}")]))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and _mark(err) == "access-expired"
    assert stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {device.first_token}")]).user == "alice"


def test_the_device_key_is_sealed_in_the_daemon_and_no_credential_is_in_a_log_or_file(member_rig):
    member_rig.admin.broker().qpu_token.create(name="Org IonQ", provider="ionq", token=member_rig.secret,
                                               token_type="organization")
    wait_for(lambda: member_rig.member.broker().org_status().tokens == 1, "the member's daemon to hold it")
    assert member_rig.forward(member_rig.member).status_code == 200
    assert member_rig.member.stop() == 0
    login = stored_org_login(member_rig.member)
    key = login.device_key.reveal()
    assert len(key) == 32 and login.legacy_key is None and "secure" in repr(login.device_key)
    forms = [key, base64.b64encode(key), base64.urlsafe_b64encode(key), key.hex().encode()]
    for path in member_rig.member.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(f in data for f in forms), path
            assert member_rig.member_code.encode() not in data, path
    for log in (member_rig.member.log(), member_rig.admin.log(), member_rig.server.log()):
        assert "qbt_" not in log and "qbe_" not in log and base64.b64encode(key).decode() not in log
    member_rig.member.start()
    wait_for(lambda: member_rig.member.broker().org_status().state == "connected", "the device after a restart")
    assert member_rig.forward(member_rig.member).status_code == 200


def test_an_org_and_a_daemon_of_the_release_before_keep_working_or_say_what_to_run(short_tmp, make_daemon):
    """The org server's data of the release before (users with API keys: schema 6), and a daemon
    whose stored login holds such a key: the daemon redeems its key for a device at its first
    connect, and the key leaves its store; a second daemon with the same key is told in one line
    what to run; the key as a bearer reads nothing."""
    import hashlib

    ca = make_ca(short_tmp / "ca")
    org = OrgServer(short_tmp, ca)
    store_file = org.data / "store" / "org.db"
    for suffix in ("", "-wal", "-shm"):
        (store_file.parent / (store_file.name + suffix)).unlink(missing_ok=True)
    old = open_db(store_file, SQLITE_MIGRATIONS[:6], "the org store")
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    key = f"qbo_{os.urandom(8).hex()}_{secret}"
    old.execute("INSERT INTO meta (key, value) VALUES ('org', 'Acme')")
    old.execute("INSERT INTO users (name, role, key_id, key_hash, created_us) VALUES (?, ?, ?, ?, ?)",
                ("bob", "member", key.split("_", 2)[1], hashlib.sha256(secret.encode()).hexdigest(), 1))
    old.close()
    org.start()
    try:
        first, second = make_daemon("first"), make_daemon("second")
        for d in (first, second):
            d.start()
            assert d.stop() == 0
            store_login_of_release_before(d, org.address, ca.ca_file.read_bytes(), key)
        first.start()
        wait_for(lambda: first.broker().org_status().state == "connected", "the old login to become a device")
        status = first.broker().org_status()
        assert status.user == "bob" and len(status.device_id) == 16
        assert first.stop() == 0
        login = stored_org_login(first)
        assert login.legacy_key is None and login.device_id == status.device_id
        assert not any(secret.encode() in p.read_bytes() for p in first.home.rglob("*") if p.is_file())
        first.start()
        wait_for(lambda: first.broker().org_status().state == "connected", "the device after a restart")
        second.start()
        wait_for(lambda: second.broker().org_status().state == "key-revoked", "the second daemon to be told")
        assert second.broker().org_status().detail == ("this login's key no longer works: ask an org admin for an "
                                                       "enrollment code and run qpu-broker org login")
        out = second.cli("org", "status")
        assert out.stdout.startswith("organization: this login's key no longer works"), out.stdout
        stub, md = org.stub(key)
        assert "only enrolls a device" in _refused(lambda: stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md)).details()
        assert secret not in org.log() + first.log() + second.log()
    finally:
        org.stop()


def test_one_access_token_is_shared_and_fetched_again_before_80_percent_of_its_life():
    """In-process: the daemon's DeviceAccess against a stub double, with its clocks injected."""
    from qpu_broker.keys import device_key
    from qpu_broker.tokens.org_login import OrgLogin
    from qpu_broker_client.secret import Secret

    clock = [1000.0]
    asked: list[org_pb2.DeviceTokenRequest] = []

    class Stub:
        async def DeviceToken(self, request, timeout):
            asked.append(request)
            await asyncio.sleep(0)
            reply = org_pb2.DeviceTokenResponse(access_token=f"qbt_{len(asked)}")
            reply.access_expires.FromMicroseconds(int((clock[0] + 100) * 1e6))  # 100 s of life
            return reply

    private = device_key.new_private_key()
    login = OrgLogin(("a:1",), "a:1", b"", "0123456789abcdef", Secret(private), "store-1")
    access = DeviceAccess(login, monotonic=lambda: clock[0], wall=lambda: clock[0])

    async def run():
        stub = Stub()
        first = await asyncio.gather(*(access.metadata(stub, "a:1") for _ in range(10)))
        assert {m[0][1] for m in first} == {"Bearer qbt_1"} and len(asked) == 1  # one DeviceToken for all
        clock[0] += 79
        assert (await access.metadata(stub, "a:1"))[0][1] == "Bearer qbt_1"
        clock[0] += 2  # past 80 % of its life
        assert (await access.metadata(stub, "a:1"))[0][1] == "Bearer qbt_2"
        access.expire()  # a server said it expired: at once a new one
        assert (await access.metadata(stub, "a:1"))[0][1] == "Bearer qbt_3"
        # A server of another name (a failover) never gets the token made for a: one signed for it.
        assert (await access.metadata(stub, "B:2"))[0][1] == "Bearer qbt_4"
        assert (await access.metadata(stub, "b:3"))[0][1] == "Bearer qbt_4"  # the same name, another port

    asyncio.run(run())
    request = asked[0]
    message = device_key.token_request("0123456789abcdef", request.at.ToMicroseconds(), "store-1", "a")
    assert device_key.verifies(device_key.public_key(private), request.signature, message)
    assert ORG  # the org token reference the other org tests use comes from the same harness


def test_a_device_token_request_is_taken_once_for_this_servers_own_names_and_not_in_a_loop(org):
    """What a server of another name (a look-alike in the member's list) could collect is no good
    here: a request signed for its name, or a token made for it; and no signature is taken twice."""
    from qpu_broker.keys import device_key
    from qpu_broker.orgserver.devices import DEVICE_TOKENS_PER_MINUTE

    device = org.enroll(org.admin_code)
    stub, _ = org.stub("")
    request = device.token_request()
    token = stub.DeviceToken(request).access_token
    s, md = org.stub(token)
    assert s.WhoAmI(org_pb2.WhoAmIRequest(), metadata=md).user == "alice"
    err = _refused_unthrottled(lambda: stub.DeviceToken(request))  # the same signature again: a replay
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "used already" in err.details()
    now = int(time.time() * 1e6)
    err = _refused_unthrottled(lambda: stub.DeviceToken(device.token_request(now + 61_000_000)))
    assert "clock" in err.details()
    # Signed for a server of another name: refused, though the signature is the device's own.
    err = _refused_unthrottled(lambda: stub.DeviceToken(device.token_request(audience="127.0.0.2")))
    assert "127.0.0.2" in err.details() and "not a name of this org server" in err.details()
    # A daemon of the release before (no server name in what it signs) is told to upgrade.
    at = int(time.time() * 1e6)
    old = org_pb2.DeviceTokenRequest(device_id=device.id, signature=device_key.sign(
        device.private_key, device_key.token_request_v1(device.id, at, device.store_id)))
    old.at.FromMicroseconds(at)
    err = _refused_unthrottled(lambda: stub.DeviceToken(old))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "upgrade qpu-broker" in err.details()
    # An access token this org's key made for another name is not taken here.
    server_key = base64.urlsafe_b64decode((org.data / "server.key").read_bytes().strip())
    elsewhere = AccessTokens(server_key, ("127.0.0.2",)).mint(device.id, now + 60_000_000, "127.0.0.2")
    err = _refused_unthrottled(lambda: stub.WhoAmI(org_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {elsewhere}")]))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED and "not valid" in err.details()
    # Fresh signatures in a loop: a few a minute, then RESOURCE_EXHAUSTED (each one is a write).
    given = 0
    with pytest.raises(grpc.RpcError) as caught:
        for _ in range(DEVICE_TOKENS_PER_MINUTE + 1):
            stub.DeviceToken(device.token_request())
            given += 1
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "a minute" in caught.value.details()
    assert given < DEVICE_TOKENS_PER_MINUTE
    assert org.log().count(f"access token for device {device.id}") == 1  # one INFO line a minute per device


def test_a_devices_standing_is_kept_a_second_at_most_and_dropped_by_its_users_event(short_tmp, as_local_operator):
    """Calls reuse a device's standing (its row and its user's) for KEPT_SECONDS at most: the
    events that end streams drop it at once (`forget`, from the server's pump, on every replica),
    and without them it is read again after the bound, so removal ends calls within 2 s regardless."""
    from qpu_broker.keys import device_key
    from qpu_broker.orgserver.db import SQLITE
    from qpu_broker.orgserver.devices import Devices
    from qpu_broker.orgserver.kept import KEPT_SECONDS
    from qpu_broker.orgserver.service import OrgService
    from qpu_broker.orgserver.store import OrgStore
    from qpu_broker.orgserver.users import new_users

    assert KEPT_SECONDS <= 1.0  # the 2 s contract leaves the events' path the other second
    store = OrgStore.open(SQLITE, str(short_tmp / "org.db"))
    key, clock = os.urandom(32), [100.0]
    service = OrgService(store, key)
    devices = Devices(store, key, "Acme", service.store_id, lambda: int(time.time() * 1e6), service.record,
                      monotonic=lambda: clock[0])
    made = new_users([("bob", "member"), ("carol", "member")])
    store.add_users([u for u, _, _ in made], [c for _, c, _ in made])
    tokens = {u.name: devices.enroll(code.code, device_key.public_key(device_key.new_private_key()), "laptop")
              for u, _, code in made}
    for name, enrolled in tokens.items():
        assert devices.authenticate(enrolled.access_token).name == name
    # Removed behind its back (another replica, the CLI): within the bound, then refused.
    store.remove_device(tokens["bob"].device.id, int(time.time() * 1e6))
    clock[0] += KEPT_SECONDS / 2
    assert devices.authenticate(tokens["bob"].access_token).name == "bob"
    clock[0] += KEPT_SECONDS / 2
    with pytest.raises(UnauthenticatedError, match="removed this device"):
        devices.authenticate(tokens["bob"].access_token)
    # Its user's event: at once, and only that user's.
    assert devices.authenticate(tokens["carol"].access_token).name == "carol"  # read now, kept
    store.remove_device(tokens["carol"].device.id, int(time.time() * 1e6))
    devices.forget("bob")
    assert devices.authenticate(tokens["carol"].access_token).name == "carol"
    devices.forget("carol")
    with pytest.raises(UnauthenticatedError, match="removed this device"):
        devices.authenticate(tokens["carol"].access_token)
    # The server's own path: a removal pumps its event, which drops the standing before any call reads it.
    again = new_users([("dave", "member")])
    store.add_users([u for u, _, _ in again], [c for _, c, _ in again])
    dave = service.devices.enroll(again[0][2].code, device_key.public_key(device_key.new_private_key()), "laptop")
    assert service.devices.authenticate(dave.access_token).name == "dave"
    service.remove_device(dave.device.id)
    with pytest.raises(UnauthenticatedError, match="removed this device"):
        service.devices.authenticate(dave.access_token)
    store.close()


def test_an_access_token_that_checked_is_kept_and_nothing_else_is():
    """The MAC of a token a device sends with every call is checked once (access_tokens.py keeps
    what checked): a forged token is refused though its genuine twin was kept, and the kept ones
    are bounded."""
    from qpu_broker.orgserver import access_tokens

    tokens = AccessTokens(b"k" * 32, ("localhost", "org.example"))
    genuine = tokens.mint("0123456789abcdef", 10**15, "org.example")
    assert tokens.check(genuine) == tokens.check(genuine) == ("0123456789abcdef", 10**15)
    forged = genuine[:-1] + ("A" if genuine[-1] != "A" else "B")
    other_expiry = genuine.replace(".1000000000000000.", ".1000000000000001.")
    assert tokens.check(forged) is None and tokens.check(other_expiry) is None
    assert AccessTokens(b"j" * 32, ("localhost",)).check(genuine) is None  # another org's key
    for i in range(access_tokens.CHECKED_KEPT + 10):
        assert tokens.check(tokens.mint(f"{i:016x}", 10**15, "localhost"))
    assert len(tokens._checked) == access_tokens.CHECKED_KEPT
    assert tokens.check(genuine) == ("0123456789abcdef", 10**15)  # dropped from what is kept: checked again
