"""Publish a port of the real node on host loopback, as kind publishes its API server.

`python -m switchboard_testkit.relay --holder PID 127.0.0.1:HOSTPORT=10.240.0.2:6443 ...`
listens on host loopback and opens, for every connection, one inside the node's network
namespace (a socket made while this thread is there stays there: netns.enter). One process,
no address outside loopback and the node. socat cannot do this in one process: it would need a
second socat inside the namespace and a Unix socket between them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket

from switchboard_testkit import netns


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def _inside(holder: int) -> socket.socket:
    with netns.enter(holder):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def _serve(holder: int, listen: tuple[str, int], target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = _inside(holder)
        try:
            await loop.sock_connect(sock, target)
        except OSError:
            sock.close()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def _main(holder: int, rules: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_serve(holder, listen, target)) for listen, target in rules]
    await stop.wait()
    for task in tasks:
        task.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holder", type=int, required=True, help="the namespace holder's PID")
    parser.add_argument("rules", nargs="+", metavar="HOST:PORT=NODEHOST:PORT")
    args = parser.parse_args(argv)
    rules = []
    for rule in args.rules:
        listen, target = rule.split("=", 1)
        rules.append((_address(listen), _address(target)))
    asyncio.run(_main(args.holder, rules))


if __name__ == "__main__":
    main()
