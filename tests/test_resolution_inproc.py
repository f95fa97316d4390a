"""Which token a call uses, in process: the daemon's resolver over its vault (testsupport/inproc.py).

Personal tokens by name or id, inline secrets (what the client makes of a LUNA_* variable), AWS's
split fields joined into one set, a Luna body's references, and the hot cache dropped on a change.
"""

from __future__ import annotations

import pytest
from qpu_broker.providers import normalize_secret
from qpu_broker.tokens.kinds import INLINE, PERSONAL
from qpu_broker.tokens.resolution import Ref, luna_qpu_tokens, refs_from_luna_body
from qpu_broker_client import (
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
)

from testsupport.inproc import inline, personal

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_a_personal_token_by_name_or_id_is_its_secret_and_names_itself(inproc):
    record = inproc.create("mine", "ionq", "ionq-secret")
    by_name = inproc.resolver.resolve("ionq", {"ionq": personal("mine")})
    by_id = inproc.resolver.resolve("ionq", {"ionq": Ref(PERSONAL, id=record.id)})
    for r in (by_name, by_id):
        assert (r.kind, r.id, r.name, r.secret.reveal()) == (PERSONAL, record.id, "mine", b"ionq-secret")
        assert "ionq-secret" not in repr(r)
    assert inproc.resolver.preview("ionq", {"ionq": personal("mine")}) == ("ionq", PERSONAL, record.id, "mine")
    with pytest.raises(InvalidArgumentError, match="'mine' is a ionq token; dwave needs a dwave token"):
        inproc.resolver.resolve("dwave", {"dwave": personal("mine")})
    with pytest.raises(NotFoundError):
        inproc.resolver.resolve("ionq", {"ionq": personal("nobody")})


def test_no_token_names_the_luna_variable_to_set_and_an_inline_one_is_never_stored(inproc):
    with pytest.raises(FailedPreconditionError, match="LUNA_FUJITSU_TOKEN"):
        inproc.resolver.resolve("fujitsu", {})
    r = inproc.resolver.resolve("fujitsu", {"fujitsu": inline("from-the-environment")})
    assert (r.kind, r.id, r.secret.reveal()) == (INLINE, "", b"from-the-environment")
    assert "from-the-environment" not in r.cache_key  # cached by a keyed hash, never by value
    assert inproc.vault.personal.count() == 0
    with pytest.raises(InvalidArgumentError, match="inline token for fujitsu is empty"):
        inproc.resolver.resolve("fujitsu", {"fujitsu": inline("")})


def test_aws_split_fields_are_joined_into_one_set(inproc):
    whole = normalize_secret("aws", f"{KEY_ID}:{SECRET}".encode(), inproc.config.secret_max_bytes)  # AWS's one form
    r = inproc.resolver.resolve("aws", {"aws_access_key": inline(KEY_ID), "aws_secret_access_key": inline(SECRET)})
    assert (r.field, r.kind, r.secret.reveal()) == ("aws", INLINE, whole)
    with pytest.raises(InvalidArgumentError, match="aws_secret_access_key is missing"):
        inproc.resolver.resolve("aws", {"aws_access_key": inline(KEY_ID)})
    inproc.create("keys", "aws", f"{KEY_ID}:{SECRET}")
    with pytest.raises(InvalidArgumentError, match="whole credential set: pass it as aws="):
        inproc.resolver.resolve("aws", {"aws_access_key": personal("keys"), "aws_secret_access_key": inline(SECRET)})
    assert inproc.resolver.resolve("aws", {"aws": personal("keys")}).secret.reveal() == whole


def test_a_luna_bodys_references_resolve_and_go_back_in_lunas_shape(inproc):
    inproc.create("my-dwave", "dwave", "dwave-secret")
    doc = {"qpu_tokens": {"dwave": {"source": "personal", "name": "my-dwave"},
                          "aws": {"aws_access_key": {"source": "inline", "token": KEY_ID},
                                  "aws_secret_access_key": {"source": "inline", "token": SECRET}},
                          "qctrl": None}}
    refs, kept = refs_from_luna_body(doc)
    assert kept == {"qctrl": None} and set(refs) == {"dwave", "aws_access_key", "aws_secret_access_key"}
    out = luna_qpu_tokens(inproc.resolver.resolve_all(refs))
    assert out["dwave"] == {"source": "inline", "token": "dwave-secret"}
    assert out["aws"] == {"aws_access_key": {"source": "inline", "token": KEY_ID},
                          "aws_secret_access_key": {"source": "inline", "token": SECRET},
                          "aws_session_token": {"source": "inline", "token": None}}


def test_a_hot_token_is_read_again_after_a_rotation_and_not_at_all_when_locked(inproc):
    record = inproc.create("hot", "ionq", "first")
    refs = {"ionq": personal("hot")}
    assert inproc.resolver.resolve("ionq", refs).secret.reveal() == b"first"  # opened, and kept hot
    inproc.run(inproc.vault.personal.update(record, name=None, secret=b"second"))
    assert inproc.resolver.resolve("ionq", refs).secret.reveal() == b"second"
    inproc.vault.agent.lock()
    with pytest.raises(LockedError):
        inproc.resolver.resolve("ionq", refs)
