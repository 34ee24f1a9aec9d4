"""Running the app under uvicorn, with a graceful shutdown.

On SIGINT or SIGTERM, /readyz turns false at once; the server keeps answering for `drain_s` seconds (so a load
balancer sees it leave), then stops accepting connections, lets the requests in flight finish (up to the request
timeout) and exits. A second signal stops at once."""

from __future__ import annotations

import asyncio
import logging
import socket

from .config import ServeConfig

log = logging.getLogger("vae_infer.serve")


def run(app, config: ServeConfig, drain_s: float = 0.0, log_level: str = "warning",
        sock: socket.socket | None = None) -> None:
    """Serve `app` (from create_app) until a signal; blocks."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            state = app.state.vae
            if state.draining or drain_s <= 0:
                state.draining = True
                return super().handle_exit(sig, frame)
            state.draining = True
            log.warning("shutting down: /readyz is false; stopping in %.3g s", drain_s)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return super().handle_exit(sig, frame)
            loop.call_later(drain_s, super().handle_exit, sig, frame)

    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=int(config.request_timeout_s) + 1, server_header=False,
        timeout_keep_alive=5,  # http="auto" and loop="auto": httptools and uvloop when installed, else h11, asyncio
    )
    GracefulServer(uv_config).run(sockets=[sock] if sock is not None else None)



def bind(config: ServeConfig) -> socket.socket:
    """The listening socket, bound before the server starts so that --port 0 can report the port it got."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say they
    # are TCP, and with it on, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((config.host, config.port))
        sock.listen(2048)  # listening from here on: clients that connect before uvicorn starts wait in the backlog
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
