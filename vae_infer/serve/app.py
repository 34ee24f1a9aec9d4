"""The ASGI app: create_app(model, config) -> FastAPI. Routes stay thin: parse the body, run the same library
call as the CLI on a compute thread, reply. The JSON/.npy handling, the limits, auth, metrics and the error format
live in their own modules beside this one.

    POST /v1/encode /v1/decode /v1/reconstruct /v1/sample /v1/score /v1/detect /v1/interpolate
    POST /v1/login /v1/logout (the token as a cookie, auth.py)
    GET  /v1/info /v1/latent-map /v1/examples /v1/files/{name}   /healthz /readyz /metrics /openapi.json /docs
    GET  /   the explorer page (web/), /ort/ onnxruntime-web when installed

In front of the routes, outermost first: metrics, security headers, Host, Origin (and CORS with --cors-origin),
the token, the body's media type and size (guards.py, auth.py, limits.py). Each request holds one in-flight slot
from the start of its body to the end of its model call.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..anomaly.scores import SCORE_KINDS
from ..anomaly.scores import threshold as detect_threshold
from ..interpolation.paths import METHODS
from ..model import VAEModel, load
from ..work_limits import MAX_SAMPLES, MAX_STEPS
from . import auth, bodies, docs, errors, schemas
from .bodies import JSON
from .config import ServeConfig
from .guards import HostGuard, OriginGuard, SecurityHeaders, allowed_host_names
from .jsonbody import read_json
from .limits import BodyLimit, Limiter, Slot
from .metrics import CONTENT_TYPE, Labels, Metrics, RequestMetrics
from .redact import redact
from .resources import ORT_ENTRY, WEB_DIR, Resources, find_ort_dist

NPY_PATHS = frozenset({"/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/score", "/v1/detect"})
PAGE_FOLDERS = ("/web/", "/ort/")
B = TypeVar("B", bound=BaseModel)


class State:
    """Everything a request may use: one model loaded once and shared (its calls are thread-safe)."""

    def __init__(self, model: VAEModel, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.metrics = Metrics()
        self.limiter: Limiter | None = None  # made on startup: it needs the running event loop
        self.resources = Resources(model, config.examples, config.examples_count)
        self.ort_dist = find_ort_dist(config.web_assets)
        self.draining = False  # set on shutdown: /readyz turns false while in-flight requests finish

    def started(self) -> Limiter:
        """The limiter, which every route may use: the lifespan makes it before the first request."""
        assert self.limiter is not None, "the limiter is made on startup, before any request"
        return self.limiter

    def slot(self) -> Slot:
        return self.started().slot()

    async def run_rows(self, slot: Slot, fn, rows):
        """fn(rows) for one of the cheap per-row operations (encode, decode, reconstruct): inline on the event
        loop when there are at most config.inline_rows rows, else on a compute thread."""
        if np.ndim(rows) >= 1 and len(rows) <= self.config.inline_rows:  # anything odd: the usual path's errors
            return slot.run_inline(fn, rows)
        return await slot.run(fn, rows)

    def check_rows(self, n: int, what: str) -> None:
        if n > self.config.max_rows:
            self.metrics.rejected["too_many_rows"] += 1
            raise errors.PayloadTooLarge(f"{n} {what} in one request; the limit is {self.config.max_rows} "
                                         f"(--max-rows): split the batch")


def create_app(model: VAEModel | str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The app for one model package (a loaded VAEModel, or a package folder to load)."""
    config = config or ServeConfig()
    if not isinstance(model, VAEModel):
        model = load(model, threads=config.threads)
    state = State(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.limiter = Limiter(config.max_in_flight, config.workers, config.request_timeout_s,
                                config.retry_after_s, state.metrics)
        try:
            yield
        finally:
            state.draining = True
            await state.limiter.drain(config.request_timeout_s)
            state.limiter.close()

    app = FastAPI(title="vae-infer", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"The model package {model.manifest.name!r} over HTTP. Errors are "
                              f'{{"error": {{"type", "message"}}}}. Array endpoints also take an {bodies.NPY} '
                              f"body (the array; other fields as query parameters) and reply with an .npz.")
    app.state.vae = state
    errors.install(app)
    _add_api_routes(app, state)
    _add_login_routes(app, state)
    _add_ops_routes(app, state)
    _add_page_routes(app, state)
    docs.add_routes(app)
    _document_bodies(app, (schemas.EncodeRequest, schemas.DecodeRequest, schemas.ReconstructRequest,
                           schemas.SampleRequest, schemas.ScoreRequest, schemas.DetectRequest,
                           schemas.InterpolateRequest, schemas.LoginRequest))
    # Pure ASGI middleware (cheaper per request than BaseHTTPMiddleware); the last added runs first.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, max_json_bytes=config.max_json_bytes,
                       npy_paths=NPY_PATHS, metrics=state.metrics)
    if config.token is not None:
        app.add_middleware(auth.TokenAuth, token=config.token, metrics=state.metrics)
    if config.cors_origins:  # preflights answered here, before the token (browsers send none with them)
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(OriginGuard, cors_origins=config.cors_origins, metrics=state.metrics)
    app.add_middleware(HostGuard, allowed=allowed_host_names(config.host, config.allowed_hosts),
                       metrics=state.metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=state.metrics, labels=Labels.of_app(app, PAGE_FOLDERS))
    return app


# -- request plumbing ---------------------------------------------------------------------------------------------


async def _read(request: Request, state: State, body_model: type[B], options: type[B],
                field: str, what: str) -> tuple[np.ndarray, B]:
    """(array, parsed request) from a JSON body, or from an .npy body with the options in the query string."""
    raw = await request.body()
    if bodies.is_npy(request.headers.get("content-type")):
        arr, parsed = bodies.read_npy(raw), bodies.parse_query(dict(request.query_params), options)
    else:
        parsed, arrays = read_json(raw, body_model)
        arr = bodies.as_rows(arrays[field], field, getattr(parsed, "dtype", "float32"))
    state.check_rows(arr.shape[0] if arr.ndim else 1, what)
    return arr, parsed


async def _read_json(request: Request, body_model: type[B]) -> tuple[B, dict[str, np.ndarray]]:
    return read_json(await request.body(), body_model)


async def _reply(request: Request, payload: dict[str, Any], state: State, endpoint: str, rows: int) -> Response:
    state.metrics.rows[endpoint] += rows
    if bodies.wants_npz(request.headers.get("content-type"), request.headers.get("accept")):
        # zipping (its CRC-32 and copies) of a large .npz runs on a compute thread, off the event loop
        loop = asyncio.get_running_loop()
        return Response(await loop.run_in_executor(state.started().executor, bodies.encode_npz, payload),
                        media_type=bodies.NPZ)
    return Response(await bodies.encode_json_yielding(payload), media_type=JSON)


def _body_doc(model: type[BaseModel], npy: bool = True) -> dict[str, Any]:
    """OpenAPI requestBody for routes that parse their body themselves (to take JSON or .npy)."""
    content: dict[str, Any] = {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if npy:
        content[bodies.NPY] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


def _doc(response: type[BaseModel], body: type[BaseModel], npy: bool = True) -> dict[str, Any]:
    return {"response_model": response, "responses": schemas.ERROR_RESPONSES, "openapi_extra": _body_doc(body, npy)}


# -- the API ------------------------------------------------------------------------------------------------------


def _add_api_routes(app: FastAPI, state: State) -> None:
    m = state.model
    s = schemas

    @app.post("/v1/encode", **_doc(s.EncodeResponse, s.EncodeRequest))
    async def encode(request: Request):
        """mu and logvar of q(z|x) for each image (VAEModel.encode)."""
        async with state.slot() as slot:
            x, _ = await _read(request, state, s.EncodeRequest, s.ImageOptions, "images", "images")
            mu, logvar = await state.run_rows(slot, m.encode, x)
            return await _reply(request, {"mu": mu, "logvar": logvar}, state, "encode", len(mu))

    @app.post("/v1/decode", **_doc(s.ImagesResponse, s.DecodeRequest))
    async def decode(request: Request):
        """Decoded images (Bernoulli means) for each latent code (VAEModel.decode)."""
        async with state.slot() as slot:
            z, _ = await _read(request, state, s.DecodeRequest, schemas.Strict, "z", "latent codes")
            x_hat = await state.run_rows(slot, m.decode, z)
            return await _reply(request, {"x_hat": x_hat}, state, "decode", len(x_hat))

    @app.post("/v1/reconstruct", **_doc(s.ImagesResponse, s.ReconstructRequest))
    async def reconstruct(request: Request):
        """decode(mu(x)) for each image (VAEModel.reconstruct)."""
        async with state.slot() as slot:
            x, _ = await _read(request, state, s.ReconstructRequest, s.ImageOptions, "images", "images")
            x_hat = await state.run_rows(slot, m.reconstruct, x)
            return await _reply(request, {"x_hat": x_hat}, state, "reconstruct", len(x_hat))

    @app.post("/v1/sample", **_doc(s.ImagesResponse, s.SampleRequest, npy=False))
    async def sample(request: Request):
        """n images decoded from z ~ N(0, I) (VAEModel.sample); the same seed gives the same images."""
        async with state.slot() as slot:
            req, _ = await _read_json(request, s.SampleRequest)
            state.check_rows(req.n, "samples")
            x_hat = await slot.run(m.sample, req.n, req.seed)
            return await _reply(request, {"x_hat": x_hat}, state, "sample", len(x_hat))

    @app.post("/v1/score", **_doc(s.ScoreResponse, s.ScoreRequest))
    async def score(request: Request):
        """Per-image scores, higher = less likely (VAEModel.score; kinds from vae_infer.anomaly.scores)."""
        async with state.slot() as slot:
            x, req = await _read(request, state, s.ScoreRequest, s.ScoreOptions, "images", "images")
            scores = await slot.run(lambda: m.score(x, kind=req.kind, samples=req.samples, seed=req.seed))
            return await _reply(request, {"kind": req.kind, "scores": scores}, state, "score", len(scores))

    @app.post("/v1/detect", **_doc(s.DetectResponse, s.DetectRequest))
    async def detect(request: Request):
        """flags[i]: image i scores above the calibrated threshold (VAEModel.detect). 409 if not calibrated."""
        async with state.slot() as slot:
            x, req = await _read(request, state, s.DetectRequest, s.DetectOptions, "images", "images")

            def job():
                if req.threshold is not None:
                    kind = req.kind or (m.manifest.calibration or {}).get("default_kind") or "dose"
                    limit = req.threshold
                else:
                    kind, limit = detect_threshold(m, req.kind, req.quantile)
                flags, scores = m.detect(x, kind=kind, quantile=req.quantile, threshold=req.threshold,
                                         samples=req.samples, seed=req.seed)
                return kind, limit, flags, scores

            kind, limit, flags, scores = await slot.run(job)
            return await _reply(request, {"kind": kind, "threshold": float(limit), "flags": flags,
                                          "scores": scores}, state, "detect", len(scores))

    @app.post("/v1/interpolate", **_doc(s.InterpolateResponse, s.InterpolateRequest, npy=False))
    async def interpolate(request: Request):
        """A latent path between two images or two codes, its decoded frames and its metrics
        (VAEModel.interpolate, vae_infer.interpolation.paths.interpolate_codes, VAEModel.path_metrics)."""
        async with state.slot() as slot:
            req, arrays = await _read_json(request, s.InterpolateRequest)
            names = ("z_a", "z_b") if req.z_a is not None else ("image_a", "image_b")
            ends = [bodies.as_rows(arrays[name], name, req.dtype if name.startswith("image") else "float32")
                    for name in names]

            def job():
                if req.z_a is not None:
                    from ..interpolation.paths import interpolate_codes

                    codes = interpolate_codes(m, ends[0], ends[1], steps=req.steps, method=req.method,
                                              spacing=req.spacing)
                    x_hat = m.decode(codes)
                else:
                    x_hat, codes = m.interpolate(ends[0], ends[1], steps=req.steps, method=req.method,
                                                 spacing=req.spacing, return_codes=True)
                return codes, x_hat, m.path_metrics(codes)

            codes, x_hat, metrics = await slot.run(job)
            return await _reply(request, {"method": req.method, "z": codes, "x_hat": x_hat, "metrics": metrics},
                                state, "interpolate", len(codes))

    @app.get("/v1/info", responses=schemas.ERROR_RESPONSES)
    async def info() -> dict[str, Any]:
        """The model package (from model.json: its name and sha256, never a path), what this server offers, and
        its limits."""
        return _info(state)

    @app.get("/v1/latent-map", response_model=s.LatentMapResponse, responses=schemas.ERROR_RESPONSES)
    async def latent_map(request: Request):
        """Codes (and class labels) of a sample of a data set, from the package's latent_map section (or the
        nodes of its latent index). 409 if the package has neither."""
        found = await state.started().run(state.resources.latent_map)
        return await _reply(request, found, state, "latent-map", 0)

    @app.get("/v1/examples", response_model=s.ExamplesResponse, responses=schemas.ERROR_RESPONSES)
    async def examples(request: Request):
        """A fixed sample of test images the page offers (--examples; 409 if that data set is not here)."""
        found = await state.started().run(state.resources.examples)
        return await _reply(request, found, state, "examples", 0)

    @app.get("/v1/files/{name}", responses={**schemas.ERROR_RESPONSES, 200: {"content": {
        "application/octet-stream": {}}}})
    async def files(name: str):
        """model.json (its paths cut to their last component) or the decoder graph as stored (the page checks
        decoder.onnx's sha256 against model.json)."""
        data = state.resources.files.get(name)
        if data is None:
            raise errors.NotFound(f"no file {name[:60]!r} here; served: {', '.join(sorted(state.resources.files))}")
        media = JSON if name.endswith(".json") else "application/octet-stream"
        return Response(data, media_type=media)

    @app.post("/v1/noop", include_in_schema=False)
    async def noop(request: Request):
        # The framework's ceiling for benchmarks/serve.py: the same middleware and body read, no model work.
        async with state.slot():
            await request.body()
        return Response(b"{}", media_type=JSON)


def _add_login_routes(app: FastAPI, state: State) -> None:
    token = state.config.token

    @app.post("/v1/login", status_code=204, responses={**schemas.ERROR_RESPONSES, 204: {"description": "logged in"}},
              openapi_extra=_body_doc(schemas.LoginRequest, npy=False))
    async def login(request: Request):
        """Trade the token for an HttpOnly, SameSite=Strict cookie that the page's requests then carry (401 for a
        wrong token). A server started without --token needs none: 204 and no cookie."""
        req, _ = await _read_json(request, schemas.LoginRequest)
        if token is None:
            return Response(status_code=204)
        if not auth.same_token(req.token, token):
            state.metrics.rejected["unauthorized"] += 1
            raise errors.Unauthorized("wrong token: use the one the server was started with (--token)")
        return Response(status_code=204, headers={"Set-Cookie": auth.login_cookie(token)})

    @app.post("/v1/logout", status_code=204, responses={204: {"description": "the cookie cleared"}})
    async def logout():
        """Clear the login cookie."""
        return Response(status_code=204, headers={"Set-Cookie": auth.logout_cookie()})


def _info(state: State) -> dict[str, Any]:
    man, cfg = state.model.manifest, state.config
    cal = man.calibration or {}
    return {
        "name": man.name, "format_version": man.format_version, "image_shape": list(man.image_shape),
        "channels": man.channels, "features": man.features, "latent_size": man.latent_size,
        "hidden_size": man.hidden_size,
        "likelihood": man.likelihood, "input_scale": man.input_scale, "training": redact(man.training),
        "manifest_sha256": state.resources.manifest_sha256,
        "files": dict(sorted(man.files.items())), "decoder_file": man.decoder.file,
        "decoder_input": man.decoder.inputs[0].name, "decoder_output": man.decoder.outputs[0].name,
        "calibrated": bool(cal), "default_kind": cal.get("default_kind"), "score_kinds": list(SCORE_KINDS),
        "interpolation_methods": list(METHODS), "latent_index": bool(man.latent_index),
        "latent_map": bool(getattr(man, "latent_map", None)), "examples": redact(cfg.examples),
        "browser_decode": f"/ort/{ORT_ENTRY}" if state.ort_dist is not None else None,
        "limits": {"max_rows": cfg.max_rows, "max_body_bytes": cfg.max_body_bytes,
                   "max_in_flight": cfg.max_in_flight, "request_timeout_s": cfg.request_timeout_s,
                   "max_json_bytes": cfg.max_json_bytes, "max_samples": MAX_SAMPLES, "max_steps": MAX_STEPS},
        "auth": cfg.token is not None, "version": __version__,
    }


# -- operations and the page -----------------------------------------------------------------------------------


def _add_ops_routes(app: FastAPI, state: State) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "shutting down"}})
    async def readyz():
        """Ready for traffic: false (503) once shutdown has begun, while in-flight requests finish."""
        ready = not state.draining and state.limiter is not None
        body = bodies.encode_json({"ready": ready, "in_flight": state.limiter.in_flight if state.limiter else 0})
        return Response(body, status_code=200 if ready else 503, media_type=JSON)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics():
        """Request counts and latency histograms per endpoint, in Prometheus text."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _add_page_routes(app: FastAPI, state: State) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    if state.ort_dist is not None:
        app.mount("/ort", StaticFiles(directory=state.ort_dist), name="ort")


def _document_bodies(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Put the request schemas of the routes that parse their own bodies into the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in js.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = js
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
