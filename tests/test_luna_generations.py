"""Code written for luna-quantum 1.x keeps working with Broker() in its place: its calls, its
enums, and its own TokenProvider / QpuToken objects (the real package, against the real daemon).
The tutorial's 0.x form is tested in test_tokens.py."""

from __future__ import annotations

import json

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
