"""Bearer-token authentication and scope checks (docs/api.md, Authentication and CORS).

``Authenticator.claims(header)`` turns an ``Authorization`` header into the
token's claims or an ``ApiError``: **401** (with ``WWW-Authenticate: Bearer``)
when there is no usable token -- missing, not ``Bearer``, another algorithm,
``none``, a bad signature, no or a past ``exp`` -- and **403** when a valid token
lacks the scope the route needs. The JSON ``details`` carries the reason, in the
spirit of RFC 6750's ``error_description``; the token itself is never echoed or
logged.
"""

from __future__ import annotations

from osapi import authtoken
from osapi.api.errors import ApiError

REALM = "osapi"


def _challenge(error: str | None = None, description: str | None = None) -> str:
    """The ``WWW-Authenticate`` value (RFC 6750 §3); quotes stripped from the description."""
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = description.replace('"', "'").replace("\\", "/")
        parts.append(f'error_description="{safe}"')
    return ", ".join(parts)


def unauthorized(reason: str, *, token_given: bool) -> ApiError:
    """401: no token (no ``error`` attribute, per RFC 6750) or an invalid one."""
    header = _challenge("invalid_token", reason) if token_given else _challenge()
    error = "invalid token" if token_given else "authentication required"
    return ApiError(401, error, reason, headers={"WWW-Authenticate": header})


class Authenticator:
    """Validates bearer tokens against one signing key."""

    def __init__(self, signing_key: str):
        self._key = signing_key

    def claims(self, header: str | None) -> authtoken.Claims:
        if header is None or not header.strip():
            raise unauthorized(
                "no Authorization header; send 'Authorization: Bearer <token>' "
                "(create one with `osapi token generate`)",
                token_given=False,
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise unauthorized(
                f"the Authorization header must use the Bearer scheme, got {scheme[:20]!r}",
                token_given=False,
            )
        token = token.strip()
        if not token or " " in token:
            raise unauthorized("the Authorization header must be 'Bearer <token>' with one token",
                               token_given=True)
        try:
            return authtoken.validate(token, self._key)
        except authtoken.TokenError as exc:
            raise unauthorized(str(exc), token_given=True) from None

    @staticmethod
    def require(claims: authtoken.Claims, scope: str) -> None:
        """403 unless the token's roles grant ``scope``."""
        if scope in claims.scopes:
            return
        granted = ", ".join(sorted(claims.scopes)) or "nothing"
        raise ApiError(
            403,
            f"missing scope {scope}",  # the category; details: what the token has instead
            f"the token of {claims.subject!r} (roles: {', '.join(claims.roles) or 'none'}) grants: {granted}",
            headers={"WWW-Authenticate": _challenge("insufficient_scope", f"needs scope {scope}")},
        )
