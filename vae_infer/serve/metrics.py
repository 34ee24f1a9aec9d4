"""Request counts and latency histograms per endpoint, written as Prometheus text (exposition format 0.0.4).

Written by hand (about 100 lines) rather than with prometheus_client: the server needs two metric families and
one gauge, and every dependency of the `serve` extra is one more thing to pin and keep. Updates happen on the
event loop thread only (the middleware), so no lock is needed."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

# Latency buckets in seconds: from a batch-1 call (well under a millisecond) to a long graph path.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


class Metrics:
    """What /metrics reports. `endpoint` is the route's path template (unknown paths are counted as "other",
    so a scanner cannot grow the label set without bound)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.rejected: dict[str, int] = defaultdict(int)  # 503 busy / timeout, 413, 401 by reason
        self.in_flight = 0  # requests holding a compute slot now (set by the limiter)
        self.rows: dict[str, int] = defaultdict(int)  # images or codes processed, per endpoint

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(method, endpoint, status)] += 1
        self.latency[(method, endpoint)].observe(seconds)

    def render(self) -> str:
        lines = [
            "# HELP vae_http_requests_total HTTP requests answered, by method, endpoint and status code.",
            "# TYPE vae_http_requests_total counter",
        ]
        for (method, endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'vae_http_requests_total{{method="{method}",endpoint="{_esc(endpoint)}",'
                         f'status="{status}"}} {n}')
        lines += [
            "# HELP vae_http_request_duration_seconds Time from the request's arrival to the end of its response.",
            "# TYPE vae_http_request_duration_seconds histogram",
        ]
        for (method, endpoint), h in sorted(self.latency.items()):
            labels = f'method="{method}",endpoint="{_esc(endpoint)}"'
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'vae_http_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}')
            lines.append(f"vae_http_request_duration_seconds_sum{{{labels}}} {h.total!r}")
            lines.append(f"vae_http_request_duration_seconds_count{{{labels}}} {h.n}")
        lines += [
            "# HELP vae_rows_total Images or latent codes processed, by endpoint.",
            "# TYPE vae_rows_total counter",
        ]
        lines += [f'vae_rows_total{{endpoint="{_esc(e)}"}} {n}' for e, n in sorted(self.rows.items())]
        lines += [
            "# HELP vae_rejected_total Requests refused before any model work, by reason.",
            "# TYPE vae_rejected_total counter",
        ]
        lines += [f'vae_rejected_total{{reason="{_esc(r)}"}} {n}' for r, n in sorted(self.rejected.items())]
        lines += [
            "# HELP vae_in_flight Requests holding a compute slot now (running or waiting for a thread).",
            "# TYPE vae_in_flight gauge",
            f"vae_in_flight {self.in_flight}",
            "# HELP vae_start_time_seconds When the server started (Unix time).",
            "# TYPE vae_start_time_seconds gauge",
            f"vae_start_time_seconds {self.started!r}",
        ]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RequestMetrics:
    """ASGI middleware: counts each response and times it, by the route's path template (FastAPI puts the matched
    route in the scope). The outermost layer, so refused requests (401, 413) are counted too."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # Routes FastAPI did not match (the docs, the page's files) by path, except misses: a 404 for any
            # path a scanner tries would grow the label set without bound.
            endpoint = getattr(route, "path", None) or (scope["path"] if status != 404 else "other")
            self.metrics.observe(scope["method"], endpoint, status, time.perf_counter() - start)
