"""The one place where errors become HTTP responses: {"error": {"type", "message"}} with a status code.

The library's named errors keep their meaning: a bad input is the client's (400), a model package that cannot do
what was asked (an uncalibrated model asked to detect, a package without a latent index asked for a graph path)
is a conflict with the server's state (409). The server adds its own: too large (413), schema (422), busy or
timed out (503, with Retry-After), unauthorized (401), not found (404), a media type the route does not take (415),
and a client that went away before its answer (499, nginx's code: counted, never logged as a server error).
Messages never show a server path (redact.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import DataError, DeviceError, InputError, MissingExtraError, ModelPackageError, VaeInferError
from .redact import redact_paths

log = logging.getLogger("vae_infer.serve")


class ApiError(Exception):
    """An error of the HTTP layer itself; subclasses set the status and the type shown to clients."""

    status = 400
    type = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, type = 400, "bad_request"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status, type = 404, "not_found"


class UnsupportedMediaType(ApiError):
    status, type = 415, "unsupported_media_type"


class ClientGone(ApiError):
    """The client closed its connection (or was closed for being too slow) before its request was read."""

    status, type = 499, "client_closed_request"


class PayloadTooLarge(ApiError):
    status, type = 413, "too_large"


class SchemaError(ApiError):
    status, type = 422, "schema"


class Busy(ApiError):
    status, type = 503, "busy"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class TimedOut(Busy):
    type = "timeout"


# The library's errors, most specific first: (class, status, type).
LIBRARY_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (InputError, 400, "input_error"),
    (ModelPackageError, 409, "model_package"),
    (MissingExtraError, 409, "missing_extra"),
    (DataError, 409, "data_error"),
    (DeviceError, 409, "device_error"),
    (VaeInferError, 409, "vae_infer_error"),
)

# FastAPI's own 4xx (an unknown path, a wrong method) in the same format.
HTTP_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              413: "too_large", 415: "unsupported_media_type", 422: "schema"}


def classify(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """(status, type, message, headers) for any exception a request can raise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.type, redact_paths(exc.message), exc.headers
    for cls, status, kind in LIBRARY_ERRORS:
        if isinstance(exc, cls):
            return status, kind, redact_paths(one_line(str(exc))), {}
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    if isinstance(exc, ClientDisconnect):
        return ClientGone.status, ClientGone.type, "the client closed the connection before sending its whole body", {}
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return validation_error(exc.errors())
    if isinstance(exc, HTTPException):
        return exc.status_code, HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail), dict(exc.headers or {})
    log.exception("unexpected error while serving a request", exc_info=exc)
    return 500, "internal", f"the server failed on this request ({type(exc).__name__}); see the server's log", {}


def validation_error(errors: Any) -> tuple[int, str, str, dict[str, str]]:
    """Schema errors as 422, except a body that is not JSON at all, which is a plain bad request (400)."""
    errors = list(errors)
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, "bad_request", f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", {}
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "schema", "; ".join(parts) + more, {}


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or "failed"


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}}).encode()


def error_response(exc: BaseException):
    from starlette.responses import Response

    status, kind, message, headers = classify(exc)
    return Response(error_body(kind, message), status_code=status, headers=headers, media_type="application/json")


def install(app) -> None:
    """Register the one handler for every exception type a request can raise."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    async def handler(request, exc):
        return error_response(exc)

    from starlette.requests import ClientDisconnect

    # ClientDisconnect is named apart from Exception: FastAPI re-raises (and uvicorn logs) whatever only the
    # catch-all Exception handler answered
    for cls in (ApiError, VaeInferError, RequestValidationError, ValidationError, HTTPException, ClientDisconnect,
                Exception):
        app.add_exception_handler(cls, handler)
