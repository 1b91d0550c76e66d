"""JWT tokens: generate, validate, roles -> scopes (docs/api.md, Authentication and CORS).

HS256 only. Claims: ``sub``, ``roles`` (a non-empty list of known roles), ``iat``,
``exp`` (required), ``iss: osapi``. Anything else -- another algorithm, ``none``, a
bad signature, a missing or past ``exp``, a tampered or malformed token -- is a
``TokenError`` whose message says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ALGORITHM = "HS256"
ISSUER = "osapi"
MAX_TOKEN_LENGTH = 8192

ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "admin": ("read", "write", "admin"),
    "write": ("read", "write"),
    "read": ("read",),
}
ROLES = tuple(ROLE_SCOPES)


class TokenError(Exception):
    """The token is not acceptable; ``str()`` says why, without echoing the token."""


@dataclass(frozen=True)
class Claims:
    subject: str
    roles: tuple[str, ...]
    issued_at: int
    expires_at: int

    @property
    def scopes(self) -> frozenset[str]:
        return scopes_for(self.roles)

    def as_dict(self) -> dict:
        return {
            "subject": self.subject,
            "roles": list(self.roles),
            "scopes": sorted(self.scopes),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }


def scopes_for(roles) -> frozenset[str]:
    return frozenset(scope for role in roles for scope in ROLE_SCOPES.get(role, ()))


def check_roles(roles) -> tuple[str, ...]:
    """A non-empty list of known role names, duplicates dropped, order kept."""
    if not isinstance(roles, (list, tuple)) or not roles:
        raise TokenError("roles must be a non-empty list")
    out: list[str] = []
    for role in roles:
        if not isinstance(role, str) or role not in ROLE_SCOPES:
            raise TokenError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        if role not in out:
            out.append(role)
    return tuple(out)


def generate(signing_key: str, roles, subject: str, expires_in: float, now: float | None = None) -> str:
    import jwt

    if not subject or not subject.strip():
        raise TokenError("subject must not be empty")
    roles = check_roles(list(roles))
    if expires_in <= 0:
        raise TokenError("expiry must be in the future")
    issued = int(now if now is not None else time.time())
    payload = {
        "sub": subject,
        "roles": list(roles),
        "iat": issued,
        "exp": issued + int(expires_in),
        "iss": ISSUER,
    }
    return jwt.encode(payload, signing_key, algorithm=ALGORITHM)


def validate(token: str, signing_key: str) -> Claims:
    """The token's claims, or ``TokenError`` naming what is wrong."""
    import jwt

    if not isinstance(token, str) or not token.strip():
        raise TokenError("token is empty")
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"token is longer than {MAX_TOKEN_LENGTH} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("token is malformed (not a JWT)") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"algorithm {header.get('alg')!r} is not accepted (only {ALGORITHM})")
    try:
        payload = jwt.decode(
            token,
            signing_key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("signature does not match the signing key") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise TokenError(f"token was not issued by {ISSUER}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token is not valid yet (iat in the future)") from None
    except jwt.DecodeError:
        raise TokenError("token is malformed or tampered with") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"token is invalid: {exc}") from None
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenError("token subject must be a non-empty string")
    roles = check_roles(payload.get("roles"))
    return Claims(subject=subject, roles=roles, issued_at=int(payload["iat"]), expires_at=int(payload["exp"]))
