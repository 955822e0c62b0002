"""The fault suite's TCP proxy: each mode does to a connection what it says."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from ops.chaos.proxy import Mode, TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = TcpProxy(server.server_address[1], delay_s=0.3)
    p.start()
    try:
        yield p
    finally:
        p.close()
        server.shutdown()
        server.server_close()


def _echo(port: int, payload: bytes, timeout_s: float = 2.0) -> bytes:
    """What comes back for ``payload``; b"" when the connection is cut (end of stream or a reset)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(payload)
            return s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_pass_and_slow(proxy: TcpProxy) -> None:
    assert _echo(proxy.port, b"ping") == b"ping"
    proxy.set_mode(Mode.SLOW)
    t0 = time.monotonic()
    assert _echo(proxy.port, b"slow") == b"slow"
    assert time.monotonic() - t0 >= 0.6  # delayed on the way there and back


def test_refuse_cuts_open_connections_and_new_ones(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        s.sendall(b"a")
        assert s.recv(10) == b"a"
        proxy.set_mode(Mode.REFUSE)
        try:
            data = s.recv(10)  # the proxy aborted the connection: end of stream or a reset
        except ConnectionResetError:
            data = b""
        assert data == b""
    assert _echo(proxy.port, b"c") == b""  # accepted, then cut at once: nothing comes back


def test_blackhole_holds_bytes_until_healed(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as s:
        proxy.set_mode(Mode.BLACKHOLE)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(10)
        proxy.set_mode(Mode.PASS)
        s.settimeout(2)
        assert s.recv(10) == b"held"
