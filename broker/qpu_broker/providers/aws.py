"""AWS Braket: SigV4 signatures; the secret key never leaves the daemon."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from types import MappingProxyType

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.providers import sigv4
from qpu_broker.providers.base import Outbound, Scheme

REGIONS = ("us-east-1", "us-west-1", "us-west-2", "eu-west-2", "eu-north-1")
REGION = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-\d")
_SERVICE_REGION = re.compile(rf"(?:[a-z0-9-]+\.)?(?P<service>[a-z0-9-]+)\.(?P<region>{REGION.pattern})\.amazonaws\.com")


def region_and_service(host: str, region: str, service: str) -> tuple[str, str]:
    """The scope to sign for. An AWS host names its own service and region, and a caller
    may not ask for another: a signature scoped to iam or s3 on a braket host would let
    a credential meant for Braket sign for any AWS service."""
    m = _SERVICE_REGION.fullmatch(host)
    if m is None:
        if region and service:  # a host the credential's owner added (a loopback fake, a proxy)
            return region, service
        raise InvalidArgumentError(
            f"cannot tell the AWS region and service from the host {host}: give region and service")
    if (region and region != m["region"]) or (service and service != m["service"]):
        raise InvalidArgumentError(
            f"{host} is the AWS service {m['service']} in {m['region']}: a signature for "
            f"{service or m['service']} in {region or m['region']} is refused there")
    return m["region"], m["service"]


class Aws(Scheme):
    provider = "aws"
    hosts = tuple(f"braket.{r}.amazonaws.com" for r in REGIONS)
    signs = True
    # botocore 1.4x: AWS_ENDPOINT_URL_BRAKET beats every configured endpoint (configprovider.py);
    # amazon-braket-sdk's AwsSession uses BRAKET_ENDPOINT over it. The credential variables come
    # first in botocore's chain unless a profile is named, so a named profile is unset, and so is a
    # session token of the caller's that would ride along with the placeholders.
    session_env = MappingProxyType({"AWS_ENDPOINT_URL_BRAKET": "{url}", "BRAKET_ENDPOINT": "{url}",
                                    "AWS_ACCESS_KEY_ID": "{key_id}", "AWS_SECRET_ACCESS_KEY": "{credential}"})
    session_unset = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                     "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")

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

    def sign(self, secret, outbound: Outbound, region: str = "", service: str = "",
             token_key: str = "") -> list[tuple[str, str]]:
        region, service = region_and_service(outbound.url.host, region, service)
        # The host signed is the URL's, never a Host header the caller chose.
        headers = [(k, v) for k, v in outbound.headers if k.lower() != "host"]
        now = self._clock()
        date = now.astimezone(datetime.UTC).strftime("%Y%m%d")
        access_key, session_token, signing_key = self._signing(secret, token_key, date, region, service)
        return sigv4.sign(outbound.method, outbound.url, headers, outbound.body_sha256, access_key=access_key, signing_key=signing_key,
                          session_token=session_token, region=region, service=service, now=now)
