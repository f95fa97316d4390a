"""Loopback fake providers over real HTTP(S), each checking exactly the auth its provider expects."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import http.server
import ipaddress
import json
import pathlib
import ssl
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclasses.dataclass
class TestCA:
    ca_file: pathlib.Path
    cert_file: pathlib.Path
    key_file: pathlib.Path


def make_ca(directory: pathlib.Path, name: str = "qpu-broker test CA") -> TestCA:
    """A CA and a server certificate for localhost / 127.0.0.1, made with cryptography."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    out = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    out.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(_pem_key(ca_key))  # for further server certificates (issue_cert)
    issue_cert(out, out.cert_file, out.key_file, ("localhost", "127.0.0.1"))
    return out


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue_cert(ca: TestCA, cert_file: pathlib.Path, key_file: pathlib.Path, hosts: tuple[str, ...]) -> None:
    """A server certificate from `ca` for `hosts` (DNS names or IP addresses), written to the files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.ca_file.parent / "ca.key").read_bytes(), None)

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=lambda: [("Content-Type", "application/json")])


def json_reply(doc: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(doc).encode())


class _Quiet(http.server.ThreadingHTTPServer):
    # A burst of connections at once (a cold pool) waits in the backlog while accept() does each TLS
    # handshake: at socketserver's 5, the rest were dropped and retried a second or more later.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        """A client gone mid-answer (a load generator stopping on time) is no error of the fake's."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            super().handle_error(request, client_address)


class FakeServer:
    """A threaded HTTP(S) server on 127.0.0.1 that records every request it gets."""

    def __init__(self, handler: Callable[[Seen], Reply], ca: TestCA | None = None) -> None:
        self.seen: list[Seen] = []
        self.handler = handler
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK

            def _any(self) -> None:
                body = _read_body(self.rfile, self.headers)
                seen = Seen(self.command, self.path, list(self.headers.items()), body)
                outer.seen.append(seen)
                reply = outer.handler(seen)
                self.send_response(reply.status)
                for k, v in reply.headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.tls = ca is not None
        if ca is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(ca.cert_file, ca.key_file)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        # shutdown() waits for the loop to look again: at the default 0.5 s, closing a rig's nine
        # fakes one after another cost every test over two seconds of teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _read_body(rfile, headers) -> bytes:
    """The body as it came on the wire, by its length or its chunks (requests sends a generator's
    body chunked): still in whatever Content-Encoding it has."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        parts = []
        while size := int(rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(rfile.read(size))
            rfile.readline()
        while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)
    length = int(headers.get("Content-Length") or 0)
    return rfile.read(length) if length else b""


class BadCoding(ValueError):
    """A request body its server cannot read as its Content-Encoding says; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decoded_body(seen: Seen, accepted: tuple[str, ...] = ("gzip", "deflate")) -> bytes:
    """The body as a server that takes the `accepted` codings reads it: decoded as its
    Content-Encoding says (deflate is zlib's format, RFC 9110 8.4.1.2). A coding it does not
    take is a 415, and a body that is not what its header says (plain bytes labelled deflate) a
    400, as a real server answers."""
    body = seen.body
    codings = [c.strip().lower() for c in (seen.header("Content-Encoding") or "").split(",") if c.strip()]
    for coding in reversed(codings):  # the last applied first
        if coding == "identity":
            continue
        if coding not in accepted:
            raise BadCoding(415, f"Content-Encoding {coding} is not supported")
        try:
            body = gzip.decompress(body) if coding == "gzip" else zlib.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadCoding(400, f"the body is not {coding} as its Content-Encoding says ({exc})") from None
    return body


# -- provider behaviours ------------------------------------------------------------
def header_check(header: str, expected: Callable[[], str]) -> Callable[[Seen], Reply]:
    """D-Wave, Fujitsu, IonQ: the right value in the right header, or 401."""
    def handle(seen: Seen) -> Reply:
        if seen.header(header) != expected():
            return json_reply({"error": f"bad {header}"}, 401)
        if seen.path.startswith("/redirect"):
            target = urllib.parse.parse_qs(urllib.parse.urlsplit(seen.path).query)["to"][0]
            return Reply(302, b"", [("Location", target)])
        return json_reply({"ok": True, "path": seen.path, "echo": seen.body.decode(errors="replace")})
    return handle


class IbmFake:
    """IAM issuing expiring bearers, and an API that checks them (on its own clock)."""

    def __init__(self, api_key: Callable[[], str], lifetime: float = 3600.0) -> None:
        self.api_key = api_key
        self.lifetime = lifetime
        self.issued: dict[str, float] = {}  # bearer -> expiry (time.monotonic)
        self.exchanges = 0
        self.expired_uses = 0
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        if seen.path == "/identity/token":
            form = urllib.parse.parse_qs(seen.body.decode())
            if form.get("grant_type") != ["urn:ibm:params:oauth:grant-type:apikey"] or form.get("apikey") != [self.api_key()]:
                return json_reply({"errorCode": "BXNIM0415E"}, 400)
            with self._lock:
                self.exchanges += 1
                bearer = f"ibm-bearer-{self.exchanges}"
                self.issued[bearer] = time.monotonic() + self.lifetime
            return json_reply({"access_token": bearer, "expires_in": self.lifetime, "token_type": "Bearer"})
        auth = seen.header("Authorization") or ""
        bearer = auth.removeprefix("Bearer ")
        expiry = self.issued.get(bearer)
        if not auth.startswith("Bearer ") or expiry is None:
            return json_reply({"error": "unauthorized"}, 401)
        if time.monotonic() > expiry:
            self.expired_uses += 1
            return json_reply({"error": "expired"}, 401)
        return json_reply({"ok": True, "bearer": bearer, "crn": seen.header("Service-CRN")})


def make_jwt(exp: float) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'none'})}.{enc({'exp': exp})}.sig"


class QCtrlFake:
    """Q-CTRL's API at its root (GraphQL, with the key exchange: testsupport.qctrl_fake), and any
    other path a plain check of a bearer it issued, for forwarding tests."""

    def __init__(self, api_key: Callable[[], str]) -> None:
        from testsupport.qctrl_fake import QCtrlApi

        self.api = QCtrlApi(api_key)

    @property
    def exchanges(self) -> int:
        return self.api.exchanges

    def __call__(self, seen: Seen) -> Reply:
        if seen.path == "/":
            return self.api(seen)
        bearer = (seen.header("Authorization") or "").removeprefix("Bearer ")
        return json_reply({"ok": True}) if bearer in self.api.issued else json_reply({"error": "unauthorized"}, 401)


class AwsFake:
    """Recomputes SigV4 with botocore from what arrived; any mismatch is a 403."""

    def __init__(self, creds: Callable[[], tuple[str, str, str | None]], port_in_url: Callable[[], str]) -> None:
        self.creds = creds
        self.base = port_in_url
        self.mismatches: list[str] = []

    def __call__(self, seen: Seen) -> Reply:
        from unittest import mock

        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = seen.header("Authorization") or ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return json_reply({"message": "missing signature"}, 403)
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        akid, _date, region, service, _ = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        headers = {k: v for k, v in seen.headers if k.lower() in signed}
        req = AWSRequest(method=seen.method, url=self.base() + seen.path, headers=headers, data=seen.body)
        ts = datetime.datetime.strptime(seen.header("X-Amz-Date"), "%Y%m%dT%H%M%SZ")
        key_id, secret, token = self.creds()
        with mock.patch("botocore.auth.get_current_datetime", return_value=ts):
            # S3 signs its path as it is (no normalising, no second encoding) and its body's hash.
            signer = S3SigV4Auth if service == "s3" else SigV4Auth
            signer(Credentials(key_id, secret, token), service, region).add_auth(req)
        if req.headers["Authorization"] != auth or akid != key_id:
            self.mismatches.append(auth)
            return json_reply({"message": "signature mismatch"}, 403)
        return json_reply({"ok": True, "service": service, "region": region})


class LunaFake:
    def __init__(self, api_key: Callable[[], str], expect_tokens: Callable[[], dict]) -> None:
        self.api_key = api_key
        self.expect_tokens = expect_tokens

    def __call__(self, seen: Seen) -> Reply:
        if seen.header("Luna-API-Key") != self.api_key():
            return json_reply({"detail": "bad Luna-API-Key"}, 401)
        if seen.body:
            doc = json.loads(seen.body)
            if doc.get("qpu_tokens", {}) != self.expect_tokens():
                return json_reply({"detail": "unexpected qpu_tokens"}, 422)
        return json_reply({"ok": True})
