"""``/api/v1/fleet/hosts``: enroll, list and revoke fleet hosts (README.md, "Fleet hosts"); admin scope.

``POST`` checks the hostname and labels before anything reaches NATS (a refused
request stores nothing), creates the host's consumer on its enrolled labels and
its entry (``osapi.fleet.hosts``), and answers the bundle (``osapi.fleet.bundle``):
the only time the credentials leave the control plane. Every control-plane node
then renders the new user into its nats-server (``osapi.fleet.renderer``).
"""

from __future__ import annotations

import asyncio

from osapi.api import audit, schemas
from osapi.api.errors import ApiError, bad_request, not_found
from osapi.api.routing import Call, Reply, Response, Route, check_fields, json_type
from osapi.fleet import auth, bundle, hosts
from osapi.job.registry import Registry, by_host

TAG = "fleet"
TIMEOUT = 15.0

LABELS = {"type": "object", "additionalProperties": {"type": "string", "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"},
          "propertyNames": {"pattern": "^[A-Za-z0-9_-]{1,64}$"}, "maxProperties": hosts.MAX_LABELS,
          "description": "the host's labels; they decide which label targets reach it, whatever it configures"}
HOSTNAME = {"type": "string", "minLength": 1, "maxLength": 253,
            "pattern": r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$",
            "description": "the host's name, as its worker's job.worker.hostname (stored in lower case)"}
ENROLL_REQUEST = {"type": "object", "properties": {
    "hostname": HOSTNAME, "labels": LABELS,
    "rotate": {"type": "boolean", "default": False,
               "description": "the host is enrolled: issue new credentials (the old ones stop working)"}},
    "required": ["hostname"], "additionalProperties": False}
ENROLLED = schemas.obj({
    "hostname": schemas.STR, "labels": {"type": "object", "additionalProperties": schemas.STR},
    "enrolled_at": schemas.TIME,
    "bundle": {"type": "string", "description": "the host's complete osapi.yaml (holds its NATS password)"}})
HOST = schemas.obj({
    "hostname": schemas.STR, "labels": {"type": "object", "additionalProperties": schemas.STR},
    "enrolled_at": schemas.TIME,
    "connected": {"type": "boolean", "description": "a worker of the host is in the worker registry"},
    "last_seen": {"anyOf": [schemas.TIME, {"type": "null"}], "description": "its latest heartbeat, or null"}})
HOST_LIST = schemas.obj({"total": {"type": "integer"}, "hosts": {"type": "array", "items": HOST}})


def _hostname(value) -> str:
    try:
        return auth.check_hostname(value)
    except auth.InvalidHost as exc:
        raise bad_request("invalid hostname", str(exc)) from None


def enroll(call: Call) -> Reply:
    body = call.body_object()
    check_fields(body, {"hostname", "labels", "rotate"})
    if "hostname" not in body:
        raise bad_request("missing field hostname", "the host's name, as its worker's job.worker.hostname")
    hostname = _hostname(body["hostname"])
    labels = None  # absent: a new host has none, a rotation keeps its labels
    if "labels" in body:
        if body["labels"] is None:
            raise bad_request("invalid field labels", "labels must be an object of label to value, got null; "
                              "leave labels out to keep them")
        try:
            labels = hosts.check_labels(body["labels"])
        except auth.InvalidHost as exc:
            raise bad_request("invalid field labels", str(exc)) from None
    rotate = body.get("rotate", False)
    if not isinstance(rotate, bool):
        raise bad_request("invalid field rotate", f"rotate must be true or false, got {json_type(rotate)}")
    audit.note(call.environ, target=hostname)
    cfg = call.services.cfg
    try:
        entry = call.services.bridge.call(lambda client: hosts.enroll(client.store, cfg, hostname, labels, rotate),
                                          TIMEOUT)
    except hosts.AlreadyEnrolled:
        raise ApiError(409, "host already enrolled",
                       f"{hostname} is enrolled; send rotate: true to issue new credentials") from None
    return Reply(201, {"hostname": entry["hostname"], "labels": entry["labels"], "enrolled_at": entry["enrolled_at"],
                       "bundle": bundle.render(cfg, entry)})


def list_hosts(call: Call) -> Reply:
    async def listing(client) -> dict:
        return await hosts.listing(client.store, by_host(await Registry(client.store).entries()))

    return Reply(200, call.services.bridge.call(listing, TIMEOUT))


def revoke(call: Call) -> Reply:
    hostname = call.path["hostname"]
    try:
        hostname = auth.check_hostname(hostname)
    except auth.InvalidHost as exc:
        raise bad_request("invalid hostname", str(exc)) from None
    audit.note(call.environ, target=hostname)
    bridge = call.services.bridge
    try:
        store = bridge.call(lambda client: _revoke(client, hostname), TIMEOUT)
    except hosts.NotEnrolled:
        raise not_found("host not enrolled", f"{hostname} is not an enrolled fleet host") from None
    # a heartbeat it sent before every node dropped it: removed again, in the background
    _later.add(asyncio.run_coroutine_threadsafe(hosts.forget_again(store, hostname), bridge.loop))
    _later.difference_update({f for f in _later if f.done()})
    return Reply(204, None)


_later: set = set()  # the pending forget_again of revocations


async def _revoke(client, hostname: str):
    await hosts.revoke(client.store, hostname)
    return client.store


_err = schemas.error_responses


def routes() -> list[Route]:
    return [
        Route("POST", "/fleet/hosts", enroll, "enroll a fleet host (or rotate its credentials)", TAG, "admin",
              body=ENROLL_REQUEST, body_description="the host and its labels; unknown fields are refused",
              responses={201: Response("enrolled: the host's bundle (its complete osapi.yaml)", ENROLLED),
                         409: Response("the host is enrolled and rotate is not true; nothing changed",
                                       schemas.ref("Error")),
                         **_err(400, 401, 403, 413, 503)},
              description="Creates the host's NATS user, whose permissions nats-server enforces (take, read and "
                          "answer jobs under its own hostname only), and its job consumer, filtered on the "
                          "enrolled hostname and labels. Every control-plane node applies the new user within "
                          "seconds, without a restart. `rotate: true` issues new credentials (and takes new "
                          "labels when given): the old ones stop working.",
              operation_id="fleet_hosts_enroll"),
        Route("GET", "/fleet/hosts", list_hosts, "enrolled fleet hosts", TAG, "admin",
              responses={200: Response("every enrolled host, by hostname", HOST_LIST), **_err(400, 401, 403, 503)},
              operation_id="fleet_hosts_list"),
        Route("DELETE", "/fleet/hosts/{hostname}", revoke, "revoke a fleet host", TAG, "admin",
              responses={204: Response("revoked: every node refuses its credentials and drops its connections "
                                       "within 10 s"), **_err(400, 401, 403, 404, 503)},
              operation_id="fleet_hosts_revoke"),
    ]
