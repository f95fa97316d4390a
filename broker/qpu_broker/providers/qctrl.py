"""Q-CTRL: API key -> JWT through the GraphQL `accessToken(apiKey:)` exchange.

Lifetime is read from the JWT's `exp`; the cache refreshes at ~80 % of it,
which is always earlier than Q-CTRL's own "within 60 s of exp" rule for tokens
living five minutes or more.
"""

import base64
import json
import time

from qpu_broker_client.errors import UnauthenticatedError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.providers.base import Exchanged, ExchangeScheme

QUERY = "mutation accessToken($apiKey: String!) { accessToken(apiKey: $apiKey) { accessToken } }"


def jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class QCtrl(ExchangeScheme):
    provider = "qctrl"
    hosts = ("federation-service.q-ctrl.com", "id.q-ctrl.com")
    default_token_url = "https://federation-service.q-ctrl.com/graphql"

    async def exchange(self, secret, post, token_url):
        status, doc = await post(token_url, None, {"query": QUERY, "variables": {"apiKey": secret.reveal().decode()}})
        data = (doc.get("data") or {}).get("accessToken") or {}
        token = data.get("accessToken") if isinstance(data, dict) else None
        if status in (401, 403) or (status == 200 and doc.get("errors") and not token):
            raise UnauthenticatedError(f"Q-CTRL refused the API key ({status}): check or rotate the qctrl token")
        exp = jwt_expiry(token) if isinstance(token, str) else None
        if status != 200 or exp is None:
            raise UnavailableError(f"Q-CTRL at {token_url} gave no usable access token (HTTP {status})")
        return Exchanged(Secret(token), max(0.0, exp - time.time()))
