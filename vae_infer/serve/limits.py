"""What protects the machine: a cap on requests in flight, the compute threads, request timeouts, body size.

onnxruntime calls block, so they run on a small thread pool off the event loop. A timeout cannot cancel a call
that is already running (onnxruntime has no cancellation), so a request that times out gets its 503 at once while
its call keeps its slot until it really ends: the cap on slots, not the timeout, bounds the work in progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import Busy, PayloadTooLarge, TimedOut, error_body
from .metrics import Metrics

T = TypeVar("T")


class Limiter:
    """Admits at most `max_in_flight` requests to the compute threads; the rest get 503 with Retry-After.
    Its counters change on the event loop's thread only."""

    def __init__(self, max_in_flight: int, workers: int, timeout_s: float, retry_after_s: int,
                 metrics: Metrics) -> None:
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vae-compute")
        self._idle = asyncio.Event()
        self._idle.set()

    def _admit(self) -> None:
        """503 (Busy) when max_in_flight requests are already in flight."""
        if self.in_flight >= self.max_in_flight:
            self.metrics.rejected["busy"] += 1
            raise Busy(f"the server is busy: {self.in_flight} requests in flight, the limit is {self.max_in_flight} "
                       f"(--max-in-flight); retry after {self.retry_after_s} s", self.retry_after_s)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a compute thread; 503 when the server is full or the call takes too long."""
        self._admit()
        loop = asyncio.get_running_loop()
        try:
            job = self.executor.submit(fn, *args)
        except RuntimeError as e:  # the pool is shut down: the server is stopping
            raise Busy("the server is shutting down; retry on another instance", self.retry_after_s) from e
        self._acquire()
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        waiting = asyncio.wrap_future(job, loop=loop)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), self.timeout_s)
        except TimeoutError:
            waiting.add_done_callback(_consume)  # its outcome is no longer anyone's: do not log it as lost
            self.metrics.rejected["timeout"] += 1
            raise TimedOut(f"the request took longer than {self.timeout_s:g} s (--timeout); its computation "
                           f"finishes in the background; retry later or send fewer rows",
                           self.retry_after_s) from None

    def run_inline(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the event loop's own thread, for calls shorter than a hand-off to a compute thread
        (ServeConfig.inline_rows); it counts against the same cap and shows in the same metrics."""
        self._admit()
        self._acquire()
        try:
            return fn(*args)
        finally:
            self._release()

    def _acquire(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight = self.in_flight
        self._idle.clear()

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight = self.in_flight
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no call is running (for graceful shutdown); False if some still run after timeout_s."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read into memory, whether it
    declares its length (Content-Length) or streams in chunks."""

    def __init__(self, app, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(send, declared)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.rejected["too_large"] += 1
                    raise PayloadTooLarge(self._message(seen))
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as e:  # raised in a receive the app did not wrap; the usual path is the handler's
            if not started:
                await self._send_413(send, e.message)

    def _message(self, size: int) -> str:
        return (f"the request body has at least {size} bytes; the limit is {self.max_bytes} bytes "
                f"(--max-body-bytes): send fewer rows per request")

    async def _refuse(self, send, size: int) -> None:
        self.metrics.rejected["too_large"] += 1
        await self._send_413(send, self._message(size))

    @staticmethod
    async def _send_413(send, message: str) -> None:
        body = error_body("too_large", message)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
