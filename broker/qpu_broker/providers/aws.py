"""AWS Braket: SigV4 signatures; the secret key never leaves the daemon."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from types import MappingProxyType

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError
from qpu_broker_client.providers import SPLIT_FIELDS

from qpu_broker.common.reach import Owner
from qpu_broker.common.url import Url
from qpu_broker.providers import sigv4
from qpu_broker.providers.base import Outbound, SignScheme

SERVICE = "braket"  # what an aws credential is for here: its official hosts are Braket's
REGIONS = ("us-east-1", "us-west-1", "us-west-2", "eu-west-2", "eu-north-1")
REGION = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-\d")
_SERVICE_REGION = re.compile(rf"(?:[a-z0-9-]+\.)?(?P<service>[a-z0-9-]+)\.(?P<region>{REGION.pattern})\.amazonaws\.com")
_SCOPE_PART = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a line of the string to sign holds it: no '/', no break
# Query-auth parameters that are never a header: one sent as a header is a presigned URL's part misplaced.
_QUERY_AUTH_ONLY = frozenset(n.lower() for n in sigv4.QUERY_AUTH) - sigv4.HEADER_AUTH
_EXPIRES_DIGITS = re.compile(r"[0-9]{1,10}")
_AWS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_AWS_FIELDS = ("access_key_id", "secret_access_key", "session_token")  # the canonical JSON's keys


def region_and_service(host: str, region: str, service: str, owner: Owner = Owner.CONFIG) -> tuple[str, str]:
    """The scope to sign for. An AWS host names its own service and region, and a caller
    may not ask for another: a signature scoped to iam or s3 on a braket host would let
    a credential meant for Braket sign for any AWS service.

    A host that names neither (one the credential's owner added: a proxy, a VPC endpoint, a
    loopback fake) takes the caller's scope for a personal or inline token, whose owner added it;
    for an org token it takes Braket only, in a Braket region, and in the region the host names
    if it names one: the org allowed that host for Braket, not a member to sign IAM or STS calls
    with the org's key."""
    m = _SERVICE_REGION.fullmatch(host)
    if m is not None:
        if (region and region != m["region"]) or (service and service != m["service"]):
            raise InvalidArgumentError(
                f"{host} is the AWS service {m['service']} in {m['region']}: a signature for "
                f"{service or m['service']} in {region or m['region']} is refused there")
        return m["region"], m["service"]
    for value, what in ((region, "region"), (service, "service")):
        if value and not _SCOPE_PART.fullmatch(value):
            raise InvalidArgumentError(f"{value[:64]!r} is not an AWS {what} name (like us-east-1, braket)")
    if owner is Owner.ORG:
        named = {label for label in host.split(".") if REGION.fullmatch(label)}
        if not region and len(named) == 1:
            region = next(iter(named))
        service = service or SERVICE
        if service != SERVICE or (region and region not in REGIONS) or (named and named != {region}):
            where = (f"in {' or '.join(sorted(named))}, the region {host} names" if named
                     else f"in a Braket region ({', '.join(REGIONS)})")
            raise PermissionDeniedError(
                f"an organization token signs for {host} only as {SERVICE} {where}, not {service} in "
                f"{region or 'no region'}: ask an org admin to do this with the org's own account")
    if not (region and service):
        raise InvalidArgumentError(
            f"cannot tell the AWS region and service from the host {host}: give region and service")
    return region, service


def canonical_set(text: str) -> bytes:
    """An AWS credential set, as ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or its JSON, as
    canonical JSON (the form sealed, signed with and relayed)."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise InvalidArgumentError("the aws credential looks like JSON but does not parse") from None
        if not isinstance(doc, dict):
            raise InvalidArgumentError("the aws credential JSON must be an object")
        unknown = sorted(set(doc) - set(_AWS_FIELDS))
        if unknown:
            raise InvalidArgumentError(
                f"the aws credential JSON has unknown key(s) {', '.join(unknown)}: use {', '.join(_AWS_FIELDS)}"
            )
        parts = [doc.get(f) for f in _AWS_FIELDS]
        if any(p is not None and not isinstance(p, str) for p in parts):
            raise InvalidArgumentError("the aws credential JSON values must be strings")
    else:
        split = text.split(":")
        if len(split) not in (2, 3):
            raise InvalidArgumentError(
                "an aws credential is ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] "
                'or {"access_key_id": ..., "secret_access_key": ..., "session_token": ...}'
            )
        parts = split + [None] * (3 - len(split))
    key_id, secret_key, session = (p.strip() if p else None for p in parts)
    if not key_id:
        raise InvalidArgumentError("the aws credential is missing its access key id (access_key_id)")
    if not secret_key:
        raise InvalidArgumentError("the aws credential is missing its secret access key (secret_access_key)")
    if not _AWS_KEY_ID.fullmatch(key_id):
        raise InvalidArgumentError("the aws access key id must be 16 to 128 upper-case letters and digits (like AKIA...)")
    doc = {"access_key_id": key_id, "secret_access_key": secret_key}
    if session:
        doc["session_token"] = session
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class Aws(SignScheme):
    provider = "aws"
    hosts = tuple(f"{SERVICE}.{r}.amazonaws.com" for r in REGIONS)
    # botocore 1.4x: AWS_ENDPOINT_URL_BRAKET beats every configured endpoint (configprovider.py);
    # amazon-braket-sdk's AwsSession uses BRAKET_ENDPOINT over it. AWS_ENDPOINT_URL_S3 brings its
    # task results (aws_session.py, retrieve_s3_object_body) and AWS_ENDPOINT_URL every other service
    # to the session too, so the placeholder never goes to a real AWS host; the session refuses what
    # it does not serve, with a message. The credential variables come first in botocore's chain
    # unless a profile is named, so a named profile is unset, and so is a session token of the
    # caller's that would ride along with the placeholders.
    session_env = MappingProxyType({"AWS_ENDPOINT_URL_BRAKET": "{url}", "BRAKET_ENDPOINT": "{url}",
                                    "AWS_ENDPOINT_URL_S3": "{url}", "AWS_ENDPOINT_URL": "{url}",
                                    "AWS_ACCESS_KEY_ID": "{key_id}", "AWS_SECRET_ACCESS_KEY": "{credential}"})
    session_unset = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                     "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    # The tutorial's split form (aws_access_key=, aws_secret_access_key=[, aws_session_token=]), joined
    # with ':' into the colon form canonical_set reads.
    split_fields = SPLIT_FIELDS[provider]
    split_required = split_fields[:2]
    secret_shape = staticmethod(canonical_set)

    @staticmethod
    def split_parts(secret: bytes) -> dict[str, str | None]:
        creds = json.loads(secret)
        return dict(zip(SPLIT_FIELDS["aws"], (creds.get(k) or None for k in _AWS_FIELDS), strict=True))

    @staticmethod
    def secret_forms(text: str) -> list[str]:
        # The access key id is no secret: an answer may name it.
        doc = json.loads(text)
        return [text, *(doc[k] for k in ("secret_access_key", "session_token") if doc.get(k))]

    @staticmethod
    def signature_hands_over(secret: bytes) -> bool:
        return bool(json.loads(secret).get("session_token"))  # sent as X-Amz-Security-Token by the caller

    @staticmethod
    def file_secret(value: bytes) -> bytes:
        return value.split(b":")[1]  # KEY_ID:SECRET[:SESSION]: the key id is no secret

    def __init__(self, clock: Callable[[], datetime.datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        # (token key, date, region, service) -> (key id, session token, signing key): the
        # HMAC chain and JSON parse run once a day per token, not per request.
        self._keys: dict[tuple[str, str, str, str], tuple[str, str | None, bytes]] = {}

    def forget(self) -> None:
        """Drop every derived signing key (they are per token, date, region and service)."""
        self._keys.clear()

    def _signing(self, secret, token_key: str, date: str, region: str, service: str):
        key = (token_key, date, region, service)
        hit = self._keys.get(key)
        if hit is None:
            creds = json.loads(secret.reveal())
            if len(self._keys) > 4096:
                self._keys.clear()
            hit = self._keys[key] = (creds["access_key_id"], creds.get("session_token"),
                                     sigv4.derive_signing_key(creds["secret_access_key"], date, region, service))
        return hit

    def scope(self, host: str, region: str, service: str, owner: Owner) -> tuple[str, str]:
        return region_and_service(host, region, service, owner)

    def presign_seconds(self, url: Url, headers: list[tuple[str, str]]) -> int | None:
        """X-Amz-Expires of a presigned URL's query, or None; refused: a query-auth parameter as a
        header, or in a query under a spelling AWS reads otherwise than a gateway may (case, encoding),
        twice, or without a lifetime in plain digits."""
        for name, _ in headers:
            if name.lower() in _QUERY_AUTH_ONLY:
                raise InvalidArgumentError(f"{name} is a presigned URL's query parameter, not a header: leave it out "
                                           "(the daemon signs the request in its headers)")
        found = sigv4.query_auth(url.query)
        if not found:
            return None
        for written, name, _ in found:
            if written != name:
                raise InvalidArgumentError(f"the URL's query has {written[:64]!r}, which a server may read as {name}: "
                                           f"spell it {name}, or leave it out")
        names = [name for _, name, _ in found]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"the URL's query repeats {next(n for n in names if names.count(n) > 1)}")
        lifetime = next((value for _, name, value in found if name == sigv4.EXPIRES), "")
        if not _EXPIRES_DIGITS.fullmatch(lifetime):
            raise InvalidArgumentError(f"the URL's query holds query authentication ({', '.join(names)}) without "
                                       f"{sigv4.EXPIRES}=SECONDS: state how long the presigned URL lasts")
        return int(lifetime)

    def sign(self, secret, outbound: Outbound, region: str, service: str, token_key: str = "") -> list[tuple[str, str]]:
        # The host signed is the URL's, never a Host header the caller chose.
        headers = [(k, v) for k, v in outbound.headers if k.lower() != "host"]
        timestamp = sigv4.amz_date(self._clock())
        access_key, session_token, signing_key = self._signing(secret, token_key, timestamp[:8], region, service)
        return sigv4.sign(outbound.method, outbound.url, headers, outbound.body_sha256, access_key=access_key, signing_key=signing_key,
                          session_token=session_token, region=region, service=service, now=timestamp)
