"""``osapi api server start``: run the REST API in the foreground."""

from __future__ import annotations

from osapi.cli import Context, add_group, add_parser


NAME = "api"
HELP = "the REST API server"


def register(subparsers) -> None:
    api = add_group(subparsers, NAME, HELP)
    server = add_group(api, "server", "run the REST API server")
    start = add_parser(
        server, "start",
        "serve the REST API (foreground) on api.server.host:api.server.port until SIGTERM/SIGINT",
        epilog="Exit status: 0 after SIGTERM/SIGINT; 2 when the port is taken or the configuration is invalid.",
    )
    start.set_defaults(func=start_server)


def start_server(ctx: Context) -> int:
    from osapi import config
    from osapi.api.server import ApiServer
    from osapi.process import exit_with_supervisor

    exit_with_supervisor()  # under supervise: never outlive a killed supervisord
    config.nats_token(ctx.config)  # a state-dir token another user could have written: exit 2 now
    from osapi.job.connection import tls_context

    tls_context(ctx.config)  # nats.tls.ca that is no readable CA: exit 2 now, not 503s forever
    ApiServer(ctx.config).serve()
    return 0
