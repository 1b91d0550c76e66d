"""Run a command in a private network namespace that can reach only one TCP service.

Why: the hostile-input test lets schemathesis invent ping addresses and DNS
changes. The worker that executes them must not be able to send a packet
anywhere but loopback. In a fresh network namespace (``unshare --net``) only
``lo`` exists, so every address but the namespace's own loopback is
unreachable -- but then the worker cannot reach nats-server either. A unix
socket crosses namespaces (it is a file), so two small forwarders carry the one
NATS connection:

    host netns:  unix SOCK  ->  127.0.0.1:NATS_PORT         (``serve-unix``)
    private ns:  127.0.0.1:PORT  ->  unix SOCK               (``wrap``, then runs the command)

Usage::

    python netns_forward.py serve-unix SOCK NATS_PORT
    unshare --net -- python netns_forward.py wrap SOCK PORT -- CMD...

``wrap`` brings ``lo`` up, refuses to run if any interface but ``lo`` exists,
runs CMD as its child, passes SIGTERM/SIGINT on and exits with CMD's status.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import struct
import sys

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def _forward(connect):
    async def handle(reader, writer):
        try:
            up_reader, up_writer = await connect()
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


async def serve_unix(path: str, port: int) -> None:
    server = await asyncio.start_unix_server(
        _forward(lambda: asyncio.open_connection("127.0.0.1", port)), path=path)
    os.chmod(path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


async def wrap(path: str, port: int, argv: list[str]) -> int:
    lo_up()
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        print(f"netns_forward: refusing to run: interfaces {names} exist, expected only lo", file=sys.stderr)
        return 3
    server = await asyncio.start_server(
        _forward(lambda: asyncio.open_unix_connection(path)), host="127.0.0.1", port=port)
    proc = await asyncio.create_subprocess_exec(*argv)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: proc.returncode is None and proc.send_signal(s))
    async with server:
        return await proc.wait()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve-unix":
        asyncio.run(serve_unix(argv[1], int(argv[2])))
        return 0
    if len(argv) >= 5 and argv[0] == "wrap" and argv[3] == "--":
        return asyncio.run(wrap(argv[1], int(argv[2]), argv[4:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
