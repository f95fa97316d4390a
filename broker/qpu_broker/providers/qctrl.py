"""Q-CTRL: API key -> JWT through the GraphQL query `accessToken(apiKey:)`, at the API itself.

What qctrl-client 17.3 (under fire-opal and boulder-opal) does: qctrlclient/auth/api_key.py
posts that query to the API URL (qctrlclient/defaults.py: QCTRL_API_URL, by default
https://federation-service.q-ctrl.com, its root) and reads `accessToken.accessToken`, or the
`accessToken.errors` a refused key gets. Lifetime is read from the JWT's `exp`; the cache
refreshes at ~80 % of it, always earlier than the SDK's own "within 60 s of exp" rule for
tokens living five minutes or more.
"""

import base64
import json
import time
from types import MappingProxyType

from qpu_broker_client.errors import UnauthenticatedError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.providers.base import Exchanged, ExchangeScheme
from qpu_broker.providers.standin import standin_jwt

QUERY = ("query($apiKey: String!) { accessToken(apiKey: $apiKey) { accessToken errors { fields message } } }")
STANDIN_SECONDS = 900  # the SDK trades its key again within 60 s of exp, through the session


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
    default_token_url = "https://federation-service.q-ctrl.com"
    # Exec sessions: a loopback endpoint, since qctrl-client takes its API's whole URL from
    # QCTRL_API_URL (and fire-opal/boulder-opal trade QCTRL_API_KEY there). The placeholder is
    # also the URL's first path segment: qctrl-client fetches the GraphQL schema before every
    # call with no credential at all (gql's introspection), and the URL is the one thing
    # every request it sends carries.
    session_env = MappingProxyType({"QCTRL_API_URL": "{url}/{credential}", "QCTRL_API_KEY": "{credential}"})

    async def exchange(self, secret, post, token_url):
        status, doc = await post(token_url, None, {"query": QUERY, "variables": {"apiKey": secret.reveal().decode()}})
        data = (doc.get("data") or {}).get("accessToken") or {}
        token = data.get("accessToken") if isinstance(data, dict) else None
        refused = isinstance(data, dict) and bool(data.get("errors"))
        if status in (401, 403) or (status == 200 and (doc.get("errors") or refused) and not token):
            raise UnauthenticatedError(f"Q-CTRL refused the API key ({status}): check or rotate the qctrl token")
        exp = jwt_expiry(token) if isinstance(token, str) else None
        if status != 200 or exp is None:
            raise UnavailableError(f"Q-CTRL at {token_url} gave no usable access token (HTTP {status})")
        return Exchanged(Secret(token), max(0.0, exp - time.time()))

    def exchange_key(self, form, headers=MappingProxyType({})):
        """A GraphQL request with an `apiKey` variable is the SDK's key exchange (the only call
        that takes one): answered by the session, never sent on."""
        variables = form.get("variables")
        if not isinstance(variables, dict) or "apiKey" not in variables:
            return None
        key = variables["apiKey"]
        return key if isinstance(key, str) else ""

    def exchange_refused(self):
        # As the API reports a wrong key: in the payload's errors, which qctrl-client raises as
        # GraphQLQueryError and fire-opal as "Invalid API key".
        return {"data": {"accessToken": {"accessToken": None, "errors": [
            {"fields": ["apiKey"], "message": "Invalid API key (qpu-broker session)"}]}}}, 200

    def standin(self):
        bearer, _ = standin_jwt(STANDIN_SECONDS)
        return bearer, float(STANDIN_SECONDS), {"data": {"accessToken": {"accessToken": bearer, "errors": []}}}
