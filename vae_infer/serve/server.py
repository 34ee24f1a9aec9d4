"""Running the app under uvicorn, with a graceful shutdown.

On SIGINT or SIGTERM, /readyz turns false at once; the server keeps answering for `drain_s` seconds (so a load
balancer sees it leave), then stops accepting connections, lets the requests in flight finish (up to the request
timeout) and exits. A second signal stops at once.

Each connection runs under deadlines (uvicorn's own HTTP protocol, subclassed): the headers of a request must
arrive within header_timeout_s of its first byte (or of the connection's opening), its body within body_timeout_s
of its headers, its answer must be taken within request_timeout_s + body_timeout_s of its last byte (a client
that never reads), and an idle kept-alive connection is closed after keep_alive_s; past max_connections, a new
connection is closed at once. A slow client is disconnected; it never holds the server."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from ..errors import VaeInferError
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
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # annotated int; used as a float delay
        http=deadline_protocol(config, app.state.vae.metrics),
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
    except OSError as e:
        sock.close()
        raise VaeInferError(_bind_problem(config.host, config.port, e)) from e
    sock.set_inheritable(True)
    return sock


def _bind_problem(host: str, port: int, e: OSError) -> str:
    """What went wrong binding host:port, in the words of the options that fix it."""
    where = f"{f'[{host}]' if ':' in host else host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the address is already in use (another server on port {port}?); "
                f"stop it, or choose another port with --port (--port 0 takes any free one)")
    if e.errno == errno.EACCES:
        return (f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
                f"choose --port 1024 or above")
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: {host} is not an address of this machine; "
                f"give --host one of its addresses (127.0.0.1 for this machine only)")
    return f"cannot listen on {where}: {e.strerror or e}; check --host and --port"


def deadline_protocol(config: ServeConfig, metrics):
    """uvicorn's h11 protocol with a deadline per connection phase and a cap on open connections."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout_response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                        b"content-length: %d\r\n\r\n%s")

    class DeadlineProtocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        phase: str | None = None

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= config.max_connections:
                metrics.rejected["connections"] += 1
                transport.abort()  # before uvicorn counts it: nothing of it is kept
                return
            super().connection_made(transport)
            self._arm("headers", config.header_timeout_s)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if hasattr(self, "transport"):  # refused connections never started
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()
            if self.transport.get_write_buffer_size():  # answered, but the client has not taken it all yet
                self._arm("response", config.body_timeout_s)
            else:
                self._follow()  # idle now: uvicorn's keep-alive timer takes over

        def _follow(self) -> None:
            """Arm the deadline of the phase the client is in: headers (bytes of a request, not all of its
            headers yet), body (headers in, body not all in), response (request read: the app computes within
            the request timeout, then the client must take the answer within the body timeout; uvicorn counts a
            response as complete once it is buffered, so the rest of that wait is armed in on_response_complete)."""
            if self.transport.is_closing():
                return None if self.phase == "response" else self._disarm()
            theirs = self.conn.their_state
            if theirs is h11.SEND_BODY:
                if self.phase != "body":
                    self._arm("body", config.body_timeout_s)
            elif theirs is h11.IDLE and self.conn.trailing_data[0]:
                if self.phase != "headers":
                    self._arm("headers", config.header_timeout_s)
            elif theirs is h11.DONE:
                if self.phase != "response":  # the answer, written to a client that may never read it
                    self._arm("response", config.request_timeout_s + config.body_timeout_s)
            elif theirs is not h11.IDLE:
                self._disarm()

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self.phase = phase
            self.deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline, self.phase = None, None

        def _expire(self) -> None:
            phase, self.deadline, self.phase = self.phase, None, None
            metrics.rejected[f"{phase}_timeout"] += 1
            if phase == "response":  # close() would wait for a client that does not read: drop what is buffered
                return self.transport.abort()
            if self.transport.is_closing():
                return
            if phase != "response" and (self.cycle is None or not self.cycle.response_started):
                seconds = config.header_timeout_s if phase == "headers" else config.body_timeout_s
                body = (f'{{"error": {{"type": "timeout", "message": "the request\'s {phase} took longer than '
                        f'{seconds:g} s"}}}}').encode()
                self.transport.write(timeout_response % (len(body), body))
            self.transport.close()  # the app, if it waits for the body, reads a disconnect (499)

    return DeadlineProtocol
