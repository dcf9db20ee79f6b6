"""The least a TLS-terminating proxy process can do: a floor for bench/local_endpoint.py.

    python bench/_tls_relay.py CERT KEY BACKEND_UNIX_SOCKET

Accepts PostgreSQL clients on 127.0.0.1 (SSLRequest, then TLS), opens one backend
connection per client over the Unix socket, and copies bytes both ways without looking at
them: no token check, no framing, no rules. It uses what ``dsqlkit local`` uses (uvloop,
its TLS, buffered reads, a separate process, a Unix-socket hop), so the gap between this
relay and the client straight to PostgreSQL is what any such proxy costs on the machine,
and the gap between this relay and ``dsqlkit local`` is what the endpoint's own work costs.
Prints the port it listens on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys

import uvloop

_BUF = memoryview(bytearray(256 * 1024))


class _Side(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUF

    def buffer_updated(self, nbytes: int) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(bytes(_BUF[:nbytes]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _serve(sock: socket.socket, ctx: ssl.SSLContext, backend: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        if len(await loop.sock_recv(sock, 8)) != 8:
            sock.close()
            return
        await loop.sock_sendall(sock, b"S")
        client, back = _Side(), _Side()
        client.peer, back.peer = back, client
        await loop.create_unix_connection(lambda: back, backend)
        await loop.connect_accepted_socket(lambda: client, sock, ssl=ctx)
    except OSError:
        sock.close()


async def _main(cert: str, key: str, backend: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    tasks = set()
    while True:
        sock, _ = await loop.sock_accept(listener)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.ensure_future(_serve(sock, ctx, backend))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(_main(*sys.argv[1:4]))
