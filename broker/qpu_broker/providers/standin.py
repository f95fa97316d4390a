"""A session's stand-in bearer: a JWT in the shape SDKs decode without verifying it.

SDKs read `exp` (and `iat`) from their bearer to time their refresh (ibm-cloud-sdk-core,
qctrl-client's JwtMixin); the random signature makes it unguessable. It is worth anything
only to the session that gave it out, which checks it and sends the real bearer on.
"""

import base64
import json
import secrets
import time


def standin_jwt(lifetime: int) -> tuple[str, int]:
    """(the JWT, its iat): valid for `lifetime` seconds from now."""
    now = int(time.time())
    enc = lambda doc: base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    token = ".".join([enc({"alg": "RS256", "typ": "JWT", "kid": "qpu-broker-session"}),
                      enc({"iss": "qpu-broker session", "sub": "qpu-broker session", "iat": now,
                           "exp": now + lifetime, "jti": secrets.token_hex(8)}),
                      secrets.token_urlsafe(32)])
    return token, now
