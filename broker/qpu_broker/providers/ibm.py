"""IBM Quantum (cloud): API key -> IAM access token -> `Authorization: Bearer`.

The caller adds `Service-CRN` itself (it is not secret). Exchanges are cached
by the wrapper in qpu_broker.providers.exchange_cache, per token, to ~80 % of their life.
"""

import re
from types import MappingProxyType

from qpu_broker_client.errors import UnauthenticatedError, UnavailableError
from qpu_broker_client.secret import Secret

from qpu_broker.providers.base import Exchanged, ExchangeScheme
from qpu_broker.providers.standin import standin_jwt

GRANT_TYPE = "urn:ibm:params:oauth:grant-type:apikey"
STANDIN_SECONDS = 3600  # IAM's own lifetime; the SDK refreshes through the session before it ends


API_PREFIX = "/api/"  # qiskit-ibm-runtime's Quantum API base path


class Ibm(ExchangeScheme):
    provider = "ibm"
    # qiskit-ibm-runtime calls all four on every service set-up (IAM, the Quantum API, and
    # Global Search and Global Catalog to find the instance and its plan).
    hosts = ("iam.cloud.ibm.com", "quantum.cloud.ibm.com", "api.global-search-tagging.cloud.ibm.com",
             "globalcatalog.cloud.ibm.com")
    host_patterns = (re.compile(r"[a-z0-9-]{1,63}\.quantum\.cloud\.ibm\.com"),)
    default_token_url = "https://iam.cloud.ibm.com/identity/token"
    # Exec sessions: an HTTPS proxy, since qiskit-ibm-runtime derives its hosts from one URL and
    # drops the port (no loopback base URL can stand in). QISKIT_IBM_TOKEN is the API key the
    # SDK trades at IAM, here the placeholder; IBM_CREDENTIALS_FILE pinned so ibm-cloud-sdk-core
    # reads no credentials file of the user's; the CA variables trust the session's CA.
    session_env = MappingProxyType({
        "HTTPS_PROXY": "{proxy}", "https_proxy": "{proxy}", "REQUESTS_CA_BUNDLE": "{ca_bundle}",
        "SSL_CERT_FILE": "{ca_bundle}", "QISKIT_IBM_TOKEN": "{credential}", "IBM_CREDENTIALS_FILE": "/dev/null",
    })
    exchange_only_host = "iam.cloud.ibm.com"
    session_exchange = (exchange_only_host, "/identity/token")
    session_tls_names = (*hosts, "*.quantum.cloud.ibm.com")
    # With the account's real bearer, Global Search can also tag and Global Catalog list
    # everything: a session, or a member with an org token, goes there only with the lookups
    # qiskit-ibm-runtime makes (path and query). The Quantum API is the service.
    BEARER_CALLS = MappingProxyType({
        "api.global-search-tagging.cloud.ibm.com": (("POST", re.compile(r"/v3/resources/search(\?limit=\d{1,4})?")),),
        "globalcatalog.cloud.ibm.com": (("GET", re.compile(r"/api/v1/[A-Za-z0-9_-]{1,128}(\?[A-Za-z0-9_=&-]{0,256})?")),),
    })

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

    def bearer_allowed(self, host, method, url):
        # Judged as a gateway in front of IBM's APIs resolves it (nginx decodes, then removes dot
        # segments): '/api/..%2Fv1/apikeys' would be IAM's key minting, so a path servers may
        # read two ways is refused outright.
        path = url.resolved_path
        if path is None:
            return False
        calls = self.BEARER_CALLS.get(host)
        if calls is None:
            # The Quantum API (and its regions, and hosts an org added): its own paths only, so no
            # other IBM Cloud API rides along, least of all IAM's key minting behind an org's own
            # token URL host.
            return path.startswith(API_PREFIX)
        target = path + (f"?{url.query}" if url.query else "")
        return any(method == m and pattern.fullmatch(target) for m, pattern in calls)

    def exchange_key(self, form, headers=MappingProxyType({})):
        return form.get("apikey") if form.get("grant_type") == GRANT_TYPE else None

    def exchange_refused(self):
        return {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.",
                "context": {"requestType": "qpu-broker session"}}, 400

    def standin(self):
        """A JWT as IAM issues them (ibm-cloud-sdk-core reads exp and iat to time its refresh)."""
        bearer, now = standin_jwt(STANDIN_SECONDS)
        return bearer, float(STANDIN_SECONDS), {"access_token": bearer, "refresh_token": "not_supported",
                                                "token_type": "Bearer", "expires_in": STANDIN_SECONDS,
                                                "expiration": now + STANDIN_SECONDS, "scope": "ibm openid"}
