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
    """What /metrics reports, under labels from a closed set (Labels): a scanner cannot grow it."""

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


METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS"})
OTHER = "other"


class Labels:
    """The closed set of (method, endpoint) labels: the app's own routes by their path template, the page's
    files as one label per folder, and everything else `other`, so that no client can add a label. Worked out
    from the path alone, so a request refused before routing (a wrong Host, a missing token) gets the same label
    as one that reached its route."""

    def __init__(self, exact: frozenset[str], prefixes: tuple[tuple[str, str, bool], ...]) -> None:
        self.exact = exact
        self.prefixes = prefixes  # (path prefix, label, whether deeper paths count too)

    @classmethod
    def of_app(cls, app, folders: tuple[str, ...]) -> Labels:
        """Labels of the app's routes; each of `folders` ("/web/") is one label ("/web/*") for all its files."""
        exact, prefixes = set(), [(folder, folder + "*", True) for folder in folders]
        for route in app.routes:
            path = getattr(route, "path", "")
            if "{" in path:  # one path parameter, one segment: /v1/files/{name}
                prefixes.append((path[: path.index("{")], path, False))
            elif path and not any(folder.rstrip("/") == path for folder in folders):
                exact.add(path)
        return cls(frozenset(exact), tuple(prefixes))

    def endpoint(self, path: str) -> str:
        if path in self.exact:
            return path
        for prefix, label, nested in self.prefixes:
            rest = path[len(prefix):] if path.startswith(prefix) else ""
            if rest and (nested or "/" not in rest):
                return label
        return OTHER

    @staticmethod
    def method(method: str) -> str:
        return method if method in METHODS else OTHER


class RequestMetrics:
    """ASGI middleware: counts each response and times it, under the closed set of labels. The outermost layer, so
    refused requests (400 Host, 403 Origin, 401, 413, 415) are counted too. A client that went away before its
    answer is counted as 499 (nginx's "client closed request"), never as a server error."""

    def __init__(self, app, metrics: Metrics, labels: Labels) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = labels

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = None
        gone = False

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def watch_receive():
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watch_receive, send_status)
        finally:
            code = 499 if gone and status in (None, 499, 500) else (status or 500)
            self.metrics.observe(self.labels.method(scope["method"]), self.labels.endpoint(scope["path"]), code,
                                 time.perf_counter() - start)
