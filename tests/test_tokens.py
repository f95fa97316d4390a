"""Personal tokens end to end: CLI, Python client and raw generated stubs."""

from __future__ import annotations

import json

import grpc
import pytest
from qpu_broker_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QpuToken,
    QpuTokenType,
)
from qpu_broker_client.proto.qpubroker.v1 import tokens_pb2, tokens_pb2_grpc


def test_cli_round_trip(daemon):
    r = daemon.cli("token", "add", "My Personal IBM Token", "--provider", "ibm", "--json", input="ibm-secret-1\n")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["name"] == "My Personal IBM Token" and created["provider"] == "ibm"
    assert created["token_type"] == "personal" and len(created["id"]) == 24

    shown = json.loads(daemon.cli("token", "show", "My Personal IBM Token", "--json").stdout)
    assert shown == created
    by_id = daemon.cli("token", "show", "--id", created["id"])
    assert by_id.stdout.strip() == f"id='{created['id']}' name='My Personal IBM Token' provider='ibm'"

    renamed = json.loads(daemon.cli("token", "rename", "My Personal IBM Token", "Renamed", "--json").stdout)
    assert renamed["id"] == created["id"] and renamed["name"] == "Renamed"
    rotated = daemon.cli("token", "rotate", "Renamed", "--json", input="ibm-secret-2\n")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["id"] == created["id"]

    listed = json.loads(daemon.cli("token", "list", "--json").stdout)
    assert listed == {"personal": [json.loads(rotated.stdout)], "organization": []}
    table = daemon.cli("token", "list").stdout.splitlines()
    assert table[0].split() == ["KIND", "MODE", "NAME", "PROVIDER", "ID", "UPDATED", "EXPIRES"]
    assert table[1].split()[:3] == ["personal", "-", "Renamed"]  # a mode is an org token's

    assert daemon.cli("token", "rm", "Renamed").returncode == 0
    gone = daemon.cli("token", "show", "Renamed")
    assert gone.returncode == 1 and gone.stderr.startswith("qpu-broker: no personal token named 'Renamed'")
    assert len(gone.stderr.strip().splitlines()) == 1
    assert json.loads(daemon.cli("token", "list", "--json").stdout) == {"personal": [], "organization": []}


def test_cli_usage_errors_exit_2(daemon):
    assert daemon.cli("token", "add", "x").returncode == 2  # --provider missing
    assert daemon.cli("token", "show").returncode == 2  # neither name nor --id
    assert daemon.cli("token", "add", "x", "--provider", "no such!").returncode == 2  # no provider's name
    # A name a custom provider could have: the daemon says it is not defined, and how to define it.
    undefined = daemon.cli("token", "add", "x", "--provider", "nosuch", input="secret")
    assert undefined.returncode == 1 and "[providers.custom.nosuch]" in undefined.stderr
    assert daemon.cli("frobnicate").returncode == 2


def test_python_client_tutorial_flow(daemon):
    ls = daemon.broker()
    personal_token = ls.qpu_token.create(name="My Personal IBM Token", provider="ibm", token="<TOKEN>", token_type="personal")
    assert str(personal_token) == f"id='{personal_token.id}' name='My Personal IBM Token' provider='ibm'"
    assert personal_token.token_type is QpuTokenType.PERSONAL
    assert personal_token.created_at is not None and personal_token.created_at == personal_token.updated_at

    got = ls.qpu_token.get(qpu_token_id=personal_token.id)
    assert got == personal_token
    assert ls.qpu_token.get(name="My Personal IBM Token") == personal_token

    all_tokens = ls.qpu_token.get_all()
    assert all_tokens == {QpuTokenType.PERSONAL: [personal_token], QpuTokenType.ORGANIZATION: []}
    assert repr(all_tokens) == (
        "{<QpuTokenTypeEnum.PERSONAL: 'personal'>: "
        f"[QpuToken(id='{personal_token.id}', name='My Personal IBM Token', provider='ibm')], "
        "<QpuTokenTypeEnum.ORGANIZATION: 'organization'>: []}"
    )
    assert all_tokens["personal"] == [personal_token]  # plain strings work as keys too

    renamed_token = ls.qpu_token.update(qpu_token_id=personal_token.id, name="My Updated Personal Token")
    assert str(renamed_token) == f"id='{personal_token.id}' name='My Updated Personal Token' provider='ibm'"
    rotated = ls.qpu_token.update(qpu_token_id=personal_token.id, token="<NEW TOKEN>")
    assert rotated.id == personal_token.id and rotated.updated_at >= renamed_token.updated_at

    ls.qpu_token.delete(qpu_token_id=renamed_token.id)
    with pytest.raises(NotFoundError, match=personal_token.id):
        ls.qpu_token.get(qpu_token_id=personal_token.id)


def test_raw_generated_stubs(daemon):
    with grpc.insecure_channel(f"unix:{daemon.paths.socket}") as channel:
        stub = tokens_pb2_grpc.TokenServiceStub(channel)
        made = stub.CreateToken(tokens_pb2.CreateTokenRequest(
            name="raw", provider="dwave", kind=tokens_pb2.TOKEN_KIND_PERSONAL, secret=b"dw-secret"))
        sel = tokens_pb2.TokenSelector(name="raw", kind=tokens_pb2.TOKEN_KIND_PERSONAL)
        assert stub.GetToken(tokens_pb2.GetTokenRequest(token=sel)).id == made.id
        listed = stub.ListTokens(tokens_pb2.ListTokensRequest(provider="dwave"))
        assert [t.id for t in listed.personal] == [made.id] and listed.personal_total == 1
        assert len(listed.organization) == 0
        updated = stub.UpdateToken(tokens_pb2.UpdateTokenRequest(token=tokens_pb2.TokenSelector(id=made.id), name="raw2"))
        assert updated.name == "raw2" and updated.id == made.id
        stub.DeleteToken(tokens_pb2.DeleteTokenRequest(token=tokens_pb2.TokenSelector(id=made.id)))
        with pytest.raises(grpc.RpcError) as err:
            stub.GetToken(tokens_pb2.GetTokenRequest(token=tokens_pb2.TokenSelector(id=made.id)))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND and made.id in err.value.details()


def test_bad_input_errors(daemon):
    api = daemon.broker().qpu_token
    api.create(name="taken", provider="ibm", token="s1")
    with pytest.raises(AlreadyExistsError, match="'taken'"):
        api.create(name="taken", provider="dwave", token="s2")
    with pytest.raises(InvalidArgumentError, match="ibm, dwave, aws, qctrl, fujitsu, ionq, luna"):
        api.create(name="x", provider="rigetti", token="s")
    with pytest.raises(NotFoundError, match="no personal token named 'nope'"):
        api.get(name="nope")
    with pytest.raises(NotFoundError):
        api.get(qpu_token_id="ffffffffffffffffffffffff")
    for bad_name in ("", "   ", "x" * 129, "tab\there"):
        with pytest.raises(InvalidArgumentError, match="name"):
            api.create(name=bad_name, provider="ibm", token="s")
    with pytest.raises(InvalidArgumentError, match="empty"):
        api.create(name="empty", provider="ibm", token="")
    with pytest.raises(InvalidArgumentError, match="16384"):
        api.create(name="big", provider="ibm", token="a" * (16 * 1024 + 1))
    api.create(name="x" * 128, provider="ibm", token="a" * (16 * 1024))  # both limits are inclusive
    with pytest.raises(InvalidArgumentError, match="line break"):
        api.create(name="nl", provider="ibm", token="abc\ndef")
    with pytest.raises(AlreadyExistsError, match="'taken'"):
        api.update(qpu_token_name="x" * 128, name="taken")
    with pytest.raises(InvalidArgumentError, match="never stored"):
        req = tokens_pb2.CreateTokenRequest(name="i", provider="ibm", kind=tokens_pb2.TOKEN_KIND_INLINE, secret=b"s")
        daemon.broker()._call(lambda s, t: s.tokens.CreateToken(req, timeout=t))
    with pytest.raises(FailedPreconditionError, match="organization server"):
        api.create(name="org", provider="ibm", token="s", token_type="group")
    # Nothing was lost or half-written along the way.
    names = sorted(t.name for t in api.get_all()[QpuTokenType.PERSONAL])
    assert names == ["taken", "x" * 128]


def test_aws_credential_forms(daemon):
    api = daemon.broker().qpu_token
    api.create(name="pair", provider="aws", token="AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG")
    api.create(name="triple", provider="aws", token="ASIAIOSFODNN7EXAMPLE:wJalr/K7MDENG:FwoGZXIvYXdzEJr//////////")
    api.create(name="json", provider="aws", token=json.dumps(
        {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalr", "session_token": "tok"}))
    with pytest.raises(InvalidArgumentError, match="secret access key"):
        api.create(name="half", provider="aws", token="AKIAIOSFODNN7EXAMPLE:")
    with pytest.raises(InvalidArgumentError, match="secret_access_key"):
        api.create(name="half-json", provider="aws", token='{"access_key_id": "AKIAIOSFODNN7EXAMPLE"}')
    with pytest.raises(InvalidArgumentError, match="access key id"):
        api.create(name="half-json2", provider="aws", token='{"secret_access_key": "x"}')
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        api.create(name="extra", provider="aws", token='{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "x", "region": "y"}')
    assert daemon.broker().check().checked == 3


def test_list_filters_and_paging(daemon):
    api = daemon.broker().qpu_token
    made = [api.create(name=f"t{i:02d}", provider="ibm" if i % 2 else "dwave", token=f"s{i}") for i in range(12)]
    assert [t.name for t in api.get_all(filter_provider="ibm")[QpuTokenType.PERSONAL]] == [t.name for t in made if t.provider == "ibm"]
    page = api.get_all(limit=5, offset=3)
    assert [t.id for t in page[QpuTokenType.PERSONAL]] == [t.id for t in made[3:8]]
    assert page[QpuTokenType.ORGANIZATION] == []
    assert api.get_all(token_type="organization") == {QpuTokenType.PERSONAL: [], QpuTokenType.ORGANIZATION: []}
    assert len(api.get_all(token_type="personal")[QpuTokenType.PERSONAL]) == 12


def test_idempotent_create(daemon):
    api = daemon.broker().qpu_token
    first = api.create(name="once", provider="ionq", token="s", request_id="req-1")
    again = api.create(name="once", provider="ionq", token="s", request_id="req-1")
    assert again.id == first.id
    assert len(api.get_all()[QpuTokenType.PERSONAL]) == 1


def test_qpu_token_references():
    ref = QpuToken(source="personal", name="My IBM Token")
    assert repr(ref) == "QpuToken(source='personal', name='My IBM Token')"
    inline = QpuToken(source="inline", token="canary-inline-secret")
    assert "canary" not in repr(inline) and "canary" not in str(inline)
    assert repr(inline) == "QpuToken(source='inline', token=[secure])"
    assert QpuToken(source="group", name="org").source is QpuTokenType.ORGANIZATION
    with pytest.raises(InvalidArgumentError):
        QpuToken(source="personal", token="s")
    with pytest.raises(InvalidArgumentError, match="unknown token type"):
        QpuToken(source="shared", name="x")


def test_get_all_pages_past_the_server_page(daemon):
    api = daemon.broker().qpu_token
    made = [api.create(name=f"n{i:04d}", provider="ibm", token="s").id for i in range(1005)]
    assert [t.id for t in api.get_all()[QpuTokenType.PERSONAL]] == made
    assert [t.id for t in api.get_all(limit=10, offset=998)[QpuTokenType.PERSONAL]] == made[998:1005]
    assert daemon.broker().status().personal_tokens == 1005


def test_token_provider_checks_aws_halves():
    from qpu_broker_client import TokenProvider

    ok = TokenProvider(ibm=QpuToken("personal", name="i"), aws_access_key=QpuToken("inline", token="AKIA"),
                       aws_secret_access_key=QpuToken("inline", token="canary-aws-secret"))
    assert ok.ibm.name == "i" and ok.dwave is None
    assert "canary" not in repr(ok) and "token=[secure]" in repr(ok)
    with pytest.raises(InvalidArgumentError, match="aws_secret_access_key is missing"):
        TokenProvider(aws_access_key=QpuToken("inline", token="AKIA"))
    with pytest.raises(InvalidArgumentError, match="aws_access_key is missing"):
        TokenProvider(aws_secret_access_key=QpuToken("inline", token="s"))
    with pytest.raises(InvalidArgumentError, match="unknown TokenProvider field"):
        TokenProvider(rigetti=QpuToken("personal", name="x"))


def test_a_request_id_names_one_create_only(daemon):
    api = daemon.broker().qpu_token
    first = api.create(name="A", provider="dwave", token="s", request_id="same-id")
    assert api.create(name="A", provider="dwave", token="s", request_id="same-id").id == first.id  # a retry
    with pytest.raises(AlreadyExistsError, match="request_id"):
        api.create(name="B", provider="ibm", token="t", request_id="same-id")  # not another token's answer


def test_totals_follow_creates_and_deletes_even_when_they_race(daemon):
    """The total a list reports is kept and moved by each write, not recounted: it must stay
    exact with writes and lists interleaved."""
    import concurrent.futures

    from qpu_broker_client.proto.qpubroker.v1 import tokens_pb2

    b = daemon.broker()
    api = b.qpu_token

    def total(provider: str = "") -> int:
        req = tokens_pb2.ListTokensRequest(provider=provider, kind=tokens_pb2.TOKEN_KIND_PERSONAL, limit=1)
        return b._call(lambda s, t: s.tokens.ListTokens(req, timeout=t)).personal_total

    assert total() == 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: api.create(f"t{i}", "ibm" if i % 2 else "dwave", f"s{i}"), range(40)))
        lists = [pool.submit(total) for _ in range(40)]
        assert all(0 <= f.result() <= 40 for f in lists)
    assert (total(), total("ibm"), total("dwave")) == (40, 20, 20)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: api.delete(qpu_token_id=t.id), made[:10]))
        [pool.submit(total, p) for p in ("", "ibm", "dwave")]
    assert (total(), total("ibm"), total("dwave")) == (30, 15, 15)
