"""Every route the API serves, in the order of the OpenAPI document: read by the
WSGI app (``app.py``) and by the document (``openapi.py``).
"""

from __future__ import annotations

from osapi.api.routing import Route


def all_routes(cfg=None) -> list[Route]:
    """Every route the API serves, in the order of the document (``cfg``: whether /metrics is public)."""
    from osapi.api import audit, domain, fleet, health, jobs, metrics

    return [*domain.routes(), *jobs.routes(), *fleet.routes(), *audit.routes(), *health.routes(),
            *metrics.routes(cfg)]
