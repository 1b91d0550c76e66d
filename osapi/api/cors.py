"""CORS per ``api.server.security.cors.allow_origins`` (docs/api.md, Authentication and CORS).

An allowed ``Origin`` gets ``Access-Control-Allow-Origin: <that origin>`` and
``Vary: Origin`` on every answer, errors included; a preflight ``OPTIONS`` gets
204 with the allowed methods and headers. ``'*'`` in the list allows any origin
(the answer still names the origin, so credentials keep working). Any other
origin, or an empty list: no CORS headers at all -- the browser then refuses,
which is the point.
"""

from __future__ import annotations

ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"  # Idempotency-Key: POST /jobs
MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, allow_origins: list[str] | tuple[str, ...]):
        origins = [o.strip() for o in allow_origins if o and o.strip()]
        self.any = "*" in origins
        # browsers send the origin without a trailing slash; compare case-insensitively
        self.origins = frozenset(o.rstrip("/").lower() for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        if not origin or not self.enabled:
            return False
        return self.any or origin.rstrip("/").lower() in self.origins

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for an ordinary answer to a request from ``origin``."""
        if not self.allows(origin):
            return []
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def preflight_headers(self, origin: str | None, methods: list[str]) -> list[tuple[str, str]]:
        """Headers for the 204 answer to a preflight from ``origin``."""
        if not self.allows(origin):
            return []
        allowed = sorted(set(methods) | {"OPTIONS"})
        return self.headers(origin) + [
            ("Access-Control-Allow-Methods", ", ".join(allowed)),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE),
        ]
