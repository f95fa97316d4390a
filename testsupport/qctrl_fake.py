"""Q-CTRL's API as qctrl-client (under fire-opal and boulder-opal) sees it: GraphQL at the API
URL's root, executed by graphql-core against a schema holding the calls the SDK makes
(qctrlclient/auth/api_key.py's key exchange; qctrlworkflowclient/router/api.py's profile,
startCoreWorkflow and action). Strict as a GraphQL server is: a query that does not parse or
validate against the schema is a 400, a body other than JSON a 415; the schema's
introspection and the key exchange need no bearer, everything else a bearer it issued."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from testsupport.fakes import Reply, Seen, json_reply, make_jwt

SCHEMA = """
type Query {
  accessToken(apiKey: String!): AccessTokenPayload!
  profile: ProfilePayload!
  action(modelId: String!): ActionPayload!
}
type Mutation {
  startCoreWorkflow(input: StartCoreWorkflowInput!): StartCoreWorkflowPayload!
}
type Error { fields: [String!] message: String! }
type AccessTokenPayload { accessToken: String errors: [Error!]! }
type Product { name: String! active: Boolean! }
type Organization { id: ID! slug: String! name: String! products: [Product!]! }
type Profile { organizations: [Organization!]! }
type ProfilePayload { profile: Profile errors: [Error!]! }
enum ActionStatusEnum { SUCCESS FAILURE REVOKED PENDING RECEIVED RETRY STARTED }
type ActionError { exception: String traceback: String }
type Action { modelId: String! status: ActionStatusEnum! result: String errors: [ActionError!] }
type ActionPayload { action: Action errors: [Error!]! }
type Warning { message: String! }
input StartCoreWorkflowInput { registry: String! workflow: String! data: String! clientMetadata: String }
type StartCoreWorkflowPayload { action: Action warnings: [Warning!]! errors: [Error!]! }
"""
ORGANIZATION = {"id": "1", "slug": "fake-org", "name": "Fake Org",
                "products": [{"name": "fire-opal", "active": True}, {"name": "boulder-opal", "active": True}]}
OPEN_FIELDS = frozenset({"__schema", "__type", "__typename", "accessToken"})  # need no bearer


class QCtrlApi:
    """One organization; a workflow `execute` of one circuit answers an even split of its shots
    over |00> and |11>, PENDING when started and SUCCESS when first asked about."""

    def __init__(self, api_key: Callable[[], str]) -> None:
        from graphql import build_schema

        self.api_key = api_key
        self.schema = build_schema(SCHEMA)
        self.issued: set[str] = set()
        self.exchanges = 0
        self.workflows: list[dict] = []
        self._actions: dict[str, dict] = {}
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        from graphql import OperationDefinitionNode, execute, parse, validate
        from graphql.error import GraphQLError

        if seen.method != "POST" or seen.path != "/":
            return json_reply({"errors": [{"message": f"Cannot {seen.method} {seen.path}"}]}, 404)
        media = (seen.header("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/json" or (seen.header("Content-Encoding") or "identity") != "identity":
            return json_reply({"errors": [{"message": "Unsupported Media Type"}]}, 415)
        try:
            doc = json.loads(seen.body)
            document = parse(doc["query"])
        except (ValueError, KeyError, TypeError, GraphQLError) as exc:
            return json_reply({"errors": [{"message": f"Bad request: {exc}"}]}, 400)
        invalid = validate(self.schema, document)
        if invalid:
            return json_reply({"errors": [e.formatted for e in invalid]}, 400)
        fields = {s.name.value for d in document.definitions if isinstance(d, OperationDefinitionNode)
                  for s in d.selection_set.selections if hasattr(s, "name")}
        if not fields <= OPEN_FIELDS:
            bearer = (seen.header("Authorization") or "").removeprefix("Bearer ")
            if bearer not in self.issued:
                return json_reply({"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]})
        with self._lock:
            result = execute(self.schema, document, root_value=self, variable_values=doc.get("variables"),
                             operation_name=doc.get("operationName"))
        out: dict = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return json_reply(out)

    # -- resolvers: graphql-core calls a root value's methods by field name (the schema's camelCase) --
    def accessToken(self, _info, apiKey: str) -> dict:
        if apiKey != self.api_key():
            return {"accessToken": None, "errors": [{"fields": ["apiKey"], "message": "Invalid API key"}]}
        self.exchanges += 1
        token = make_jwt(time.time() + 600) + str(self.exchanges)
        self.issued.add(token)
        return {"accessToken": token, "errors": []}

    def profile(self, _info) -> dict:
        return {"profile": {"organizations": [ORGANIZATION]}, "errors": []}

    def startCoreWorkflow(self, _info, input: dict) -> dict:
        data = json.loads(input["data"])
        self.workflows.append({**input, "data": data})
        model_id = str(len(self.workflows))
        shots = int(data["shot_count"])
        self._actions[model_id] = {"modelId": model_id, "status": "PENDING", "result": None, "errors": None,
                                   "done": json.dumps({"results": [{"00": shots // 2, "11": shots - shots // 2}]})}
        return {"action": self._actions[model_id], "warnings": [], "errors": []}

    def action(self, _info, modelId: str) -> dict:
        found = self._actions.get(modelId)
        if found is None:
            return {"action": None, "errors": [{"message": f"Action {modelId} not found"}]}
        found.update(status="SUCCESS", result=found["done"])
        return {"action": found, "errors": []}
