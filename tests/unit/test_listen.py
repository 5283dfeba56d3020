"""The uploader's listening sockets: a taken port is a clear error, and accepted
connections have Nagle's algorithm off (asyncio sets TCP_NODELAY only on sockets
whose proto is TCP; with proto 0 every keep-alive request after the first waited
40 ms for the client's delayed ACK)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shared.core.errors import ConfigError
from uploader.__main__ import listen


@pytest.mark.anyio
async def test_accepted_connections_send_without_waiting_for_acks() -> None:
    sock = listen("127.0.0.1", 0, "the API")
    port = sock.getsockname()[1]
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(nodelay, 10) == 1
        finally:
            writer.close()


def test_a_taken_port_names_what_could_not_listen() -> None:
    first = listen("127.0.0.1", 0, "the API")
    port = first.getsockname()[1]
    try:
        with pytest.raises(
            ConfigError, match=rf"sites \(BUILDQ_SITES_PORT\) on 127\.0\.0\.1:{port}"
        ):
            listen("127.0.0.1", port, "sites (BUILDQ_SITES_PORT)")
    finally:
        first.close()
