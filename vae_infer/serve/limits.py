"""What protects the machine: a cap on requests in flight, the compute threads, request timeouts, body size.

onnxruntime calls block, so they run on a small thread pool off the event loop. A timeout cannot cancel a call
that is already running (onnxruntime has no cancellation), so a request that times out gets its 503 at once while
its call keeps its slot until it really ends: the cap on slots, not the timeout, bounds the work in progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .bodies import JSON, NPY
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

    def slot(self) -> Slot:
        """`async with limiter.slot() as slot:` holds one of the max_in_flight places for a whole request: reading
        and parsing its body as well as its model call (503 at once when none is free)."""
        return Slot(self)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a compute thread in a slot of its own; 503 when the server is full or the call takes too
        long."""
        async with self.slot() as slot:
            return await slot.run(fn, *args)

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


class Slot:
    """One admitted request. Its place is freed when the request ends, or, if its model call outlives it (a
    timeout: onnxruntime cannot be cancelled), when that call really ends."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.job: Future[Any] | None = None

    async def __aenter__(self) -> Slot:
        self.limiter._admit()
        self.limiter._acquire()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.job is not None and not self.job.done():
            loop = asyncio.get_running_loop()
            self.job.add_done_callback(lambda _: loop.call_soon_threadsafe(self.limiter._release))
        else:
            self.limiter._release()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a compute thread; 503 when it takes longer than the request timeout."""
        lim = self.limiter
        loop = asyncio.get_running_loop()
        try:
            self.job = lim.executor.submit(fn, *args)
        except RuntimeError as e:  # the pool is shut down: the server is stopping
            raise Busy("the server is shutting down; retry on another instance", lim.retry_after_s) from e
        waiting = asyncio.wrap_future(self.job, loop=loop)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), lim.timeout_s)
        except TimeoutError:
            waiting.add_done_callback(_consume)  # its outcome is no longer anyone's: do not log it as lost
            lim.metrics.rejected["timeout"] += 1
            raise TimedOut(f"the request took longer than {lim.timeout_s:g} s (--timeout); its computation "
                           f"finishes in the background; retry later or send fewer rows",
                           lim.retry_after_s) from None

    def run_inline(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the event loop's own thread, for calls shorter than a hand-off to a compute thread
        (ServeConfig.inline_rows)."""
        return fn(*args)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class BodyLimit:
    """ASGI middleware: a body must come with a media type its route documents (application/json, parameters
    ignored; application/x-npy where the route takes an array), else 415; and it gets 413 past its limit (the .npy
    limit, or the lower JSON one) before it is read into memory, whether it declares its length or streams in
    chunks. So no "simple" cross-origin POST (text/plain, forms, multipart) reaches a route."""

    def __init__(self, app, max_bytes: int, max_json_bytes: int, npy_paths: frozenset[str], metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = min(max_json_bytes, max_bytes)
        self.npy_paths = npy_paths
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        media = _media_type(scope)
        has_body = (declared or 0) > 0 or _header(scope, b"transfer-encoding") is not None
        if not has_body and (media is None or scope["method"] != "POST"):  # nothing to read (a GET's stray header)
            return await self.app(scope, receive, send)
        allowed = (JSON, NPY) if scope["path"] in self.npy_paths else (JSON,)
        if scope["method"] != "POST" or media not in allowed:
            self.metrics.rejected["media_type"] += 1
            what = "no Content-Type" if media is None else f"Content-Type {media[:60]!r}"
            takes = " or ".join(allowed) if scope["method"] == "POST" else "no body"
            return await _send_error(send, 415, "unsupported_media_type",
                                     f"{scope['method']} {scope['path'][:60]} takes {takes}; the request has {what}")
        limit = self.max_json_bytes if media == JSON else self.max_bytes
        if declared is not None and declared > limit:
            return await self._refuse(send, declared, media, limit)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.metrics.rejected["too_large"] += 1
                    raise PayloadTooLarge(self._message(seen, media, limit))
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as e:  # raised in a receive the app did not wrap; the usual path is the handler's
            if not started:
                await _send_error(send, 413, "too_large", e.message)

    def _message(self, size: int, media: str | None, limit: int) -> str:
        hint = (f" (--max-json-bytes); send large batches as {NPY} (up to {self.max_bytes} bytes)"
                if media == JSON and limit < self.max_bytes else " (--max-body-bytes): send fewer rows per request")
        return f"the {media} body has at least {size} bytes; the limit is {limit} bytes{hint}"

    async def _refuse(self, send, size: int, media: str | None, limit: int) -> None:
        self.metrics.rejected["too_large"] += 1
        await _send_error(send, 413, "too_large", self._message(size, media, limit))


async def _send_error(send, status: int, kind: str, message: str) -> None:
    body = error_body(kind, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", ()) if key == name), None)


def _media_type(scope) -> str | None:
    """The media type of the body, lowercased, its parameters (charset=utf-8) dropped."""
    value = _header(scope, b"content-type")
    return None if value is None else value.decode("latin-1").split(";")[0].strip().lower()


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
