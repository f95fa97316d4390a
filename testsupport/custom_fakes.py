"""Fakes of providers the built-ins do not know, shaped as their real SDKs call them, for custom
providers (`[providers.custom.NAME]`): Infleqtion's Superstaq API (general-superstaq 0.5.70) and an
OAuth client-credentials token endpoint. Each checks the real credential first, as the service does."""

from __future__ import annotations

import codecs
import itertools
import json
import pickle
import secrets
import urllib.parse
from collections.abc import Callable

from testsupport.fakes import Reply, Seen, json_reply

SUPERSTAQ_VERSION = "v0.2.0"  # general_superstaq._init_vars.API_VERSION


class SuperstaqApi:
    """Superstaq's REST API, v0.2.0 (general_superstaq/superstaq_client.py): the API key itself in
    Authorization; GET /balance; POST /qubo answers the QUBO's best assignments, serialised as the
    SDK decodes them (gss.serialization: pickle, base64). Bodies are JSON (requests' json=)."""

    def __init__(self, api_key: Callable[[], str]) -> None:
        self.api_key = api_key
        self.qubos: list[dict] = []

    def __call__(self, seen: Seen) -> Reply:
        if seen.header("Authorization") != self.api_key():
            return json_reply({"message": "Not authorized: check your Superstaq API key"}, 401)
        path = urllib.parse.urlsplit(seen.path).path
        if seen.method == "GET" and path == f"/{SUPERSTAQ_VERSION}/balance":
            return json_reply({"balance": 1234.5})
        if seen.method == "POST" and path == f"/{SUPERSTAQ_VERSION}/qubo":
            if seen.header("Content-Type") != "application/json":
                return json_reply({"message": "expected a JSON body"}, 415)
            doc = json.loads(seen.body)
            self.qubos.append(doc)
            return json_reply({"solution": _serialize(_best(doc["qubo"], doc["max_solutions"]))})
        return json_reply({"message": f"no route {seen.method} {path}"}, 404)


def _best(qubo: list, limit: int) -> list[dict]:
    """Every assignment of the QUBO's variables at its lowest energy (brute force: test sizes)."""
    terms = [(tuple(key), float(value)) for key, value in qubo]
    names = sorted({v for key, _ in terms for v in key})
    scored = []
    for bits in itertools.product((0, 1), repeat=len(names)):
        x = dict(zip(names, bits, strict=True))
        scored.append((sum(c * all(x[v] for v in key) for key, c in terms), x))
    low = min(e for e, _ in scored)
    return [x for e, x in scored if e == low][:limit]


def _serialize(obj: object) -> str:
    return codecs.encode(pickle.dumps(obj), "base64").decode()


class ClientCredentialsServer:
    """An OAuth 2.0 token endpoint (RFC 6749 4.4): a form with grant_type=client_credentials and the
    client's id and secret gets a bearer; the API host takes only bearers it issued."""

    def __init__(self, client: Callable[[], tuple[str, str]], token_path: str = "/oauth/token") -> None:
        self.client = client
        self.token_path = token_path
        self.issued: list[str] = []
        self.exchanges = 0
        self.calls: list[Seen] = []

    def __call__(self, seen: Seen) -> Reply:
        if urllib.parse.urlsplit(seen.path).path == self.token_path:
            if seen.method != "POST" or seen.header("Content-Type") != "application/x-www-form-urlencoded":
                return json_reply({"error": "invalid_request"}, 400)
            form = dict(urllib.parse.parse_qsl(seen.body.decode()))
            if form.get("grant_type") != "client_credentials":
                return json_reply({"error": "unsupported_grant_type"}, 400)
            if (form.get("client_id"), form.get("client_secret")) != self.client():
                return json_reply({"error": "invalid_client"}, 401)
            self.exchanges += 1
            self.issued.append(secrets.token_urlsafe(24))
            return json_reply({"access_token": self.issued[-1], "token_type": "Bearer", "expires_in": 3600})
        self.calls.append(seen)
        if not self.issued or seen.header("Authorization") != f"Bearer {self.issued[-1]}":
            return json_reply({"error": "invalid_token"}, 401)
        return json_reply({"jobs": [{"id": "job-1", "status": "COMPLETED", "counts": {"00": 7, "11": 9}}]})
