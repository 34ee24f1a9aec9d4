"""Who may call, as small ASGI middlewares in front of the routes (each rule one class, as Starlette's own):

- HostGuard: the Host header must name this server (loopback names, the bound address, --allowed-host), which
  stops DNS rebinding: a web page whose name an attacker points at 127.0.0.1 still sends its own name as Host.
- OriginGuard: a request made by a browser page of another origin (an `Origin` that is not this server's, or
  `Sec-Fetch-Site: cross-site / same-site`) is refused unless --cors-origin names that origin. Requests with
  neither header (curl, Python clients) pass; so do top-level navigations to the page itself.
- SecurityHeaders: nosniff, no referrer, a Content-Security-Policy, and no caching of API replies.

Each refusal is answered here, before routing, in the API's error format."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .config import LOOPBACK, is_wildcard
from .errors import error_body

LOOPBACK_NAMES = frozenset({"localhost", LOOPBACK, "::1"})
# The page, its assets and /docs: no inline script or style, onnxruntime-web's CPU build from our own origin
# ('wasm-unsafe-eval' lets it compile its WebAssembly), nothing framed, no form posts, no plugins.
PAGE_CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; style-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'")
# /docs is rendered on the server with no script at all
DOCS_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'; object-src 'none'")
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
PAGE_PREFIXES = ("/web/", "/ort/")
DOCS_PATHS = frozenset({"/docs", "/docs.css"})
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")
SHOWN_CHARS = 80  # of a refused Host or Origin, in the error message


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


def normalize_host(value: str) -> str | None:
    """The host name of a Host header, lowercased, port and one trailing dot removed, IPv6 without brackets;
    None when it cannot be a host name (an unbracketed IPv6 address, a port that is not a number, odd bytes)."""
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        return None
    name = match.group("v6") or match.group("name")
    return name[:-1] if name.endswith(".") else name


def allowed_host_names(bind_host: str, extra: Iterable[str]) -> frozenset[str]:
    names = set(LOOPBACK_NAMES)
    if not is_wildcard(bind_host):
        names.add(normalize_host(f"[{bind_host}]" if ":" in bind_host else bind_host) or bind_host)
    for name in extra:
        names.add(normalize_host(f"[{name}]" if name.count(":") > 1 else name) or name.lower())
    return frozenset(names)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def refuse(send, status: int, kind: str, message: str, headers: tuple = ()) -> None:
    body = error_body(kind, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class HostGuard:
    def __init__(self, app, allowed: frozenset[str], metrics) -> None:
        self.app = app
        self.allowed = allowed
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = _header(scope, b"host")
        if raw is not None and normalize_host(raw) in self.allowed:
            return await self.app(scope, receive, send)
        self.metrics.rejected["host"] += 1
        shown = "no Host header" if raw is None else f"Host {raw[:SHOWN_CHARS]!r}"
        await refuse(send, 400, "bad_host",
                     f"this server does not answer to {shown}; it answers to {', '.join(sorted(self.allowed))}. "
                     f"Reach it by one of those names, or start it with --allowed-host NAME")


class OriginGuard:
    def __init__(self, app, cors_origins: Iterable[str], metrics) -> None:
        self.app = app
        self.cors = frozenset(cors_origins)
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        own = f"{scope.get('scheme', 'http')}://{_header(scope, b'host') or ''}".lower()
        if origin is not None and origin.lower() != own and origin not in self.cors:
            return await self._refuse(send, f"a page of origin {origin[:SHOWN_CHARS]!r}")
        if site in ("cross-site", "same-site") and origin not in self.cors and not self._navigation(scope):
            return await self._refuse(send, f"a page of another site (Sec-Fetch-Site: {site})")
        return await self.app(scope, receive, send)

    @staticmethod
    def _navigation(scope) -> bool:
        """A top-level visit to the page (a link followed from elsewhere): harmless, the page holds no data."""
        return (scope["method"] in ("GET", "HEAD") and (scope["path"] in PAGE_PATHS or scope["path"] in DOCS_PATHS)
                and _header(scope, b"sec-fetch-mode") == "navigate"
                and _header(scope, b"sec-fetch-dest") == "document")

    async def _refuse(self, send, who: str) -> None:
        self.metrics.rejected["origin"] += 1
        await refuse(send, 403, "forbidden_origin",
                     f"{who} may not call this server; only its own page may. Start the server with "
                     f"--cors-origin ORIGIN to let another origin's pages call it")


class SecurityHeaders:
    """nosniff and no referrer on everything; the page's CSP on the page and on API replies (a JSON reply opened
    as a document runs nothing either); /docs its own; `Cache-Control: no-store` on everything but the page."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        csp = (DOCS_CSP if path in DOCS_PATHS else PAGE_CSP).encode()
        page = is_page(path) or path in DOCS_PATHS

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ())
                           if page or k.lower() != b"cache-control"]
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"content-security-policy", csp), (b"cross-origin-resource-policy", b"same-origin")]
                if not page:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
