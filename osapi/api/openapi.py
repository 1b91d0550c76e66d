"""The OpenAPI 3.1 document, built from the routes (and so from the operations table).

``build()`` walks the same ``Route`` objects the app registers, so the document
lists exactly the served routes with their parameters, bodies, responses
(including the error envelope) and the bearer security scheme. The repository
keeps the result in ``osapi/api/openapi.yaml`` for readers and client
generators; a test keeps that file equal to ``build()``. Regenerate it with::

    python -m osapi.api.openapi > osapi/api/openapi.yaml
"""

from __future__ import annotations

import copy
import sys

from osapi import __version__
from osapi.api import schemas
from osapi.api.routing import Param, Response, Route

DESCRIPTION = """\
A REST API for Linux hosts. Every domain operation runs as a job on NATS JetStream and is
executed by the workers on the target hosts.

* Authentication: `Authorization: Bearer <JWT>` (HS256, created with `osapi token generate`).
  Roles map to scopes: admin = read, write, admin; write = read, write; read = read.
  GET needs `read`, POST/PUT/DELETE need `write`. No token, an invalid or expired one: 401
  with `WWW-Authenticate: Bearer`; a valid token without the scope: 403.
* Errors: every 4xx/5xx body is `{"error", "details", "code"}`, including unknown paths (404)
  and wrong methods (405, with an `Allow` header).
* Synchronous domain endpoints answer `{job_id, results}`, one item per responding worker;
  a worker that failed appears as `{hostname, status: "failed", error}`, a host the worker
  registry listed that did not answer as `{hostname, status: "no_response", error}`. No live
  worker matches the target: 404 with the `job_id` (the job stays queued). Matching workers
  that did not answer within `api.server.job_timeout`: 504. NATS unreachable: 503.
* Every job view has each host's outcome (`hosts`, `summary`); `POST /jobs/{job_id}/retry`
  runs a job again on its failed, silent or skipped hosts only.
* Targets (`target_hostname`): `_any`, `_all`, `key:value` (label prefix match) or a hostname.
  Domain endpoints take it as a query parameter only (a body field of that name is refused);
  `POST /jobs` takes it in its body. It is taken exactly as given (no trimming).
* Input: query parameters a route does not declare are refused (400); the body is parsed as
  JSON whatever its Content-Type; bodies over 1 MiB are refused (413).
"""


def build(routes: list[Route] | None = None) -> dict:
    if routes is None:
        from osapi.api.routes import all_routes

        routes = all_routes()
    paths: dict = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "osapi",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "this server"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": t} for t in _tags(routes)],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT with claims sub, roles, iat, exp (required), iss=osapi",
                }
            },
            "schemas": copy.deepcopy(schemas.COMPONENTS),
        },
    }


def _tags(routes: list[Route]) -> list[str]:
    seen: list[str] = []
    for route in routes:
        if route.tag not in seen:
            seen.append(route.tag)
    return seen


def _operation(route: Route) -> dict:
    op: dict = {
        "operationId": route.operation_id or f"{route.method.lower()}_{route.full_path.strip('/').replace('/', '_')}",
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    if route.scope is None:
        op["security"] = []
    else:
        op["x-required-scope"] = route.scope
        op["description"] = (op.get("description", "") + f" Needs the `{route.scope}` scope.").strip()
    params = [_path_param(name) for name in route.path_params] + [_query_param(p) for p in route.query]
    params += [_header_param(p) for p in route.headers]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "description": route.body_description or "a JSON object",
            "content": {"application/json": {"schema": copy.deepcopy(route.body)}},
        }
    op["responses"] = {str(code): _response(code, resp) for code, resp in sorted(_responses(route).items())}
    return op


def _responses(route: Route) -> dict[int, Response]:
    """The route's own responses plus those every route of its kind can give."""
    common = [400, 500]
    if route.scope is not None:
        common += [401, 403]
    if route.body is not None:
        common.append(413)
    out = dict(route.responses)
    for code, resp in schemas.error_responses(*common).items():
        out.setdefault(code, resp)
    if route.body is None and 400 not in route.responses:
        # nothing to be malformed but the query string
        out[400] = Response("bad input: an unknown, repeated or invalid query parameter", out[400].schema)
    return out


def _path_param(name: str) -> dict:
    from osapi.api import fleet
    from osapi.domain import operations

    known = {
        "job_id": (schemas.JOB_ID, "the job's id (a lower-case UUID)"),
        "interface_name": (operations.INTERFACE, "a network interface, e.g. eth0"),
        "hostname": (fleet.HOSTNAME, "an enrolled fleet host's name"),
    }
    schema, description = known.get(name, ({"type": "string"}, name))
    return {"name": name, "in": "path", "required": True, "schema": copy.deepcopy(schema),
            "description": description}


def _query_param(param: Param) -> dict:
    return {"name": param.name, "in": "query", "required": False,
            "schema": copy.deepcopy(param.schema), "description": param.description}


def _header_param(param: Param) -> dict:
    return {"name": param.name, "in": "header", "required": False,
            "schema": copy.deepcopy(param.schema), "description": param.description}


def _response(code: int, resp: Response) -> dict:
    out: dict = {"description": resp.description}
    if code == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                               "description": "Bearer challenge with the reason"}}
    if resp.headers:
        out["headers"] = copy.deepcopy(resp.headers)
    if resp.schema is not None:
        out["content"] = {resp.media_type: {"schema": copy.deepcopy(resp.schema)}}
    return out


def to_yaml(document: dict) -> str:
    import yaml

    header = (
        "# Generated by `python -m osapi.api.openapi` from the routes and the operations table.\n"
        "# Do not edit by hand; a test keeps this file equal to what the server serves.\n"
    )
    class NoAliases(yaml.SafeDumper):
        # shared schema objects are written out in full: no &id001 / *id001 for readers
        def ignore_aliases(self, data) -> bool:
            return True

    return header + yaml.dump(document, Dumper=NoAliases, sort_keys=False, allow_unicode=True, width=100)


def main() -> None:
    sys.stdout.write(to_yaml(build()))


if __name__ == "__main__":
    main()
