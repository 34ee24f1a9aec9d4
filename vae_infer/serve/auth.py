"""Bearer-token authentication: with --token, every request needs `Authorization: Bearer TOKEN`, except the
health checks (load balancers do not carry secrets) and the files of the page and the API docs, which hold no
model data (the page asks for the token and sends it with its API calls; decoder.onnx is behind the token)."""

from __future__ import annotations

import hmac

from .errors import Unauthorized, error_response
from .metrics import Metrics

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                        "/favicon.ico"})
OPEN_PREFIXES = ("/web/", "/ort/", "/swagger/")


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class TokenAuth:
    """ASGI middleware; constant-time comparison, so the token cannot be guessed byte by byte from timings."""

    def __init__(self, app, token: str, metrics: Metrics) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        got = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        if got is not None and hmac.compare_digest(got, self.expected):
            return await self.app(scope, receive, send)
        self.metrics.rejected["unauthorized"] += 1
        what = "no Authorization header" if got is None else "a wrong token"
        response = error_response(Unauthorized(
            f"this server needs a bearer token and the request has {what}; send `Authorization: Bearer TOKEN` "
            f"with the token the server was started with (--token)"))
        await response(scope, receive, send)
