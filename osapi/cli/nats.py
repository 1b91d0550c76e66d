"""``osapi nats server start``: run nats-server with JetStream from ``nats.server.*``."""

from __future__ import annotations

from osapi.cli import Context, add_group, add_parser


NAME = "nats"
HELP = "the NATS JetStream server the jobs travel through"


def register(subparsers) -> None:
    nats = add_group(subparsers, NAME, HELP)
    server = add_group(nats, "server", "run nats-server")
    start = add_parser(
        server, "start",
        "run nats-server with JetStream in the foreground: renders <state_dir>/nats-server.conf "
        "from nats.server.* (host, port, store_dir, auth token, cluster, tls), then becomes nats-server "
        "(signals go to it, its exit status is ours)",
        epilog="Binary: nats.server.binary, else the nats-server bundled in osapi.pyz, else PATH. "
        "Token: nats.server.auth.token, else <state_dir>/secrets/nats.token; with neither the "
        "server runs without authentication (a warning says so) unless --require-auth is given. "
        "One server per JetStream store: the store is locked (<store_dir>/.osapi-nats.lock, held by "
        "nats-server until it exits); a start on a store another server holds, or on a port in use, "
        "is refused with exit status 2 before anything is written. TLS (nats.server.tls.enabled): "
        "required from clients and routes, with nats.server.tls.cert_file/key_file/ca_file or a CA and "
        "certificate generated once into <state_dir>/secrets/ (needs the openssl command).",
    )
    start.add_argument("--require-auth", action="store_true",
                       help="refuse to start without a token (osapi supervise passes this)")
    start.add_argument("--log-file", metavar="PATH",
                       help="nats-server writes its log to PATH itself (rotated at 10 MB, 5 kept) instead of "
                       "to stderr (osapi supervise passes <state_dir>/logs/nats-server.log)")
    start.set_defaults(func=start_server)


def start_server(ctx: Context) -> int:
    from osapi import natsd

    natsd.exec_server(ctx.config, require_auth=ctx.args.require_auth, log_file=ctx.args.log_file)
    return 1  # not reached: exec_server replaces this process or raises
