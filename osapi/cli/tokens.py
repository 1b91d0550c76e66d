"""``osapi token generate|validate``: sign and check the API's JWTs."""

from __future__ import annotations

import datetime as dt

from osapi.cli import Context, add_group, add_parser
from osapi.errors import OperationError, UsageError


NAME = "token"
HELP = "generate and validate API tokens (JWT, HS256)"


def register(subparsers) -> None:
    tokens = add_group(subparsers, NAME, HELP)

    gen = add_parser(tokens, "generate", "print a signed token")
    gen.add_argument("-r", "--roles", required=True, metavar="R[,R]",
                     help="comma-separated roles: admin, write, read")
    gen.add_argument("-u", "--subject", required=True, metavar="S", help="who the token is for (the sub claim)")
    gen.add_argument("--expires", default="90d", metavar="DURATION",
                     help="lifetime such as 12h, 30d (default: 90d)")
    gen.set_defaults(func=generate)

    val = add_parser(tokens, "validate", "check a token; exit 1 if it is not valid")
    val.add_argument("-t", "--token", required=True, metavar="T", help="the token to check")
    val.set_defaults(func=validate)


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(ctx: Context) -> None:
    from osapi import authtoken, config

    try:
        lifetime = config.parse_duration(ctx.args.expires)
    except config.Invalid as exc:
        raise UsageError(f"--expires {exc}") from None
    roles = [r.strip() for r in ctx.args.roles.split(",") if r.strip()]
    try:
        authtoken.check_roles(roles)
    except authtoken.TokenError as exc:
        raise UsageError(f"--roles: {exc}") from None
    if not ctx.args.subject.strip():
        raise UsageError("--subject must not be empty")
    key = config.signing_key(ctx.config)
    token = authtoken.generate(key, roles, ctx.args.subject, lifetime)
    if ctx.json:
        claims = authtoken.validate(token, key)
        ctx.print_json({"token": token, **_claims_json(claims)})
    else:
        ctx.print(token)


def _claims_json(claims) -> dict:
    return {
        "subject": claims.subject,
        "roles": list(claims.roles),
        "scopes": sorted(claims.scopes),
        "issued_at": _iso(claims.issued_at),
        "expires_at": _iso(claims.expires_at),
    }


def validate(ctx: Context) -> None:
    from osapi import authtoken, config
    from osapi.cli.output import key_values

    key = config.signing_key(ctx.config)
    try:
        claims = authtoken.validate(ctx.args.token, key)
    except authtoken.TokenError as exc:
        if ctx.json:
            ctx.print_json({"valid": False, "error": str(exc)})
        raise OperationError(f"token is not valid: {exc}") from None
    data = {"valid": True, **_claims_json(claims)}
    ctx.emit(data, lambda d: key_values([
        ("subject", d["subject"]),
        ("roles", ", ".join(d["roles"])),
        ("scopes", ", ".join(d["scopes"])),
        ("issued", d["issued_at"]),
        ("expires", d["expires_at"]),
    ]))
