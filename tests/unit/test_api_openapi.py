"""The OpenAPI document: committed file = generated = the app's routes; schemas are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from testkit import SIGNING_KEY
from jsonschema import Draft202012Validator

from osapi import config
from osapi.api import openapi
from osapi.api.app import create_app
from osapi.api.bridge import NatsBridge
from osapi.domain import operations

COMMITTED = Path(openapi.__file__).with_name("openapi.yaml")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def app():
    cfg = config.load(None, {"OSAPI_API_SERVER_SECURITY_SIGNING_KEY": SIGNING_KEY})
    return create_app(cfg, NatsBridge(cfg))


@pytest.fixture(scope="module")
def doc():
    return openapi.build()


def test_committed_document_is_the_generated_one(doc):
    committed = yaml.safe_load(COMMITTED.read_text())
    assert committed == doc, "osapi/api/openapi.yaml is stale: run `python -m osapi.api.openapi > osapi/api/openapi.yaml`"


def test_served_document_is_the_committed_one(app):
    assert app.services.openapi() == yaml.safe_load(COMMITTED.read_text())


def test_document_routes_equal_app_routes(app, doc):
    served = {(r.method, re.sub(r"<(\w+)(?::re:[^>]*)?>", r"{\1}", r.rule)) for r in app.bottle.routes}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    assert served == documented
    declared = {(op.rest.method, "/api/v1" + op.rest.path) for op in operations.OPERATIONS.values() if op.rest}
    assert declared <= served  # every route an operation declares is served (no count hard-coded)


def test_every_operation_type_has_a_domain_route_or_is_reachable_via_jobs(doc):
    descriptions = " ".join(op.get("description", "") for ops in doc["paths"].values() for op in ops.values())
    for op_type in operations.OPERATIONS:
        assert f"`{op_type}`" in descriptions, op_type


def test_security(doc):
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    open_routes = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op.get("security") == []:
                open_routes.add(f"{method.upper()} {path}")
                continue
            admin = path == "/api/v1/audit" or path.startswith("/api/v1/fleet/")
            wanted = "admin" if admin else "read" if method == "get" else "write"
            assert op["x-required-scope"] == wanted, (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
    assert open_routes == {"GET /health", "GET /health/ready", "GET /api/v1/version", "GET /api/v1/openapi.json"}


def test_every_operation_documents_parameters_bodies_and_errors(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for name in re.findall(r"\{(\w+)\}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op.get("parameters", [])), path
            assert "400" in op["responses"] and "500" in op["responses"]
            if method in ("put", "post"):
                assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
                assert "413" in op["responses"]
            for code, resp in op["responses"].items():
                if int(code) >= 400 and path != "/health/ready" and not (path == "/health/status" and code == "503"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if path.startswith("/api/v1/system") or path.startswith("/api/v1/network"):
                assert any(p["name"] == "target_hostname" and p["in"] == "query" for p in op["parameters"])
                assert "504" in op["responses"] and "503" in op["responses"]


def _schemas(node):
    if isinstance(node, dict):
        if "schema" in node and isinstance(node["schema"], dict):
            yield node["schema"]
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def test_every_schema_is_valid_json_schema(doc):
    found = list(_schemas(doc["paths"])) + list(doc["components"]["schemas"].values())
    assert len(found) > 50
    for schema in found:
        Draft202012Validator.check_schema(schema)
