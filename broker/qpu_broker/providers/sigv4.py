"""AWS Signature Version 4, as botocore's SigV4Auth computes it (stdlib only).

Tests check it against botocore on randomized requests and against the AWS
documentation's worked example. Sign only once the final URL is fixed: the
host is always signed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from urllib.parse import quote

from qpu_broker.common.url import Url

ALGORITHM = "AWS4-HMAC-SHA256"
# Headers botocore never signs: they change in transit or carry no meaning.
UNSIGNED = frozenset({
    "authorization", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, and AWS wants consecutive slashes collapsed as well.
    if not path:
        return "/"
    out: list[str] = []
    for seg in path.split("/"):
        if seg and seg != ".":
            if seg == "..":
                if out:
                    out.pop()
            else:
                out.append(seg)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode(), "sha256")


def derive_signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The HMAC chain AWS4+secret -> date -> region -> service -> aws4_request."""
    k = _hmac(f"AWS4{secret_key}".encode(), date)
    return _hmac(_hmac(_hmac(k, region), service), "aws4_request")



def sign(method: str, url: Url, headers: list[tuple[str, str]], body_sha256: str, *, access_key: str,
         session_token: str | None, region: str, service: str, now: datetime.datetime,
         secret_key: str | None = None, signing_key: bytes | None = None,
         content_sha256_header: bool = True) -> list[tuple[str, str]]:
    """The headers to add: X-Amz-Date, X-Amz-Content-Sha256, [X-Amz-Security-Token], Authorization.

    Give `secret_key`, or the day's `signing_key` derived from it (see
    `derive_signing_key`). `content_sha256_header=False` leaves out X-Amz-Content-Sha256,
    as botocore's plain SigV4Auth and the AWS test suite do; services accept both.
    """
    timestamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    added = [("X-Amz-Date", timestamp)]
    if content_sha256_header:
        added.append(("X-Amz-Content-Sha256", body_sha256))
    if session_token:
        added.append(("X-Amz-Security-Token", session_token))
    replaced = {name.lower() for name, _ in added} | {"authorization"}
    signed: dict[str, list[str]] = {}
    for name, value in [*((n, v) for n, v in headers if n.lower() not in replaced), *added]:
        lname = name.lower()
        if lname not in UNSIGNED:
            signed.setdefault(lname, []).append(value)
    signed.setdefault("host", [url.host_header])
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{','.join(' '.join(v.split()) for v in signed[n])}\n" for n in names)
    signed_headers = ";".join(names)
    canonical_request = "\n".join([
        method.upper(), quote(_remove_dot_segments(url.path), safe="/~"), canonical_query(url.query),
        canonical_headers, signed_headers, body_sha256,
    ])
    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    if signing_key is None:
        signing_key = derive_signing_key(secret_key or "", timestamp[:8], region, service)
    signature = _hmac(signing_key, string_to_sign).hex()
    added.append(("Authorization", (f"{ALGORITHM} Credential={access_key}/{scope}, "
                                   f"SignedHeaders={signed_headers}, Signature={signature}")))
    return added
