"""The server's settings: one frozen dataclass, validated when made, shared by the app, the CLI and the tests."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..machine import available_cores

LOOPBACK = "127.0.0.1"
TOKEN_CHARS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")  # RFC 6265's cookie-octet


def default_compute_threads() -> int:
    """The cores this process may use: one onnxruntime call per core at a time keeps them busy without
    oversubscribing them (each call itself runs on one intra-op thread by default, see ServeConfig.threads)."""
    return available_cores()


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    host: str = LOOPBACK  # loopback unless told otherwise: the API has no other protection by default
    port: int = 8000
    token: str | None = None  # bearer token required on every request but /healthz, /readyz and the page
    insecure: bool = False  # explicitly allow a non-loopback bind without a token
    max_body_bytes: int = 16 * 1024 * 1024  # 16 MiB: a 4096-row float32 .npy of 28x28 images is 12.8 MB
    max_rows: int = 4096  # images or codes per request (and n of /v1/sample): bounds the work of one call
    max_in_flight: int = 64  # requests admitted at once (running + waiting for a compute thread); 503 beyond
    request_timeout_s: float = 30.0  # a request waiting longer gets 503; its running call still holds its slot
    compute_threads: int = 0  # threads that run onnxruntime calls; 0: the cores this process may use
    threads: int = 1  # onnxruntime intra-op threads per call: requests run side by side instead
    # encode/decode/reconstruct requests of at most this many rows run on the event loop itself: such a call
    # takes tens of microseconds, less than handing it to a compute thread, whose wake-up on a busy core
    # stretched p99 latency from 4 ms to 46 ms (benchmarks/serve.md); 0 sends every call to the compute threads
    inline_rows: int = 8
    retry_after_s: int = 1  # the Retry-After header of a 503
    web_assets: Path | None = None  # an installed onnxruntime-web (its dist/ folder or the package above it)
    examples: str | None = "fashion-mnist"  # test images offered by the page (a data-set spec), None for none
    examples_count: int = 64  # how many of them
    # Who may call (guards.py). Loopback names always; a wildcard bind (0.0.0.0, ::) needs the names clients use.
    allowed_hosts: tuple[str, ...] = ()  # more Host names (or IPs) than the loopback ones and the bound address
    cors_origins: tuple[str, ...] = ()  # other origins (scheme://host:port) whose pages may call the API
    # JSON bodies are parsed while the event loop waits (simdjson holds the GIL): about 10 ms per MiB at worst
    # ("0,0,0,..."), so their cap is lower than the .npy cap; larger batches go as .npy (benchmarks/serve.md)
    max_json_bytes: int = 1024 * 1024
    # Time limits per connection (server.py): a slow or idle client never holds a socket for ever
    header_timeout_s: float = 10.0  # from the first byte of a request (or the connection) to its last header
    body_timeout_s: float = 30.0  # from the end of the headers to the last byte of the body
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 256  # open connections; more are closed at once (their clients see a reset)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_rows", "max_in_flight", "examples_count", "max_json_bytes",
                     "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must lie in 0..65535, got {self.port}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.inline_rows, bool) or not isinstance(self.inline_rows, int) or self.inline_rows < 0:
            raise InputError(f"inline_rows must be an integer >= 0, got {self.inline_rows!r}")
        if self.compute_threads < 0 or self.threads < 1:
            raise InputError(f"compute_threads must be >= 0 and threads >= 1, got {self.compute_threads}, "
                             f"{self.threads}")
        if self.token is not None and not self.token.strip():
            raise InputError("token must not be empty; pass a long random string (e.g. `openssl rand -hex 32`)")
        if self.token is not None and not TOKEN_CHARS.fullmatch(self.token):
            raise InputError("token must be printable ASCII without blanks, quotes, commas, semicolons or "
                             "backslashes (it travels in a cookie); pass e.g. `openssl rand -hex 32`")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise InputError(
                f"refusing to bind to {self.host} without a token: anyone who can reach it could use the API; "
                f"pass --token TOKEN (clients send `Authorization: Bearer TOKEN`), or --insecure on a trusted "
                f"network, or bind to {LOOPBACK}"
            )
        if is_wildcard(self.host) and not self.allowed_hosts:
            raise InputError(
                f"binding to {self.host} (every interface) needs --allowed-host NAME for each name clients use to "
                f"reach this machine (its DNS name or IP address): requests whose Host header is not allowed are "
                f"refused, which stops DNS-rebinding web pages from calling the API")
        for origin in self.cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise InputError(f"--cors-origin {origin!r}: expected one origin, scheme://host[:port] with no "
                                 f"path (for example https://app.example:8443); '*' is not allowed")

    @property
    def workers(self) -> int:
        return self.compute_threads or default_compute_threads()
