"""docs/api.md, Authentication: JWT generation and validation, `osapi token …`."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from osapi import authtoken

KEY = "k" * 40
ENV = {"OSAPI_API_SERVER_SECURITY_SIGNING_KEY": KEY}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(payload: dict, alg: str = "none", key: str = "") -> str:
    if alg == "none":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."
    return jwt.encode(payload, key, algorithm=alg)


def claims(**over) -> dict:
    now = int(time.time())
    base = {"sub": "ops", "roles": ["read"], "iat": now, "exp": now + 3600, "iss": "osapi"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


# ---------------------------------------------------------------- library


def test_generate_then_validate_round_trip():
    token = authtoken.generate(KEY, ["admin"], "alice", 90 * 86400)
    c = authtoken.validate(token, KEY)
    assert c.subject == "alice"
    assert c.roles == ("admin",)
    assert c.scopes == {"read", "write", "admin"}
    assert c.expires_at - c.issued_at == 90 * 86400
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    payload = jwt.decode(token, KEY, algorithms=["HS256"], issuer="osapi")
    assert set(payload) == {"sub", "roles", "iat", "exp", "iss"}


@pytest.mark.parametrize(
    "roles, scopes",
    [(["admin"], {"read", "write", "admin"}), (["write"], {"read", "write"}), (["read"], {"read"}),
     (["read", "write"], {"read", "write"})],
)
def test_roles_to_scopes(roles, scopes):
    assert authtoken.scopes_for(roles) == scopes


@pytest.mark.parametrize("roles", [[], ["root"], ["read", "superuser"], "admin"])
def test_unknown_or_empty_roles_are_refused(roles):
    with pytest.raises(authtoken.TokenError):
        authtoken.generate(KEY, roles if isinstance(roles, list) else roles, "x", 60)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: authtoken.generate("w" * 40, ["read"], "x", 60), "signature does not match"),
        (lambda: forged(claims(exp=int(time.time()) - 10), "HS256", KEY), "expired"),
        (lambda: forged(claims(exp=None), "HS256", KEY), "no 'exp' claim"),
        (lambda: forged(claims()), "algorithm 'none' is not accepted"),
        (lambda: forged(claims(), "HS512", KEY * 2), "algorithm 'HS512' is not accepted"),
        (lambda: forged(claims(iss="someone-else"), "HS256", KEY), "not issued by osapi"),
        (lambda: forged(claims(roles="admin"), "HS256", KEY), "roles must be a non-empty list"),
        (lambda: forged(claims(roles=["god"]), "HS256", KEY), "unknown role 'god'"),
        (lambda: forged(claims(sub=None), "HS256", KEY), "no 'sub' claim"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: "a.b.c", "malformed"),
        (lambda: "", "empty"),
        (lambda: "x" * 10000, "longer than"),
    ],
)
def test_invalid_tokens_are_refused_with_a_reason(make, reason):
    with pytest.raises(authtoken.TokenError, match=reason):
        authtoken.validate(make(), KEY)


def test_tampered_payload_is_refused():
    token = authtoken.generate(KEY, ["read"], "x", 60)
    head, _payload, sig = token.split(".")
    evil = b64(claims(roles=["admin"]))
    with pytest.raises(authtoken.TokenError, match="signature does not match"):
        authtoken.validate(f"{head}.{evil}.{sig}", KEY)


def test_token_signed_with_a_public_string_is_refused():
    token = forged(claims(roles=["admin"]), "HS256", "osapi-public-string-that-everyone-knows")
    with pytest.raises(authtoken.TokenError, match="signature"):
        authtoken.validate(token, KEY)


# ---------------------------------------------------------------- CLI


def test_cli_generate_prints_a_token_that_validates(cli):
    r = cli("token", "generate", "-r", "write,read", "-u", "deploy-bot", "--expires", "12h", env=ENV)
    assert r.status == 0, r.stderr
    token = r.stdout.strip()
    c = authtoken.validate(token, KEY)
    assert c.subject == "deploy-bot" and c.roles == ("write", "read")
    assert c.expires_at - c.issued_at == 12 * 3600


def test_cli_generate_default_expiry_is_90_days(cli):
    r = cli("token", "generate", "--roles", "read", "--subject", "x", env=ENV)
    c = authtoken.validate(r.stdout.strip(), KEY)
    assert c.expires_at - c.issued_at == 90 * 86400


def test_cli_generate_json(cli):
    r = cli("--json", "token", "generate", "-r", "admin", "-u", "x", env=ENV)
    data = json.loads(r.stdout)
    assert data["roles"] == ["admin"] and data["subject"] == "x"
    assert authtoken.validate(data["token"], KEY).subject == "x"


def test_cli_validate_prints_roles_subject_expiry(cli):
    token = authtoken.generate(KEY, ["read"], "carol", 3600)
    r = cli("token", "validate", "-t", token, env=ENV)
    assert r.status == 0
    assert "subject: carol" in r.stdout
    assert "roles:   read" in r.stdout
    assert "expires:" in r.stdout and "issued:" in r.stdout


def test_cli_validate_json_flag_after_the_subcommand(cli):
    token = authtoken.generate(KEY, ["write"], "dave", 3600)
    r = cli("token", "validate", "--token", token, "-j", env=ENV)
    data = json.loads(r.stdout)
    assert data["valid"] is True and data["roles"] == ["write"] and data["scopes"] == ["read", "write"]


@pytest.mark.parametrize(
    "token, reason",
    [
        (authtoken.generate("w" * 40, ["read"], "x", 60), "signature does not match"),
        (forged(claims()), "algorithm 'none'"),
        (forged(claims(exp=int(time.time()) - 5), "HS256", KEY), "expired"),
        (forged(claims(exp=None), "HS256", KEY), "no 'exp'"),
        ("garbage", "malformed"),
    ],
)
def test_cli_validate_exits_1_for_invalid_tokens(cli, token, reason):
    r = cli("token", "validate", "-t", token, env=ENV)
    assert r.status == 1
    assert reason in r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-r", "root", "-u", "x"], "unknown role 'root'"),
        (["-r", "", "-u", "x"], "roles must be a non-empty list"),
        (["-r", "read", "-u", "   "], "subject must not be empty"),
        (["-r", "read", "-u", "x", "--expires", "soon"], "--expires must be a duration"),
        (["-r", "read"], "the following arguments are required: -u/--subject"),
    ],
)
def test_cli_generate_bad_input_exits_2(cli, args, message):
    r = cli("token", "generate", *args, env=ENV)
    assert r.status == 2
    assert message in r.stderr
    assert r.stdout == ""


def test_cli_generate_without_a_signing_key_explains(cli, tmp_path):
    r = cli("token", "generate", "-r", "read", "-u", "x", env={"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "empty")})
    assert r.status == 2
    assert "no signing key" in r.stderr and "signing_key" in r.stderr


def test_cli_uses_the_state_dir_signing_key(cli, tmp_path):
    (tmp_path / "st" / "secrets").mkdir(parents=True)
    (tmp_path / "st" / "secrets" / "signing_key").write_text("z" * 64)
    r = cli("token", "generate", "-r", "read", "-u", "x", env={"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "st")})
    assert r.status == 0
    assert authtoken.validate(r.stdout.strip(), "z" * 64).subject == "x"
