"""The token: with --token, every request needs it, except the health checks (load balancers carry no secrets),
the page's files and /docs (they hold no model data), and the login and logout steps.

Where the token lives: scripts send `Authorization: Bearer TOKEN`; the page trades it once for a cookie,

    POST /v1/login  {"token": "..."}  -> 204, Set-Cookie: vae_infer_token=TOKEN; HttpOnly; SameSite=Strict; Path=/
    POST /v1/logout                   -> 204, the cookie cleared

HttpOnly keeps it out of reach of any script in the page (an injected one included); SameSite=Strict keeps
other sites' pages from sending it, and OriginGuard refuses them anyway. The server prints the page's address as
`http://HOST:PORT/#token=TOKEN`: a fragment never reaches a server or its logs; the page posts it to /v1/login
and removes it from the address bar."""

from __future__ import annotations

import hmac

from .errors import Unauthorized, error_response
from .metrics import Metrics

COOKIE = "vae_infer_token"
COOKIE_ATTRIBUTES = "HttpOnly; SameSite=Strict; Path=/"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs.css", "/favicon.ico", "/openapi.json",
                        "/v1/login", "/v1/logout"})
OPEN_PREFIXES = ("/web/", "/ort/")


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def cookie_value(scope, name: str = COOKIE) -> bytes | None:
    """The value of one cookie from the request's Cookie headers (the last one of that name), as bytes."""
    found = None
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            for part in value.split(b";"):
                k, sep, v = part.strip().partition(b"=")
                if sep and k == name.encode():
                    found = v.strip()
    return found


def same_token(got: bytes | str | None, token: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed byte by byte from timings."""
    if got is None:
        return False
    return hmac.compare_digest(got if isinstance(got, bytes) else got.encode("utf-8", "surrogatepass"),
                               token.encode())


def login_cookie(token: str) -> str:
    return f"{COOKIE}={token}; {COOKIE_ATTRIBUTES}"


def logout_cookie() -> str:
    return f"{COOKIE}=; Max-Age=0; {COOKIE_ATTRIBUTES}"


class TokenAuth:
    """ASGI middleware: the bearer header or the login cookie, either one."""

    def __init__(self, app, token: str, metrics: Metrics) -> None:
        self.app = app
        self.token = token
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        bearer = header[7:] if header is not None and header[:7].lower() == b"bearer " else None
        cookie = cookie_value(scope)
        if same_token(bearer, self.token) or same_token(cookie, self.token):
            return await self.app(scope, receive, send)
        self.metrics.rejected["unauthorized"] += 1
        if header is None and cookie is None:
            what = "no Authorization header and no login cookie"
        else:
            what = "a wrong token"
        response = error_response(Unauthorized(
            f"this server needs a token and the request has {what}; send `Authorization: Bearer TOKEN` with the "
            f"token the server was started with (--token), or log in with POST /v1/login"))
        await response(scope, receive, send)
