"""A proxy session's CA added to the CA bundle the user already names, instead of replacing it.

A proxy session (IBM) sets REQUESTS_CA_BUNDLE and SSL_CERT_FILE to a bundle of its own CA and
the public roots (forward/session_ca.py). A user behind a corporate proxy, or with a private
CA, already points those variables at a bundle that trusts it; replacing it would break every
other HTTPS call of their script. So where the user names a readable bundle, the command gets a
bundle of the user's certificates plus the session's CA alone, written beside the session's own
(the daemon's runtime directory, the user's), and removed by the daemon with it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from collections.abc import Mapping

# The variables a proxy session points at its bundle, which a user's own value is kept in.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
# A bundle written for the user's own is named "<session bundle stem>+<tag>.pem": the daemon
# removes these with the session's (forward/sessions.py).
USER_BUNDLE_MARK = "+"
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


def with_users_cas(session_env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """The CA variables whose value in `base` (the user's environment) names a readable bundle,
    each pointing at that bundle plus the session's CA. Others are left as the session sets them."""
    out: dict[str, str] = {}
    for name in CA_VARIABLES:
        ours, theirs = session_env.get(name), base.get(name)
        if not ours or not theirs or theirs == ours:
            continue
        try:
            users = pathlib.Path(theirs).read_bytes()
            session_ca = _CERT.search(pathlib.Path(ours).read_bytes())  # the bundle starts with the session CA
        except OSError:
            continue  # not a file we can read (a directory, gone): the session's bundle, as before
        if session_ca is None:
            continue
        own = pathlib.Path(ours)
        target = own.with_name(f"{own.stem}{USER_BUNDLE_MARK}{hashlib.sha256(theirs.encode()).hexdigest()[:12]}.pem")
        _write_private(target, users.rstrip(b"\n") + b"\n" + session_ca.group(0))
        out[name] = str(target)
    return out


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """0600, whole or not at all (a command started meanwhile never reads half a bundle)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
