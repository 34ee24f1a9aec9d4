"""The server's settings: one frozen dataclass, validated when made, shared by the app, the CLI and the tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..machine import available_cores

LOOPBACK = "127.0.0.1"


def default_compute_threads() -> int:
    """The cores this process may use: one onnxruntime call per core at a time keeps them busy without
    oversubscribing them (each call itself runs on one intra-op thread by default, see ServeConfig.threads)."""
    return available_cores()


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

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_rows", "max_in_flight", "examples_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must lie in 0..65535, got {self.port}")
        if not self.request_timeout_s > 0:
            raise InputError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if isinstance(self.inline_rows, bool) or not isinstance(self.inline_rows, int) or self.inline_rows < 0:
            raise InputError(f"inline_rows must be an integer >= 0, got {self.inline_rows!r}")
        if self.compute_threads < 0 or self.threads < 1:
            raise InputError(f"compute_threads must be >= 0 and threads >= 1, got {self.compute_threads}, "
                             f"{self.threads}")
        if self.token is not None and not self.token.strip():
            raise InputError("token must not be empty; pass a long random string (e.g. `openssl rand -hex 32`)")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise InputError(
                f"refusing to bind to {self.host} without a token: anyone who can reach it could use the API; "
                f"pass --token TOKEN (clients send `Authorization: Bearer TOKEN`), or --insecure on a trusted "
                f"network, or bind to {LOOPBACK}"
            )

    @property
    def workers(self) -> int:
        return self.compute_threads or default_compute_threads()
