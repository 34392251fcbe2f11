"""A TCP proxy on loopback that a test can freeze: a network that stalls and then recovers.

    python -m switchboard_testkit.freeze_proxy UPSTREAM_PORT PORT_FILE

It listens on 127.0.0.1 (a free port, written to PORT_FILE once it listens) and forwards every
connection to 127.0.0.1:UPSTREAM_PORT. SIGUSR1 freezes it: nothing more is forwarded in either
direction, nothing is lost; SIGUSR2 thaws it: what was held is delivered, as TCP delivers a
stalled stream once the network heals. That is the harsh case for leader election: a replica
cut off from the API server whose requests still arrive later. Written here because no
library offers a freezable proxy (toxiproxy is a Go service with a different control API).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from switchboard_testkit.controlplane import stop_pid, wait_for

CHUNK = 65536


class FreezeProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(CHUNK):
                # At most one chunk per direction is held while frozen; the rest waits in
                # the kernel's buffers, as in a stalled network.
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def run(self, port_file: Path) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.flowing.clear)
        loop.add_signal_handler(signal.SIGUSR2, self.flowing.set)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.rename(port_file)
        async with server:
            await stop.wait()


class Proxy:
    """The proxy as a child process, stopped by its PID."""

    def __init__(self, upstream_port: int, workdir: Path) -> None:
        self.upstream_port, self.workdir = upstream_port, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> Proxy:
        port_file = self.workdir / f"freeze-proxy-{os.getpid()}-{id(self)}.port"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard_testkit.freeze_proxy", str(self.upstream_port),
             str(port_file)], stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(port_file.exists, timeout, "the freeze proxy to listen")
        self.port = int(port_file.read_text())
        return self

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, "proxy not running"
        os.kill(self.proc.pid, sig)

    def freeze(self) -> None:
        self._signal(signal.SIGUSR1)

    def thaw(self) -> None:
        self._signal(signal.SIGUSR2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid)
            self.proc.wait(5)


def main() -> None:
    upstream, port_file = int(sys.argv[1]), Path(sys.argv[2])
    asyncio.run(FreezeProxy(upstream).run(port_file))


if __name__ == "__main__":
    main()
