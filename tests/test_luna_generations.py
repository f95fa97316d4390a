"""Code written for luna-quantum 1.x keeps working with Broker() in its place: its calls, its
enums, and its own TokenProvider / QpuToken objects (the real package, against the real daemon).
The tutorial's 0.x form is tested in test_tokens.py."""

from __future__ import annotations

import datetime
import json

import pytest
from luna_quantum.client.schemas.enums.qpu_token_type import (
    QpuTokenTypeEnum as LunaTypeEnum,
)
from luna_quantum.client.schemas.qpu_token.qpu_token import QpuToken as LunaQpuToken
from luna_quantum.client.schemas.qpu_token.qpu_token import QpuTokenSource as LunaSource
from luna_quantum.client.schemas.qpu_token.qpu_token import (
    TokenProvider as LunaTokenProvider,
)
from luna_quantum.client.schemas.qpu_token.token_provider import RestAPITokenProvider
from qpu_broker_client import (
    QpuToken,
    QpuTokenSource,
    QpuTokenType,
    QpuTokenTypeEnum,
    Secret,
    TokenProvider,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from testsupport.fakes import Reply, json_reply


def test_luna_1x_token_calls_by_name_with_its_enums(daemon):
    tokens = daemon.broker().qpu_token
    created = tokens.create("My IBM", "ibm", "ibm-secret-1x", QpuTokenTypeEnum.PERSONAL)
    # The first positional argument of get and delete is a name; qpu_token_id= selects by id.
    assert tokens.get("My IBM").id == created.id
    assert tokens.get("My IBM", QpuTokenTypeEnum.PERSONAL) == tokens.get(qpu_token_id=created.id)
    dumped = tokens.get("My IBM").model_dump()
    assert dumped["name"] == "My IBM" and dumped["provider"] == "ibm" and dumped["token_type"] is QpuTokenType.PERSONAL
    assert "ibm-secret-1x" not in repr(dumped)
    renamed = tokens.rename("My IBM", "Our IBM", QpuTokenTypeEnum.PERSONAL)
    assert renamed.id == created.id and renamed.name == "Our IBM"
    every = tokens.get_all()
    # GROUP is ORGANIZATION under every spelling, ours and luna-quantum's.
    assert QpuTokenTypeEnum.GROUP is QpuTokenTypeEnum.ORGANIZATION is QpuTokenSource.GROUP
    for key in (QpuTokenTypeEnum.GROUP, "group", "organization", LunaTypeEnum.GROUP):
        assert every[key] == [] and key in every
    for key in (QpuTokenTypeEnum.PERSONAL, "personal", LunaTypeEnum.PERSONAL):
        assert [t.name for t in every[key]] == ["Our IBM"]
    assert repr(QpuTokenTypeEnum.GROUP) == "<QpuTokenTypeEnum.ORGANIZATION: 'organization'>"
    tokens.delete("Our IBM", QpuTokenTypeEnum.PERSONAL)
    assert tokens.get_all()[LunaTypeEnum.PERSONAL] == []


def test_luna_quantums_own_token_objects_are_accepted_wherever_ours_are(rig):
    d, hw, canary = rig
    b = d.broker()
    theirs = LunaTokenProvider(dwave=LunaQpuToken(source=LunaSource.PERSONAL, name="my-dwave"))
    assert b.forward("GET", hw.url("dwave"), provider="dwave", qpu_tokens=theirs).status_code == 200
    # Their QpuToken inside our TokenProvider, inline and stored (group reads as organization).
    inline = LunaQpuToken(source=LunaSource.INLINE, token=hw.secrets["ionq"])
    ours = TokenProvider(ionq=inline)
    assert b.forward("GET", hw.url("ionq"), provider="ionq", qpu_tokens=ours).status_code == 200
    assert QpuToken.coerce(LunaQpuToken(source=LunaSource.GROUP, name="shared")).source is QpuTokenType.ORGANIZATION
    dumped = ours.model_dump()["ionq"]
    assert isinstance(dumped["token"], Secret) and canary not in repr(ours.model_dump())
    # Their split AWS form.
    key_id, secret = hw.secrets["aws"].split(":")
    aws = LunaTokenProvider(aws_access_key=LunaQpuToken(source=LunaSource.INLINE, token=key_id),
                            aws_secret_access_key=LunaQpuToken(source=LunaSource.INLINE, token=secret))
    r = b.forward("POST", hw.url("aws", "/quantum-task"), provider="aws", body=b"{}", qpu_tokens=aws,
                  region="us-east-1", service="braket")
    assert r.status_code == 200, r.content


def test_the_luna_hop_sends_what_luna_quantums_wire_model_accepts(rig):
    d, hw, _ = rig
    key_id, secret = hw.secrets["aws"].split(":")
    received: list[dict] = []

    def luna(seen) -> Reply:
        doc = json.loads(seen.body)
        received.append(doc["qpu_tokens"])
        RestAPITokenProvider.model_validate(doc["qpu_tokens"])  # extra="forbid": a wrong shape raises
        return json_reply({"ok": True})

    hw.servers["luna"].handler = luna
    # The body as luna-quantum 1.x builds it from its own TokenProvider: AWS nested, group as organization.
    sdk_tokens = LunaTokenProvider(
        dwave=LunaQpuToken(source=LunaSource.PERSONAL, name="my-dwave"),
        aws_access_key=LunaQpuToken(source=LunaSource.INLINE, token=key_id),
        aws_secret_access_key=LunaQpuToken(source=LunaSource.INLINE, token=secret),
        aws_session_token=LunaQpuToken(source=LunaSource.INLINE, token="session-token"))
    body = {"model_id": "m1", "solver_name": "SA", "provider": "dwave", "parameters": {},
            "qpu_tokens": RestAPITokenProvider.from_sdk_token_provider(sdk_tokens).model_dump(mode="json")}
    r = d.broker().forward("POST", hw.url("luna", "/v1/solve-jobs"), provider="luna",
                           body=json.dumps(body).encode(),
                           qpu_tokens=TokenProvider(luna=QpuToken("personal", name="my-luna"),
                                                    ibm=QpuToken("personal", name="my-ibm")))
    assert r.status_code == 200, r.content
    sent = received[-1]
    assert sent["dwave"] == {"source": "inline", "token": hw.secrets["dwave"]}  # the SDK's reference, resolved
    assert sent["ibm"] == {"source": "inline", "token": hw.secrets["ibm"]}  # the caller's field
    assert sent["aws"] == {"aws_access_key": {"source": "inline", "token": key_id},
                           "aws_secret_access_key": {"source": "inline", "token": secret},
                           "aws_session_token": {"source": "inline", "token": "session-token"}}
    assert sent["qctrl"] is None  # the SDK's own null, kept


def test_luna_13_time_quota_calls_are_the_orgs_quotas(member_rig):
    """luna-quantum 1.3's eight time-quota calls on `qpu_token`, with its argument names, answered
    from the org server's QPU-time quotas; set and delete are for org admins."""
    from luna_quantum.client.schemas.qpu_token.qpu_token_time_quota import (
        QpuTokenTimeQuotaOut,
    )
    from qpu_broker_client import (
        AlreadyExistsError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
    )

    from testsupport.orgserver import reserve_tries

    admin, member = member_rig.admin.broker().qpu_token, member_rig.member.broker().qpu_token
    admin.create("Org D-Wave", "dwave", "dwave-org-secret", QpuTokenTypeEnum.GROUP)
    admin.create("Org IBM", "ibm", "ibm-org-secret", QpuTokenTypeEnum.GROUP)
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    # Luna's unit is nanoseconds of QPU access time; the org counts µs (the CLI shows them).
    admin.create_group_time_quota("Org D-Wave", 2_000_000_000, start=start, end=end)
    got = admin.get_group_time_quota(qpu_token_name="Org D-Wave")
    assert (got.quota, got.start, got.end, got.quota_used) == (2_000_000_000, start, end, 0)
    assert QpuTokenTimeQuotaOut.model_validate(got.model_dump()).quota == 2_000_000_000  # luna-quantum's own object
    listed = member_rig.server.cli("quota", "list").stdout
    assert "everyone's D-Wave QPU time (µs) on organization token 'Org D-Wave', 2000000 per 30d" in listed
    admin.update_group_time_quota("Org D-Wave", quota=3_000_000_000)  # what is None stays
    got = member.get_group_time_quota("Org D-Wave")  # members read the quotas that bind them
    assert (got.quota, got.start, got.end) == (3_000_000_000, start, end)
    with pytest.raises(AlreadyExistsError, match="already has a qpu-us quota"):
        admin.create_group_time_quota("Org D-Wave", 1)
    with pytest.raises(InvalidArgumentError, match="'Org IBM' is a ibm token: time quotas count D-Wave"):
        admin.create_group_time_quota("Org IBM", 1)
    with pytest.raises(InvalidArgumentError, match="start must be before its end"):
        admin.update_group_time_quota("Org D-Wave", end=start)

    # One member's own: zero QPU time, from now; the org refuses bob's next use, not alice's.
    admin.create_user_time_quota("Org D-Wave", "bob", quota=0)
    mine = member.get_user_time_quota("Org D-Wave", user_email="bob")
    assert mine.quota == 0 and mine.end - mine.start == datetime.timedelta(days=365)  # Luna's default span
    token_id = next(t.id for t in _org_tokens(member_rig) if t.name == "Org D-Wave")
    assert reserve_tries(member_rig.server, member_rig.server.code_for("bob"), token_id, 1) == 0

    # A member: the permission error, saying who may.
    for call in (lambda: member.create_group_time_quota("Org D-Wave", 5),
                 lambda: member.update_user_time_quota("Org D-Wave", "bob", quota=10**12),
                 lambda: member.delete_group_time_quota("Org D-Wave")):
        with pytest.raises(PermissionDeniedError, match="is for org admins, and 'bob' is a member: ask an org admin"):
            call()
    with pytest.raises(PermissionDeniedError, match="members see their own quotas only"):
        member.get_user_time_quota("Org D-Wave", "alice")
    assert member.get_user_time_quota("Org D-Wave", "bob").quota == 0  # unchanged

    admin.delete_user_time_quota("Org D-Wave", "bob")
    admin.delete_group_time_quota("Org D-Wave")
    assert admin.get_group_time_quota("Org D-Wave") is None and admin.get_user_time_quota("Org D-Wave", "bob") is None
    with pytest.raises(NotFoundError, match="no qpu-us quota on everyone's use of organization token 'Org D-Wave'"):
        admin.delete_group_time_quota("Org D-Wave")
    audit = member_rig.server.cli("audit", "--action", "quota").stdout
    assert audit.count("alice") >= 5 and "quota.rm" in audit


def test_a_luna_time_quota_refuses_its_token_outside_start_and_end(member_rig):
    """As in Luna: before a time quota's `start` and after its `end` the token it binds cannot be
    used (a cached D-Wave token: the member's daemon asks the server, which refuses), until an admin
    sets a new policy; no new window begins at `end`."""
    from conftest import wait_for
    from qpu_broker_client import ResourceExhaustedError

    from testsupport.fakes import FakeServer

    dwave = FakeServer(lambda seen: json_reply({"id": "p1", "status": "COMPLETED"}), member_rig.ca)
    try:
        r = member_rig.server.cli("provider", "set", "dwave", "--host", dwave.netloc, "--ca-file",
                                  str(member_rig.ca.ca_file))
        assert r.returncode == 0, r.stderr
        admin, member = member_rig.admin.broker(), member_rig.member.broker()
        admin.qpu_token.create("Org D-Wave", "dwave", "dwave-org-secret", QpuTokenTypeEnum.GROUP, cached=True)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        admin.qpu_token.create_group_time_quota("Org D-Wave", 10**12, start=now + datetime.timedelta(hours=1))
        wait_for(lambda: "Org D-Wave" in member.org_status().metered_tokens, "the member's daemon to see the quota")

        def use():
            return member.forward("GET", dwave.url("/sapi/v2/problems/p1"), provider="dwave",
                                  qpu_tokens=TokenProvider(dwave=QpuToken("organization", name="Org D-Wave")))

        with pytest.raises(ResourceExhaustedError, match=r"^quota #1 is not valid before .*: everyone's D-Wave QPU time "
                           r"\(µs\) on organization token 'Org D-Wave', 1000000000 per 365d, valid from .* until .*; "
                           r"the uses it counts are refused outside that span: ask an org admin for a new policy$"):
            use()
        admin.qpu_token.update_group_time_quota("Org D-Wave", start=now - datetime.timedelta(hours=2))
        assert use().status_code == 200  # inside start..end
        admin.qpu_token.update_group_time_quota("Org D-Wave", end=now - datetime.timedelta(hours=1))
        with pytest.raises(ResourceExhaustedError, match=r"^quota #1 ended at .*: ask an org admin for a new policy$"):
            use()
        got = member.qpu_token.get_group_time_quota("Org D-Wave")  # the span, not a window after it
        assert (got.start, got.end) == (now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1))
        listed = member_rig.server.cli("quota", "list").stdout
        assert f"valid from {_iso(got.start)} until {_iso(got.end)}: 0 used, 1000000000 left, ends {_iso(got.end)}" \
            in listed
        admin.qpu_token.update_group_time_quota("Org D-Wave", end=now + datetime.timedelta(days=1))  # a new policy
        assert use().status_code == 200
    finally:
        dwave.close()


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _org_tokens(member_rig):
    stub, md = member_rig.server.admin_client()
    return stub.ListTokens(org_pb2.ListTokensRequest(), metadata=md).tokens
