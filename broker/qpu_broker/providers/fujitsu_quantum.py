"""Fujitsu Quantum Cloud (fujitsu-quantum): a Cognito refresh token -> access token -> Bearer.

What fujitsu-quantum 2.4.0 does (docs/sdks/fujitsu.md): `fujitsu-quantum login` signs in to an Amazon
Cognito user pool and keeps ClientId, Username, RefreshToken (and DeviceKey) in
$FUJITSU_QUANTUM_HOME/credentials.json (auth.py:41-120); API calls carry `authorization: Bearer
ACCESS_TOKEN` (auth.py:127); on a 401 the SDK trades the refresh token at Cognito's InitiateAuth
(REFRESH_TOKEN_AUTH, USERNAME, a SECRET_HASH it derives from username and client id, DEVICE_KEY)
through boto3's cognito-idp client in ap-northeast-1 (auth.py:136-192), an unsigned AWS JSON 1.1
call. The daemon makes that same call with the stored refresh token; the cache (exchange_cache)
keeps the access token to ~80 % of its ExpiresIn.

An exec session (a loopback endpoint, the placeholder as its URL's first segment, as Q-CTRL's) gives
the SDK a private FUJITSU_QUANTUM_HOME: config.json's apiBase at the session, credentials.json with
a stand-in access token and the placeholder as refresh token; and AWS_ENDPOINT_URL_COGNITO_IDENTITY_
PROVIDER (botocore's variable for the service id "Cognito Identity Provider", configprovider.py:1039)
at the session too, which answers the SDK's refresh with a new stand-in, so that the placeholder
never goes to Cognito. Task results come as `ref`s to presigned https URLs, which the SDK downloads
with no credential at all (storage.py:197, requests.py:122: AuthType.NONE): nothing of ours goes
there, so they are left as the API answered them.
"""

import base64
import datetime
import hashlib
import hmac
import json
from types import MappingProxyType

from qpu_broker_client.errors import UnauthenticatedError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.common.secret_shapes import fujitsu_quantum_parts
from qpu_broker.providers.base import Exchanged, ExchangeScheme
from qpu_broker.providers.standin import standin_jwt

API_HOST = "api.quantum.global.fujitsu.com"  # config.py:135, apiBase's default
COGNITO_HOST = "cognito-idp.ap-northeast-1.amazonaws.com"  # auth.py:152, the region the SDK names
INITIATE_AUTH = "AWSCognitoIdentityProviderService.InitiateAuth"
JSON_11 = "application/x-amz-json-1.1"
REFRESH_FLOW = "REFRESH_TOKEN_AUTH"
STANDIN_SECONDS = 3600  # Cognito's default access-token life
SDK_TIME = "%Y-%m-%d %H:%M:%S"  # credentials.json's times: naive local time (auth.py:43)
REFRESH_DAYS = 180  # what `fujitsu-quantum login` writes as the refresh token's expiry (cli.py:192)
SESSION_USER = "qpu-broker-session"  # the session's ClientId and Username: the SDK only hashes and sends them


def secret_hash(username: str, client_id: str) -> str:
    """The SDK's SECRET_HASH, computed as auth.py:154 does (HMAC-SHA256 keyed by username + client id)."""
    return base64.b64encode(hmac.new((username + client_id).encode(), digestmod=hashlib.sha256).digest()).decode()


class FujitsuQuantum(ExchangeScheme):
    provider = "fujitsu_quantum"
    hosts = (API_HOST, COGNITO_HOST)
    default_token_url = f"https://{COGNITO_HOST}/"
    # With an access token, Cognito's own API changes the password, signs out everywhere or deletes
    # the user (GetUser, ChangePassword, GlobalSignOut, DeleteUser take AccessToken): only the
    # daemon's refresh goes there.
    exchange_only_host = COGNITO_HOST
    session_env = MappingProxyType({
        "FUJITSU_QUANTUM_HOME": "{home}",
        "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": "{url}/{credential}",
    })
    # It would make botocore skip the variable above and take the placeholder to Cognito.
    session_unset = ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",)

    @staticmethod
    def secret_shape(text: str) -> bytes:
        return json.dumps(fujitsu_quantum_parts(text), separators=(",", ":"), sort_keys=True).encode()

    async def exchange(self, secret, post, token_url):
        parts = json.loads(secret.reveal())  # canonical JSON (secret_shape)
        params = {"USERNAME": parts["username"], "SECRET_HASH": secret_hash(parts["username"], parts["client_id"]),
                  "REFRESH_TOKEN": parts["refresh_token"]}
        if "device_key" in parts:
            params["DEVICE_KEY"] = parts["device_key"]
        status, doc = await post(token_url, None, {"AuthFlow": REFRESH_FLOW, "ClientId": parts["client_id"],
                                                   "AuthParameters": params},
                                 {"Content-Type": JSON_11, "X-Amz-Target": INITIATE_AUTH})
        if status == 400:  # Cognito's client errors: NotAuthorizedException (expired, revoked), UserNotFound...
            kind = str(doc.get("__type", "an error")).rsplit("#", 1)[-1][:80]
            raise UnauthenticatedError(
                f"Fujitsu Quantum Cloud's sign-in (Cognito) refused the refresh token ({kind}): run "
                "`fujitsu-quantum login` outside qpu-broker, then store its credentials.json anew with "
                "`jq -c . ~/.fujitsu-quantum/credentials.json | qpu-broker token rotate NAME`")
        result = doc.get("AuthenticationResult")
        access = result.get("AccessToken") if isinstance(result, dict) else None
        lifetime = result.get("ExpiresIn") if isinstance(result, dict) else None
        if status != 200 or not isinstance(access, str) or not isinstance(lifetime, (int, float)):
            raise UnavailableError(f"Cognito at {token_url} gave no usable access token (HTTP {status})")
        return Exchanged(Secret(access), float(lifetime))

    def exchange_key(self, form, headers=MappingProxyType({})):
        """A request naming a Cognito operation (X-Amz-Target) is the SDK's refresh: answered by the
        session, never sent on; only InitiateAuth REFRESH_TOKEN_AUTH in AWS JSON 1.1 presents a key."""
        target = headers.get("X-Amz-Target")
        if target is None:
            return None  # an API call
        media = headers.get("Content-Type", "").split(";")[0].strip().lower()
        params = form.get("AuthParameters")
        if target != INITIATE_AUTH or media != JSON_11 or form.get("AuthFlow") != REFRESH_FLOW \
                or not isinstance(params, dict):
            return ""
        key = params.get("REFRESH_TOKEN")
        return key if isinstance(key, str) else ""

    def exchange_refused(self):
        # As Cognito refuses (botocore reads __type as the error code): the SDK's refresh then says
        # its credentials expired; `fujitsu-quantum logout` and sign-ins show this message.
        return {"__type": "NotAuthorizedException",
                "message": "qpu-broker session: this endpoint answers only fujitsu-quantum's token refresh with the "
                           "session's own credentials; sign in and out outside `qpu-broker exec`"}, 400

    def standin(self):
        bearer, _ = standin_jwt(STANDIN_SECONDS)
        return bearer, float(STANDIN_SECONDS), {"AuthenticationResult": {
            "AccessToken": bearer, "ExpiresIn": STANDIN_SECONDS, "TokenType": "Bearer"}, "ChallengeParameters": {}}

    def session_files(self, url, placeholder, standin):
        now = datetime.datetime.now()  # naive local time, as the SDK writes and reads these
        # The stand-in's time is written as due: the SDK refreshes only after a 401 (session.py:34), and
        # then only if the file says the token is near its end (auth.py:148), so a child whose local time
        # differs from the daemon's still refreshes through the session when its stand-in has expired.
        credentials = {"ClientId": SESSION_USER, "Username": SESSION_USER, "AccessToken": standin,
                       "AccessTokenExpirationTime": now.strftime(SDK_TIME), "RefreshToken": placeholder,
                       "RefreshTokenExpirationTime": (now + datetime.timedelta(days=REFRESH_DAYS)).strftime(SDK_TIME)}
        return {"config.json": json.dumps({"apiBase": f"{url}/{placeholder}"}, indent=4).encode(),
                "credentials.json": json.dumps(credentials, indent=4).encode()}

