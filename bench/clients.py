"""Call factories for bench workers (module-level so spawned processes can import them)."""

from __future__ import annotations

import socket
import struct

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qpu_broker_client.proto.qpubroker.v1 import tokens_pb2, tokens_pb2_grpc


def empty_rpc(sock: str):
    """The floor: the standard health Check, an empty RPC on the same server and stack."""
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"unix:{sock}"))
    req = health_pb2.HealthCheckRequest()
    return lambda: stub.Check(req)


def token_get(arg):
    sock, token_id = arg
    stub = tokens_pb2_grpc.TokenServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    req = tokens_pb2.GetTokenRequest(token=tokens_pb2.TokenSelector(id=token_id))
    return lambda: stub.GetToken(req)


def token_get_by_name(arg):
    sock, name = arg
    stub = tokens_pb2_grpc.TokenServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    req = tokens_pb2.GetTokenRequest(token=tokens_pb2.TokenSelector(name=name))
    return lambda: stub.GetToken(req)


def token_create(sock: str):
    import os

    stub = tokens_pb2_grpc.TokenServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    prefix = f"bench-{os.getpid()}-"
    counter = [0]

    def call():
        counter[0] += 1
        stub.CreateToken(tokens_pb2.CreateTokenRequest(name=prefix + str(counter[0]), provider="ibm", secret=b"s" * 40))
    return call


# -- ssh-agent's protocol (draft-miller-ssh-agent), just enough to sign ----------
def _recv_msg(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        head += s.recv(4 - len(head))
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return body


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def ssh_agent_sign(sock: str):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(struct.pack(">IB", 1, 11))  # REQUEST_IDENTITIES
    answer = _recv_msg(s)
    assert answer[0] == 12, answer[0]
    (nkeys,) = struct.unpack(">I", answer[1:5])
    assert nkeys >= 1
    (blen,) = struct.unpack(">I", answer[5:9])
    blob = answer[9:9 + blen]
    payload = bytes([13]) + _string(blob) + _string(b"x" * 64) + struct.pack(">I", 0)
    msg = struct.pack(">I", len(payload)) + payload

    def call():
        s.sendall(msg)
        assert _recv_msg(s)[0] == 14  # SIGN_RESPONSE
    return call


def sign(arg):
    """A SigV4 Sign of a small Braket request with a stored AWS token."""
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2_grpc

    sock, name = arg
    stub = requests_pb2_grpc.RequestServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    req = sign_request(name)
    return lambda: stub.Sign(req)


def sign_request(name: str):
    """The Sign every bench measures (Python and h2load alike): a small Braket request, a stored AWS token."""
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2

    return requests_pb2.SignRequest(
        method="POST", url="https://braket.us-east-1.amazonaws.com/quantum-task", body=b'{"shots": 100}',
        headers=[requests_pb2.Header(name="Content-Type", value="application/json")],
        tokens=requests_pb2.TokenProvider(aws=requests_pb2.TokenRef(kind=tokens_pb2.TOKEN_KIND_PERSONAL, name=name)))


def forward(arg):
    """A Forward GET through the daemon to a loopback fake."""
    from qpu_broker_client import Broker, QpuToken, TokenProvider

    sock, url = arg
    b = Broker(sock, autostart=False)
    tp = TokenProvider(ionq=QpuToken("personal", name="bench-ionq"))
    return lambda: b.forward("GET", url, provider="ionq", qpu_tokens=tp)


def direct(arg):
    """The same GET straight to the fake with a keep-alive httpx client (the anchor)."""
    import ssl

    import httpx

    url, ca_file = arg
    client = httpx.Client(verify=ssl.create_default_context(cafile=ca_file))
    headers = {"Authorization": "apiKey bench-ionq-key"}
    return lambda: client.get(url, headers=headers)


def forward_refused(sock: str):
    """A Forward the daemon refuses at once: the cost of the bidi stream shape alone."""
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2, requests_pb2_grpc

    stub = requests_pb2_grpc.RequestServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    head = requests_pb2.ForwardHead(method="GET", url="https://evil.example/", provider="ionq", tokens=_inline())

    def call():
        try:
            for _ in stub.Forward(iter([requests_pb2.ForwardRequest(head=head)])):
                pass
        except grpc.RpcError:
            pass
    return call


def resolve_unary(sock: str):
    """A unary Resolve with an inline token: the same work shape, unary."""
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2, requests_pb2_grpc

    stub = requests_pb2_grpc.RequestServiceStub(grpc.insecure_channel(f"unix:{sock}"))
    req = requests_pb2.ResolveRequest(provider="ionq", tokens=_inline())
    return lambda: stub.Resolve(req)


def _inline():
    from qpu_broker_client.proto.qpubroker.v1 import requests_pb2

    return requests_pb2.TokenProvider(ionq=requests_pb2.TokenRef(kind=tokens_pb2.TOKEN_KIND_INLINE, secret=b"k"))


def forward_with(arg):
    """A Forward GET with a given TokenProvider field kind/name (personal or organization)."""
    from qpu_broker_client import Broker, QpuToken, TokenProvider

    sock, url, kind, name = arg
    b = Broker(sock, autostart=False)
    tp = TokenProvider(ionq=QpuToken(kind, name=name))
    return lambda: b.forward("GET", url, provider="ionq", qpu_tokens=tp)


def sign_with(arg):
    from qpu_broker_client import Broker, QpuToken, TokenProvider

    sock, kind, name = arg
    b = Broker(sock, autostart=False)
    tp = TokenProvider(aws=QpuToken(kind, name=name))
    return lambda: b.sign("POST", "https://braket.us-east-1.amazonaws.com/quantum-task", body=b"{}", qpu_tokens=tp)
