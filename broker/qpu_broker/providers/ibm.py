"""IBM Quantum (cloud): API key -> IAM access token -> `Authorization: Bearer`.

The caller adds `Service-CRN` itself (it is not secret). Exchanges are cached
by the wrapper in qpu_broker.providers.exchange_cache, per token, to ~80 % of their life.
"""

import re

from qpu_broker_client.errors import UnauthenticatedError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.providers.base import Exchanged, ExchangeScheme


class Ibm(ExchangeScheme):
    provider = "ibm"
    hosts = ("iam.cloud.ibm.com", "quantum.cloud.ibm.com")
    host_patterns = (re.compile(r"[a-z0-9-]{1,63}\.quantum\.cloud\.ibm\.com"),)
    default_token_url = "https://iam.cloud.ibm.com/identity/token"

    async def exchange(self, secret, post, token_url):
        status, doc = await post(token_url, {
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
            "apikey": secret.reveal().decode(),
        }, None)
        if status in (400, 401, 403):
            raise UnauthenticatedError(f"IBM IAM refused the API key ({status}): check or rotate the ibm token")
        access, lifetime = doc.get("access_token"), doc.get("expires_in")
        if status != 200 or not isinstance(access, str) or not isinstance(lifetime, (int, float)):
            raise UnavailableError(f"IBM IAM at {token_url} gave no usable access token (HTTP {status})")
        return Exchanged(Secret(access), float(lifetime))
