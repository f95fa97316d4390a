"""Sign boto3 / botocore / Braket requests in the daemon: `use_broker(client)`.

botocore is told not to sign (it then needs no credentials at all); just before
each request is sent, the daemon signs it with SigV4 and the client adds the
headers. The AWS secret key never enters this process.
"""

from __future__ import annotations

import botocore

from ..broker import Broker
from ..tokens import TokenProvider


def use_broker(client, qpu_tokens: TokenProvider | None = None, *, broker: Broker | None = None) -> None:
    broker = broker or Broker()
    region = client.meta.region_name or ""
    service = client.meta.service_model.signing_name

    def unsigned(**kwargs):
        return botocore.UNSIGNED

    def sign(request, **kwargs):
        body = request.body or b""
        if hasattr(body, "read"):
            position = body.tell()
            data = body.read()
            body.seek(position)
            body = data
        if isinstance(body, str):
            body = body.encode()
        added = broker.sign(request.method, request.url, headers=list(request.headers.items()), body=body,
                            qpu_tokens=qpu_tokens, region=region, service=service)
        for name, value in added.items():
            request.headers[name] = value
        # let botocore send it

    client.meta.events.register_first("choose-signer", unsigned)
    client.meta.events.register_last("before-send", sign)
