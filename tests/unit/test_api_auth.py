"""Bearer-token authentication and scopes, in-process: every 401/403 case (docs/api.md, Authentication and CORS)."""

from __future__ import annotations

import time

import jwt
import pytest
from testkit import SIGNING_KEY, make_token

from osapi.api.auth import Authenticator
from osapi.api.errors import ApiError

AUTH = Authenticator(SIGNING_KEY)


def _fails(header):
    with pytest.raises(ApiError) as info:
        AUTH.claims(header)
    return info.value


def _payload(**over):
    now = int(time.time())
    payload = {"sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + 600, "iss": "osapi"}
    payload.update(over)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.mark.parametrize("header, reason", [
    (None, "no Authorization header"),
    ("", "no Authorization header"),
    ("Basic dXNlcjpwYXNz", "Bearer scheme"),
    ("Token abc", "Bearer scheme"),
])
def test_no_bearer_token_is_401_without_error_code(header, reason):
    err = _fails(header)
    assert err.status == 401
    assert err.error == "authentication required"
    assert reason in err.details
    assert err.headers["WWW-Authenticate"] == 'Bearer realm="osapi"'


def _invalid(header: str, reason: str) -> None:
    err = _fails(header)
    assert err.status == 401
    assert err.error == "invalid token"
    assert reason in err.details, err.details
    challenge = err.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    token = header.partition(" ")[2]
    if len(token) > 8:
        assert token not in err.details and token not in challenge  # never echoed


def test_wrong_signing_key():
    _invalid("Bearer " + make_token(key="another-key-" + "z" * 40), "signature")


def test_expired():
    _invalid("Bearer " + make_token(now=time.time() - 7200, expires_in=60), "expired")


def test_missing_exp():
    _invalid("Bearer " + jwt.encode(_payload(exp=None), SIGNING_KEY, algorithm="HS256"), "'exp'")


def test_alg_none():
    token = jwt.encode(_payload(), None, algorithm="none")
    _invalid("Bearer " + token, "algorithm 'none'")


def test_other_algorithm():
    _invalid("Bearer " + jwt.encode(_payload(), SIGNING_KEY + "x" * 40, algorithm="HS512"), "algorithm 'HS512'")


def test_tampered_payload():
    head, _body, sig = make_token(roles=["read"]).split(".")
    forged = jwt.encode(_payload(), "x" * 40, algorithm="HS256").split(".")[1]
    _invalid(f"Bearer {head}.{forged}.{sig}", "signature")


@pytest.mark.parametrize("header, reason", [
    ("Bearer", "'Bearer <token>'"),
    ("Bearer ", "'Bearer <token>'"),
    ("Bearer a b", "one token"),
    ("Bearer not-a-jwt", "malformed"),
    ("Bearer a.b.c", "malformed"),
])
def test_malformed_header_or_token(header, reason):
    _invalid(header, reason)


def test_unknown_role_is_401():
    _invalid("Bearer " + jwt.encode(_payload(roles=["root"]), SIGNING_KEY, algorithm="HS256"), "unknown role")


def test_wrong_issuer_is_401():
    _invalid("Bearer " + jwt.encode(_payload(iss="someone"), SIGNING_KEY, algorithm="HS256"), "issued by")


def test_scheme_is_case_insensitive_and_valid_token_gives_claims():
    claims = AUTH.claims("bearer " + make_token(roles=["write"], subject="ci"))
    assert claims.subject == "ci"
    assert claims.scopes == {"read", "write"}


@pytest.mark.parametrize("roles, scope, allowed", [
    (["read"], "read", True),
    (["read"], "write", False),
    (["write"], "write", True),
    (["write"], "admin", False),
    (["admin"], "write", True),
    (["admin"], "admin", True),
])
def test_scopes(roles, scope, allowed):
    claims = AUTH.claims("Bearer " + make_token(roles=roles, subject="sam"))
    if allowed:
        AUTH.require(claims, scope)
        return
    with pytest.raises(ApiError) as info:
        AUTH.require(claims, scope)
    err = info.value
    assert err.status == 403
    assert err.error == f"missing scope {scope}"
    # the details say what the token has; the missing scope is said once, in the error
    assert err.details == f"the token of 'sam' (roles: {', '.join(roles)}) grants: {', '.join(sorted(claims.scopes))}"
