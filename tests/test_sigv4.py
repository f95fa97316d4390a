"""Our SigV4 against botocore's SigV4Auth, and against AWS's published examples."""

from __future__ import annotations

import datetime
import hashlib
import random
import string
from unittest import mock
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from qpu_broker.common.reach import Owner
from qpu_broker.common.url import parse_url
from qpu_broker.forward.request_syntax import (
    check_body_sha256,
    check_headers,
    http_method,
)
from qpu_broker.providers import sigv4
from qpu_broker.providers.aws import REGIONS, Aws, region_and_service
from qpu_broker_client import InvalidArgumentError, PermissionDeniedError

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
EXAMPLE_TIME = datetime.datetime(2015, 8, 30, 12, 36, 0, tzinfo=datetime.UTC)


def _ours(method, url, headers, body, token, region, service, now, sha_header=True):
    added = sigv4.sign(method, parse_url(url, "the URL"), headers, hashlib.sha256(body).hexdigest(), access_key=KEY_ID, secret_key=SECRET,
                       session_token=token, region=region, service=service, now=now, content_sha256_header=sha_header)
    return dict(added)


def _botocore(method, url, headers, body, token, region, service, now):
    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        SigV4Auth(Credentials(KEY_ID, SECRET, token), service, region).add_auth(req)
    return req.headers["Authorization"]


def test_aws_documentation_examples():
    # "get-vanilla" from the AWS SigV4 test suite, and the IAM ListUsers worked example.
    got = _ours("GET", "https://example.amazonaws.com/", [], b"", None, "us-east-1", "service", EXAMPLE_TIME, False)
    assert got["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    got = _ours("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
                [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")], b"", None,
                "us-east-1", "iam", EXAMPLE_TIME, False)
    assert got["Authorization"].endswith(
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")
    assert got["X-Amz-Date"] == "20150830T123600Z"


def test_s3_signs_its_path_as_sent_like_botocore_s3_signer():
    """S3 neither resolves dot segments nor encodes the path again: a key like `a/../b` or `a%3Ab`
    signed the Braket way would be refused by S3 (and by a session verifying the SDK's signature)."""
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    for path in ("/bucket/tasks/x/results.json", "/bucket/a/../b", "/bucket/a%3Ab//c", "/bucket/%E2%82%AC"):
        url = f"https://bucket.s3.us-east-1.amazonaws.com{path}"
        req = AWSRequest(method="GET", url=url, headers={}, data=b"")
        with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
            S3SigV4Auth(Credentials(KEY_ID, SECRET, None), "s3", "us-east-1").add_auth(req)
        ours = sigv4.sign("GET", parse_url(url, "the URL", verbatim=True), [], hashlib.sha256(b"").hexdigest(),
                          access_key=KEY_ID, secret_key=SECRET, session_token=None, region="us-east-1", service="s3",
                          now=now)
        assert dict(ours)["Authorization"] == req.headers["Authorization"], path


def _random_segment(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + " -_.~äöü€量子"
    return quote("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))), safe="")


def test_equal_to_botocore_on_random_requests():
    rng = random.Random(20261125)
    for case in range(400):
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
        path = "/" + "/".join(_random_segment(rng) for _ in range(rng.randint(0, 4)))
        if rng.random() < 0.2:
            path += "/"
        keys = [rng.choice(["a", "b", "max", "next", "x y", "ü"]) for _ in range(rng.randint(0, 5))]
        query = "&".join(f"{quote(k, safe='')}={quote(_random_segment(rng), safe='%')}" for k in keys)  # repeated keys too
        host = rng.choice(["braket.us-east-1.amazonaws.com", "braket.eu-west-2.amazonaws.com:8443", "127.0.0.1:9000"])
        url = f"https://{host}{path}" + (f"?{query}" if query else "")
        body = rng.choice([b"", b"{}", b'{"shots": 100, "device": "arn:aws:braket"}', bytes(rng.randbytes(50))])
        headers = [("Content-Type", "application/json")] if body else []
        if rng.random() < 0.5:
            headers.append(("X-Custom", "  spaced   out value  "))
        if rng.random() < 0.3:
            headers.append(("User-Agent", "never-signed/1.0"))
        token = rng.choice([None, "FwoGZXIvYXdzEJr//////////session" + str(case)])
        now = EXAMPLE_TIME + datetime.timedelta(seconds=rng.randint(0, 10**8))
        ours = _ours(method, url, headers, body, token, "us-east-1", "braket", now)
        sent = parse_url(url, "the URL").text  # what the forwarder sends: botocore signs that
        expected = _botocore(method, sent, headers + [("X-Amz-Content-SHA256", hashlib.sha256(body).hexdigest())],
                             body, token, "us-east-1", "braket", now)
        assert ours["Authorization"] == expected, (case, method, url, headers)
        if token:
            assert ours["X-Amz-Security-Token"] == token


def test_region_and_service_from_the_host():
    assert region_and_service("braket.us-west-2.amazonaws.com", "", "") == ("us-west-2", "braket")
    assert region_and_service("amzn-braket-x.s3.eu-north-1.amazonaws.com", "", "") == ("eu-north-1", "s3")
    assert region_and_service("127.0.0.1", "us-east-1", "braket") == ("us-east-1", "braket")
    with pytest.raises(InvalidArgumentError, match="give region and service"):
        region_and_service("127.0.0.1", "", "")


def test_verify_takes_botocore_signatures_and_nothing_altered():
    """What an exec session checks: a request botocore signed with the key verifies; any change
    to it, another key, or a stale date does not."""
    rng = random.Random(20261126)
    skew = datetime.timedelta(minutes=5)
    for case in range(200):
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        path = "/" + "/".join(_random_segment(rng) for _ in range(rng.randint(0, 4)))
        url = f"http://127.0.0.1:{rng.randint(1024, 65535)}{path}" + rng.choice(["", "?a=1&b=x%2Fy"])
        body = rng.choice([b"", b"{}", bytes(rng.randbytes(40))])
        token = rng.choice([None, f"session{case}"])
        now = EXAMPLE_TIME + datetime.timedelta(seconds=rng.randint(0, 10**8))
        req = AWSRequest(method=method, url=url, headers={"Content-Type": "application/json"}, data=body)
        with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
            SigV4Auth(Credentials(KEY_ID, SECRET, token), "braket", "eu-west-2").add_auth(req)
        headers = [("Host", url.split("/")[2]), *req.headers.items()]
        sha = hashlib.sha256(body).hexdigest()

        def check(headers=headers, sha=sha, url=url, secret=SECRET, at=now, method=method):
            return sigv4.verify(method, parse_url(url, "u", verbatim=True), headers, sha, access_key=KEY_ID,
                                secret_key=secret, now=at, skew=skew)

        assert check() == sigv4.Verified("eu-west-2", "braket"), case
        assert check(at=now + skew) is not None and check(at=now + skew + datetime.timedelta(seconds=1)) is None
        assert check(secret=SECRET + "x") is None
        assert check(sha=hashlib.sha256(body + b"x").hexdigest()) is None
        assert check(method="PATCH") is None
        base = url.split("/", 3)
        assert check(url="/".join([*base[:3], "x" + base[3]])) is None  # another path
        assert check(headers=[(k, "127.0.0.2:80" if k == "Host" else v) for k, v in headers]) is None
        assert check(headers=[(k, v + "x" if k == "Content-Type" else v) for k, v in headers]) is None
        assert check(headers=[(k, v) for k, v in headers if k != "Authorization"]) is None


def _presign_seconds(query: str, headers=()) -> int | None:
    return Aws().presign_seconds(parse_url(f"https://braket.us-east-1.amazonaws.com/tasks?{query}", "u", verbatim=True),
                                 list(headers))


def test_query_authentication_is_found_however_a_server_might_read_it():
    assert _presign_seconds("") is None and _presign_seconds("maxResults=10&next=X-Amz-Expires") is None
    whole = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20260101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
    assert _presign_seconds(whole) == 300
    # Any spelling AWS itself would not read, but a lenient gateway might: refused, whatever the token.
    for query in ("x-amz-expires=300", "X-AMZ-SIGNATURE=ab", "X-Amz-%45xpires=300", "X-Amz-%2545xpires=300",
                  "X%2DAmz%2DCredential=k", "+X-Amz-Date=1", "X-Amz-%C5%BFignature=ab", "X-Amz-%EF%BC%A5xpires=1",
                  "a=1;x-amz-signedheaders=host", "X-Amz-Expires=300&X-Amz-Expires=1", "X-Amz-Expires=300&x-amz-expires=9",
                  "X-Amz-Signature=ab", "X-Amz-Security-Token=t", "X-Amz-Expires=%33", "X-Amz-Expires=-1",
                  "X-Amz-Expires=99999999999"):
        with pytest.raises(InvalidArgumentError):
            _presign_seconds(query)
    # Nor do its parts go as headers, where a lenient gateway might read them too.
    for name in ("X-Amz-Signature", "x-amz-credential", "X-Amz-Expires", "X-Amz-Algorithm", "X-Amz-SignedHeaders"):
        with pytest.raises(InvalidArgumentError, match="not a header"):
            _presign_seconds("", [(name, "x")])
    assert _presign_seconds("", [("X-Amz-Date", "x"), ("X-Amz-Security-Token", "t")]) is None  # replaced by Sign


def test_an_org_token_signs_braket_in_the_hosts_region_only():
    org = Owner.ORG
    # A host the org added that names no service: Braket only, in a Braket region.
    assert region_and_service("127.0.0.1", "us-west-2", "", org) == ("us-west-2", "braket")
    assert region_and_service("braket-proxy.corp.example", "eu-north-1", "braket", org) == ("eu-north-1", "braket")
    for region, service in (("us-east-1", "iam"), ("us-east-1", "sts"), ("us-east-1", "s3"), ("ap-south-1", "braket"),
                            ("cn-north-1", "braket")):
        with pytest.raises(PermissionDeniedError, match="organization token"):
            region_and_service("braket-proxy.corp.example", region, service, org)
        assert region_and_service("braket-proxy.corp.example", region, service) == (region, service)  # a personal one's
    # A host that names a region (a VPC endpoint) signs for that region.
    vpce = "vpce-0a1b-2c3d.braket.eu-west-2.vpce.amazonaws.com"
    assert region_and_service(vpce, "", "", org) == ("eu-west-2", "braket")
    with pytest.raises(PermissionDeniedError, match="eu-west-2"):
        region_and_service(vpce, "us-east-1", "braket", org)
    # An AWS host names its own service, for anyone: a results bucket the org allowed is S3's.
    assert region_and_service("amzn-braket-x.s3.us-east-1.amazonaws.com", "", "", org) == ("us-east-1", "s3")
    with pytest.raises(InvalidArgumentError, match="give region"):
        region_and_service("braket-proxy.corp.example", "", "braket", org)
    # A scope part is a line of the string to sign: nothing else fits in it.
    for bad in ("us-east-1/iam", "us-east-1\nX", "US-EAST-1", ""):
        with pytest.raises(InvalidArgumentError):
            region_and_service("127.0.0.1", bad or "x" * 64, "braket")
    assert set(REGIONS) >= {"us-east-1", "eu-west-2"}


def test_methods_headers_and_digests_are_http_syntax():
    assert http_method("get") == "GET" and http_method("PROPFIND") == "PROPFIND" and http_method("M-SEARCH") == "M-SEARCH"
    for bad in ("", "G ET", "GET\n/other", "GET\r", "PO\u017fT", "GET:", "(GET)", "G" * 33, "ＧＥＴ"):
        with pytest.raises(InvalidArgumentError, match="not an HTTP method"):
            http_method(bad)
    check_headers([("Content-Type", "application/json; charset=\"utf-8\""), ("X-Tab", "a\tb")])
    for bad in ([("Bad Name", "v")], [("X:Y", "v")], [("X", "a\r\nHost: evil")], [("X", "a\x00")], [("", "v")]):
        with pytest.raises(InvalidArgumentError):
            check_headers(bad)
    check_body_sha256(hashlib.sha256(b"").hexdigest())
    for bad in ("UNSIGNED-PAYLOAD", hashlib.sha256(b"").hexdigest().upper(), "0" * 63, "0" * 64 + "\n"):
        with pytest.raises(InvalidArgumentError):
            check_body_sha256(bad)
