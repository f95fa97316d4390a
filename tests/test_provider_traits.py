"""What the rest of the program asks of a provider (providers.traits): in process, no daemon.

The provider list (qpu_broker_client.providers) and the schemes (qpu_broker.providers) say the same
things; a custom provider has none of the built-ins' quirks; the quirks give what the name branches
they replaced gave (AWS's split form and canonical set, Luna's qpu_tokens shape)."""

from __future__ import annotations

import json

import pytest
from qpu_broker.common.custom_providers import parse_definition
from qpu_broker.providers import (
    BUILT_IN,
    all_schemes,
    normalize_secret,
    provider_of_field,
    traits,
)
from qpu_broker.providers.base import Scheme, SignScheme
from qpu_broker.tokens.kinds import INLINE
from qpu_broker.tokens.resolution import (
    Ref,
    RefResolver,
    luna_qpu_tokens,
    refs_from_luna_body,
)
from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.providers import PRESIGN_PROVIDER, PROVIDERS, SPLIT_FIELDS
from qpu_broker_client.secret import Secret

KEY_ID, SECRET_KEY, SESSION = "AKIAABCDEFGHIJKLMNOP", "secret/key+1", "session-token"


def test_the_schemes_and_the_provider_list_agree():
    assert tuple(cls.provider for cls in BUILT_IN) == PROVIDERS
    assert {cls.provider: cls.split_fields for cls in BUILT_IN if cls.split_fields} == SPLIT_FIELDS
    assert issubclass(traits(PRESIGN_PROVIDER), SignScheme)
    assert all(type(all_schemes()[p]) is traits(p) for p in PROVIDERS)


def test_a_custom_provider_has_no_quirks():
    definition = parse_definition("acme", {"official_hosts": ["api.acme.example"], "auth": "header", "header": "X-Key"}, "test")
    for quirks in (traits("acme"), all_schemes([definition])["acme"]):
        assert quirks.split_fields == () and not quirks.fills_body_tokens and not quirks.meters_qpu_time
        assert quirks.secret_shape("k") is None and quirks.secret_forms("k") == ["k"]
        assert quirks.qpu_access_us(b'{"answer": {"timing": {"qpu_access_time": 5}}}') == 0
        assert not quirks.signature_hands_over(b"k") and quirks.file_secret(b"a:b") == b"a:b"
    assert traits("acme") is Scheme and provider_of_field("acme") == "acme"


def test_each_quirk_is_its_providers_own():
    assert [p for p in PROVIDERS if traits(p).fills_body_tokens] == ["luna"]
    assert [p for p in PROVIDERS if traits(p).meters_qpu_time] == ["dwave"]
    assert traits("dwave").qpu_access_us(b'[{"answer": {"timing": {"qpu_access_time": 5}}}]') == 5
    assert traits("dwave").qpu_answer_max > 0
    assert [provider_of_field(f) for f in SPLIT_FIELDS["aws"]] == ["aws"] * 3


def test_secrets_are_sealed_in_their_providers_shape():
    canonical = normalize_secret("aws", f" {KEY_ID}:{SECRET_KEY} ".encode(), 1024)
    assert json.loads(canonical) == {"access_key_id": KEY_ID, "secret_access_key": SECRET_KEY}
    sign_in = normalize_secret("fujitsu_quantum", b'{"ClientId": "c", "Username": "u", "RefreshToken": "r"}', 1024)
    assert sign_in == b'{"client_id":"c","refresh_token":"r","username":"u"}'
    assert normalize_secret("ibm", b"key ", 1024) == b"key "  # sealed as given
    with pytest.raises(InvalidArgumentError, match="aws credential is ACCESS_KEY_ID:SECRET_ACCESS_KEY") as caught:
        normalize_secret("aws", b"not-a-set", 1024)
    assert "not-a-set" not in str(caught.value)
    with pytest.raises(InvalidArgumentError, match="over the limit of 8"):
        normalize_secret("acme", b"123456789", 8)


def test_an_aws_set_in_parts_forms_and_files():
    aws = traits("aws")
    sealed = normalize_secret("aws", f"{KEY_ID}:{SECRET_KEY}:{SESSION}".encode(), 1024)
    assert aws.split_parts(sealed) == dict(zip(SPLIT_FIELDS["aws"], (KEY_ID, SECRET_KEY, SESSION), strict=True))
    assert aws.secret_forms(sealed.decode()) == [sealed.decode(), SECRET_KEY, SESSION]  # never the key id
    assert aws.signature_hands_over(sealed)
    assert not aws.signature_hands_over(normalize_secret("aws", f"{KEY_ID}:{SECRET_KEY}".encode(), 1024))
    assert aws.file_secret(f"{KEY_ID}:{SECRET_KEY}".encode()) == SECRET_KEY.encode()


def test_split_fields_join_into_one_set_and_luna_nests_them():
    resolver = RefResolver(1024)
    halves = {"aws_access_key": Ref(INLINE, secret=Secret(KEY_ID)), "aws_secret_access_key": Ref(INLINE, secret=Secret(SECRET_KEY))}
    joined = resolver.resolve("aws", halves)
    assert (joined.field, joined.provider) == ("aws", "aws")
    assert json.loads(joined.secret.reveal()) == {"access_key_id": KEY_ID, "secret_access_key": SECRET_KEY}
    with pytest.raises(InvalidArgumentError, match="AWS credentials need both halves: aws_secret_access_key"):
        resolver.resolve("aws", {"aws_access_key": halves["aws_access_key"]})
    luna_key = Ref(INLINE, secret=Secret("luna-key"))
    resolved = resolver.resolve_all({**halves, "ibm": Ref(INLINE, secret=Secret("ibm-key")), "luna": luna_key})
    assert sorted(resolved) == ["aws", "ibm"]  # Luna's own key is no entry of its qpu_tokens
    body = luna_qpu_tokens(resolved)
    assert body == {"aws": {"aws_access_key": {"source": "inline", "token": KEY_ID},
                            "aws_secret_access_key": {"source": "inline", "token": SECRET_KEY},
                            "aws_session_token": {"source": "inline", "token": None}},
                    "ibm": {"source": "inline", "token": "ibm-key"}}
    refs, kept = refs_from_luna_body({"qpu_tokens": {**body, "aws": {**body["aws"], "aws_session_token": {
        "source": "inline", "token": SESSION}}}})
    assert sorted(refs) == ["aws_access_key", "aws_secret_access_key", "aws_session_token", "ibm"] and kept == {}
    refs, kept = refs_from_luna_body({"qpu_tokens": body})  # a part that is no reference: the entry stays as it is
    assert sorted(refs) == ["ibm"] and kept == {"aws": body["aws"]}
