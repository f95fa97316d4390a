"""Fujitsu Quantum Cloud as fujitsu-quantum 2.4.0 sees it, and the Cognito user pool it signs in to.

Cognito (`cognito`): InitiateAuth REFRESH_TOKEN_AUTH only, as AWS JSON 1.1 is served: POST / with
`X-Amz-Target: AWSCognitoIdentityProviderService.InitiateAuth` and `Content-Type:
application/x-amz-json-1.1`; the app client id, user name, SECRET_HASH (as the SDK derives it) and
refresh token must be the account's, else NotAuthorizedException as Cognito answers. Errors carry
`__type`, which botocore reads as the code.

The API (`api`): the routes the SDK calls to run a task and read its result (api/api.py):
GET /devices/ID, POST /tasks (201), GET /tasks/ID?fields=status|outputs, GET /tasks (a list); each
with `authorization: Bearer ACCESS` for an access token this pool issued. A task's result is `raw` in
the answer, or a `ref` to a presigned URL on `storage`, which takes no credential (S3 refuses a
presigned request that also carries Authorization) and serves a result archive as the SDK reads it
(storage.py:_extract_zip_object: result.json in a zip).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable

from testsupport.fakes import Reply, Seen, json_reply, make_jwt

DEVICE = {"deviceId": "SVSim", "deviceType": "simulator", "status": "available", "nPendingTasks": 0, "nQubits": 39,
          "basisGates": ["x", "y", "z", "h", "s", "sdg", "t", "tdg", "rx", "ry", "rz", "cx", "cz", "swap"],
          "supportedInstructions": ["measure", "barrier"], "description": "state-vector simulator",
          "descriptionHeading": "SVSim", "nNodes": 512, "fetchedAt": "2026-01-01 00:00:00"}
COUNTS = {"00": 50, "11": 50}
TIME = "%Y-%m-%d %H:%M:%S"
# Cognito's, stated here rather than taken from the daemon: the fake must not take its word.
INITIATE_AUTH = "AWSCognitoIdentityProviderService.InitiateAuth"
JSON_11 = "application/x-amz-json-1.1"
REFRESH_FLOW = "REFRESH_TOKEN_AUTH"


def sdk_secret_hash(username: str, client_id: str) -> str:
    """What fujitsu-quantum sends as SECRET_HASH (auth.py:154): HMAC-SHA256 keyed by username + client id, of nothing."""
    return base64.b64encode(hmac.new(bytes(username + client_id, "utf-8"), digestmod=hashlib.sha256).digest()).decode()


def _amz_error(kind: str, message: str, status: int = 400) -> Reply:
    return Reply(status, json.dumps({"__type": kind, "message": message}).encode(), [("Content-Type", JSON_11)])


class FujitsuQuantumCloud:
    """One account (client id, user name, refresh token[, device key]) and its tasks, all run at once."""

    def __init__(self, account: Callable[[], dict[str, str]], storage_url: Callable[[str], str] | None = None,
                 lifetime: int = 3600) -> None:
        self.account = account  # the canonical credential: client_id, username, refresh_token[, device_key]
        self.storage_url = storage_url  # path -> https URL of the storage fake, for `ref` results
        self.lifetime = lifetime
        self.issued: set[str] = set()
        self.refreshes = 0
        self.tasks: dict[str, dict] = {}
        self.objects: dict[str, bytes] = {}  # storage path with its query -> archive
        self._lock = threading.Lock()

    # -- Cognito -------------------------------------------------------------------------
    def cognito(self, seen: Seen) -> Reply:
        if seen.method != "POST" or seen.path != "/":
            return _amz_error("UnknownOperationException", f"{seen.method} {seen.path}", 404)
        if (seen.header("Content-Type") or "").split(";")[0].strip() != JSON_11:
            return _amz_error("SerializationException", "Content-Type must be application/x-amz-json-1.1")
        if seen.header("X-Amz-Target") != INITIATE_AUTH:
            return _amz_error("UnknownOperationException", f"not served here: {seen.header('X-Amz-Target')}")
        try:
            doc = json.loads(seen.body)
            params = doc["AuthParameters"]
        except (ValueError, KeyError, TypeError):
            return _amz_error("SerializationException", "body is not InitiateAuth's JSON")
        account = self.account()
        if doc.get("ClientId") != account["client_id"]:
            return _amz_error("ResourceNotFoundException", "User pool client does not exist.")
        if doc.get("AuthFlow") != REFRESH_FLOW:
            return _amz_error("InvalidParameterException", "only REFRESH_TOKEN_AUTH here")
        expected = {"USERNAME": account["username"], "SECRET_HASH": sdk_secret_hash(account["username"], account["client_id"]),
                    "REFRESH_TOKEN": account["refresh_token"]}
        if "device_key" in account:
            expected["DEVICE_KEY"] = account["device_key"]
        if params != expected:
            return _amz_error("NotAuthorizedException", "Invalid Refresh Token")
        token = make_jwt(time.time() + self.lifetime)
        with self._lock:
            self.refreshes += 1
            self.issued.add(token)
        return Reply(200, json.dumps({"AuthenticationResult": {"AccessToken": token, "ExpiresIn": self.lifetime,
                                                               "TokenType": "Bearer", "IdToken": make_jwt(time.time())},
                                      "ChallengeParameters": {}}).encode(), [("Content-Type", JSON_11)])

    # -- the API -------------------------------------------------------------------------
    def api(self, seen: Seen) -> Reply:
        bearer = (seen.header("Authorization") or "").removeprefix("Bearer ")
        if bearer not in self.issued:
            return json_reply({"message": "Unauthorized"}, 401)
        url = urllib.parse.urlsplit(seen.path)
        parts = url.path.strip("/").split("/")
        query = urllib.parse.parse_qs(url.query)
        if seen.method == "GET" and parts == ["devices", DEVICE["deviceId"]]:
            return json_reply(DEVICE)
        if seen.method == "GET" and parts == ["tasks"]:
            return json_reply([])
        if seen.method == "POST" and parts == ["tasks"]:
            return self._create(seen.body)
        if seen.method == "GET" and len(parts) == 2 and parts[0] == "tasks" and parts[1] in self.tasks:
            task = self.tasks[parts[1]]
            fields = query.get("fields", [""])[0].split(",")
            if fields == ["status"]:
                task["status"] = "COMPLETED"  # run at once: the SDK's next poll finds it done
                return json_reply({"status": task["status"]})
            if fields == ["outputs"]:
                return json_reply({"outputs": {"result": self._result(parts[1])}})
            return json_reply({k: v for k, v in task.items() if k != "body"})
        return json_reply({"error": f"no route {seen.method} {url.path}"}, 404)

    def __call__(self, seen: Seen) -> Reply:
        """Both on one server: Cognito's calls name their target."""
        return self.cognito(seen) if seen.header("X-Amz-Target") is not None else self.api(seen)

    def any_call(self, seen: Seen) -> Reply:
        """The rig's fake (testsupport/hardware.py): Cognito as it is, and any call with an access token it
        issued answered `{"ok": true}`, as the rig's other fakes answer the tests of every provider."""
        if seen.header("X-Amz-Target") is not None:
            return self.cognito(seen)
        if (seen.header("Authorization") or "").removeprefix("Bearer ") not in self.issued:
            return json_reply({"message": "Unauthorized"}, 401)
        return Reply()

    def _create(self, raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
            shots, code = body["nShots"]["raw"], body["code"]["raw"]
        except (ValueError, KeyError, TypeError):
            return json_reply({"error": "a sampling task needs code and nShots"}, 400)
        if body.get("device") != DEVICE["deviceId"] or body.get("type") != "sampling" or not code \
                or not all(isinstance(c, str) and c.lstrip().startswith("OPENQASM") for c in code):
            return json_reply({"error": "a sampling task of OpenQASM code on SVSim only"}, 400)
        task_id = str(uuid.uuid4())
        created = time.strftime(TIME, time.gmtime())
        self.tasks[task_id] = {"taskId": task_id, "status": "QUEUED", "createdAt": created, "body": body,
                               "shots": shots[0]}
        return json_reply({"taskId": task_id, "status": "QUEUED", "createdAt": created}, 201)

    def _result(self, task_id: str) -> dict:
        now = time.strftime(TIME, time.gmtime())
        shots = self.tasks[task_id]["shots"]
        result = {"execution": [{"data": [{"counts": {k: v * shots // 100 for k, v in COUNTS.items()}}],
                                 "start": now, "end": now}]}
        if self.storage_url is None:
            return {"raw": result}
        path = f"/results/{task_id}.zip?X-Amz-Signature={secrets.token_hex(16)}"
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("result.json", json.dumps(result))
        self.objects[path] = archive.getvalue()
        return {"ref": self.storage_url(path)}

    def storage(self, seen: Seen) -> Reply:
        """Presigned GETs of result archives: the URL is the whole credential."""
        if seen.method != "GET" or seen.path not in self.objects:
            return Reply(403, b"<Error><Code>AccessDenied</Code></Error>", [("Content-Type", "application/xml")])
        if seen.header("Authorization") is not None:
            return Reply(400, b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed"
                              b"</Message></Error>", [("Content-Type", "application/xml")])
        return Reply(200, self.objects[seen.path], [("Content-Type", "application/zip")])
