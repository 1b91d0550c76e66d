"""The REST API (docs/api.md): Bottle on Waitress, JWT scopes, one NATS connection.

The path of a request, top to bottom:

``server.py`` (Waitress, signals) -> ``app.py`` (WSGI: CORS, access log, Bottle
routes, auth, error envelopes) -> a route module -- ``domain.py`` (the system and
network routes, generated from the operations table), ``jobs.py``,
``health.py``, ``audit.py`` (the audit log: written per request, read by
``GET /api/v1/audit``), ``metrics.py`` (``GET /metrics``) -> ``bridge.py`` (the asyncio loop holding the one NATS connection
and the ``JobClient``) -> NATS -> workers.

``routing.py`` describes routes and validates input; ``schemas.py`` and
``openapi.py`` build the OpenAPI document from the same route objects.
"""
