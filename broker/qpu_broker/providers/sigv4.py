"""AWS Signature Version 4, as botocore's SigV4Auth computes it (stdlib only).

Tests check it against botocore on randomized requests and against the AWS
documentation's worked example. Sign only once the final URL is fixed: the
host is always signed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import re
import unicodedata
from urllib.parse import quote, unquote_plus

from qpu_broker.common.url import Url

ALGORITHM = "AWS4-HMAC-SHA256"
# AWS refuses a signed request whose X-Amz-Date is further than this from its own clock
# (RequestTimeTooSkewed): a machine clock that far off breaks every SigV4 request.
AWS_CLOCK_SKEW = datetime.timedelta(minutes=15)
# Headers botocore never signs: they change in transit or carry no meaning.
UNSIGNED = frozenset({
    "authorization", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})
# What `sign` puts in headers itself (a caller's own are dropped first).
HEADER_AUTH = frozenset({"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"})
# Query authentication (a presigned URL), its parameters as AWS spells them. The signature of a
# request whose query holds them is also the X-Amz-Signature of a URL that anyone may use until
# X-Amz-Expires runs out (up to 7 days), with no Authorization header at all.
QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
              "X-Amz-Signature", "X-Amz-Security-Token")
EXPIRES = "X-Amz-Expires"
_QUERY_AUTH_FOLDED = {name.casefold(): name for name in QUERY_AUTH}


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


def _folded(name: str) -> str:
    """A query parameter's name as the most lenient server would read it: percent-decoded (twice:
    a hop may decode once more), '+' as space, NFKC-normalised, trimmed, case-folded."""
    for _ in range(2):
        name = unquote_plus(name)
    return unicodedata.normalize("NFKC", name).strip().casefold()


def query_auth(query: str) -> list[tuple[str, str, str]]:
    """The query-authentication parameters in a raw query, as (name as written, AWS's name, raw value).

    Strict on purpose: AWS reads these names case-sensitively, but a gateway in front of it may
    fold case, decode or split on ';' too, so every spelling any of them might read counts."""
    if not query:
        return []
    found = []
    for pair in re.split("[&;]", query):
        written, _, value = pair.partition("=")
        name = _QUERY_AUTH_FOLDED.get(_folded(written))
        if name is not None:
            found.append((written, name, value))
    return found


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



def amz_date(now: datetime.datetime) -> str:
    """X-Amz-Date's form of `now` (its first 8 characters are the scope's date)."""
    return now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def sign(method: str, url: Url, headers: list[tuple[str, str]], body_sha256: str, *, access_key: str,
         session_token: str | None, region: str, service: str, now: datetime.datetime | str,
         secret_key: str | None = None, signing_key: bytes | None = None,
         content_sha256_header: bool = True) -> list[tuple[str, str]]:
    """The headers to add: X-Amz-Date, X-Amz-Content-Sha256, [X-Amz-Security-Token], Authorization.

    Give `secret_key`, or the day's `signing_key` derived from it (see
    `derive_signing_key`). `now` is a time, or its `amz_date` already made. `content_sha256_header=False`
    leaves out X-Amz-Content-Sha256, as botocore's plain SigV4Auth and the AWS test suite do; services
    accept both.
    """
    timestamp = now if isinstance(now, str) else amz_date(now)
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
    # S3 signs its path as sent; every other service its dot segments resolved and encoded once more.
    path = url.path if service == "s3" else quote(_remove_dot_segments(url.path), safe="/~")
    canonical_request = "\n".join([
        method.upper(), path, canonical_query(url.query),
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


@dataclasses.dataclass(frozen=True)
class Verified:
    region: str
    service: str


def verify(method: str, url: Url, headers: list[tuple[str, str]], body_sha256: str, *, access_key: str,
           secret_key: str, now: datetime.datetime, skew: datetime.timedelta) -> Verified | None:
    """The scope of a request that `secret_key` signed, as botocore signs (plain SigV4, the
    body hashed), within `skew` of `now`; None for anything else: another key, another body,
    an altered header, a stale or missing date, a presigned or unsigned-payload request."""
    given = {k.lower(): v for k, v in reversed(headers)}  # first occurrence wins, as for a single value
    auth = given.get("authorization", "")
    if not auth.startswith(ALGORITHM + " "):
        return None
    try:
        fields = dict(part.strip().split("=", 1) for part in auth[len(ALGORITHM) + 1:].split(","))
        key_id, date, region, service, terminator = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        timestamp = datetime.datetime.strptime(given["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except (KeyError, ValueError):
        return None
    if (terminator != "aws4_request" or date != timestamp.strftime("%Y%m%d") or "x-amz-date" not in signed
            or abs(now - timestamp) > skew or not hmac.compare_digest(key_id.encode(), access_key.encode())):
        return None
    hashed = "x-amz-content-sha256" in signed
    if hashed and given.get("x-amz-content-sha256") != body_sha256:
        return None
    own = {"x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"}
    kept = [(k, v) for k, v in headers if k.lower() in signed and k.lower() not in own]
    token = given.get("x-amz-security-token") if "x-amz-security-token" in signed else None
    expected = sign(method, url, kept, body_sha256, access_key=access_key, session_token=token, region=region,
                    service=service, now=timestamp, secret_key=secret_key, content_sha256_header=hashed)[-1][1]
    return Verified(region, service) if hmac.compare_digest(expected.encode(), auth.encode()) else None
