"""A TCP proxy on loopback that a scenario steers: pass, refuse, blackhole or slow.

It runs in its own thread with its own event loop, so the scenario's loop can wait
on anything while the proxy keeps forwarding. Modes:

- ``pass``: bytes flow both ways;
- ``refuse``: new connections are closed at once and open ones are cut (a server that
  is down: the client sees resets and refused connects);
- ``blackhole``: connections are accepted but nothing flows either way (a partition or a
  hung server): bytes are held, not dropped, and flow again once the mode is ``pass``,
  as TCP retransmission would deliver them after a partition heals;
- ``slow``: every chunk waits ``delay_s`` before it is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from enum import StrEnum


class Mode(StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"
    SLOW = "slow"


class TcpProxy:
    def __init__(self, target_port: int, delay_s: float = 0.2) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.mode = Mode.PASS
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)

    def start(self) -> int:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.port

    def set_mode(self, mode: Mode) -> None:
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.REFUSE:
            for w in list(self._writers):
                w.transport.abort()  # an RST, as from a server that went away

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REFUSE:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_w}
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            for w in (writer, up_w):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                if self.mode is Mode.SLOW:
                    await asyncio.sleep(self.delay_s)
                if self.mode is Mode.REFUSE:
                    break
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()
