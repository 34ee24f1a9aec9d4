"""The HTTP API (vae_infer.serve) through the real app and FastAPI's test client: every endpoint against the Python
API, every bad input, the limits, the token, metrics, graceful shutdown of the real server, and fuzzing from the
app's own OpenAPI schema."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_module, needs_real_data

pytestmark = needs_module("fastapi", "serve")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
TOL = 1e-6
NPY = {"content-type": "application/x-npy"}
JSON_TYPE = {"content-type": "application/json"}


def client_for(model, **options):
    from fastapi.testclient import TestClient

    from vae_infer.serve import ServeConfig, create_app

    options.setdefault("examples", None)
    # a loopback Host, as a browser or curl on this machine sends (the server refuses names it does not know)
    return TestClient(create_app(model, ServeConfig(**options)), raise_server_exceptions=False,
                      base_url="http://localhost")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    with client_for(tiny_model, max_rows=64, max_body_bytes=1_000_000) as c:
        yield c


@pytest.fixture(scope="module")
def shipped_model():
    import vae_infer

    return vae_infer.load(SHIPPED, threads=1)


@pytest.fixture(scope="module")
def shipped(shipped_model):
    with client_for(shipped_model) as c:
        yield c


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz(response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error(response, status: int, kind: str, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], (fragment, body)
    return body["error"]["message"]


def close(got, want, tol=TOL) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)


# -- every endpoint equals the Python API ------------------------------------------------------------------------


def test_encode_json_npy_and_uint8_equal_the_python_api(tiny, tiny_model, tiny_images):
    x = tiny_images[:5]
    mu, logvar = tiny_model.encode(x)
    floats = (x.reshape(5, -1) / 255.0).astype(np.float32)
    got = ok(tiny.post("/v1/encode", json={"images": floats.tolist()}))
    close(got["mu"], tiny_model.encode(floats)[0])
    close(got["logvar"], tiny_model.encode(floats)[1])
    got = ok(tiny.post("/v1/encode", json={"images": x.tolist(), "dtype": "uint8"}))  # (n, h, w) integers
    close(got["mu"], mu)
    close(got["logvar"], logvar)
    got = npz(tiny.post("/v1/encode", content=npy(x), headers=NPY))
    assert got["mu"].dtype == np.float32 and set(got) == {"mu", "logvar"}
    np.testing.assert_array_equal(got["mu"], mu)  # the same bytes: no JSON on the way
    got = npz(tiny.post("/v1/encode", json={"images": x.tolist(), "dtype": "uint8"},
                        headers={"accept": "application/x-npz"}))
    np.testing.assert_array_equal(got["logvar"], logvar)


def test_decode_reconstruct_sample_equal_the_python_api(tiny, tiny_model, tiny_images):
    z = np.array([[0.0, 0.0], [1.5, -2.0], [-3.0, 0.25]], np.float32)
    close(ok(tiny.post("/v1/decode", json={"z": z.tolist()}))["x_hat"], tiny_model.decode(z))
    np.testing.assert_array_equal(npz(tiny.post("/v1/decode", content=npy(z), headers=NPY))["x_hat"],
                                  tiny_model.decode(z))
    x = tiny_images[:4]
    close(ok(tiny.post("/v1/reconstruct", json={"images": x.tolist(), "dtype": "uint8"}))["x_hat"],
          tiny_model.reconstruct(x))
    got = ok(tiny.post("/v1/sample", json={"n": 6, "seed": 3}))["x_hat"]
    close(got, tiny_model.sample(6, seed=3))
    assert len(got) == 6 and len(got[0]) == tiny_model.manifest.features


@pytest.mark.parametrize("kind,samples", [("nelbo", 1), ("nelbo", 4), ("recon", 1), ("iwae", 8), ("excess", 1)])
def test_score_equals_the_python_api(tiny, tiny_model, tiny_images, kind, samples):
    x = tiny_images[:6]
    got = ok(tiny.post("/v1/score", json={"images": x.tolist(), "dtype": "uint8", "kind": kind,
                                          "samples": samples, "seed": 5}))
    assert got["kind"] == kind
    close(got["scores"], tiny_model.score(x, kind=kind, samples=samples, seed=5))
    got = npz(tiny.post(f"/v1/score?kind={kind}&samples={samples}&seed=5", content=npy(x), headers=NPY))
    close(got["scores"], tiny_model.score(x, kind=kind, samples=samples, seed=5))


def test_detect_equals_the_python_api_and_409_when_uncalibrated(shipped, shipped_model, tiny, tiny_images):
    from vae_infer.anomaly import scores as anomaly

    x = np.concatenate([tiny_images[:4], 255 - tiny_images[:2]])  # two inverted images: anomalies
    flags, scores = shipped_model.detect(x)
    kind, limit = anomaly.threshold(shipped_model)
    got = ok(shipped.post("/v1/detect", json={"images": x.tolist(), "dtype": "uint8"}))
    assert got["kind"] == kind and got["threshold"] == pytest.approx(limit, abs=TOL)
    assert got["flags"] == flags.tolist() and any(got["flags"]) and not all(got["flags"])
    close(got["scores"], scores)
    got = npz(shipped.post("/v1/detect?kind=recon&quantile=0.9", content=npy(x), headers=NPY))
    want_flags, want_scores = shipped_model.detect(x, kind="recon", quantile=0.9)
    np.testing.assert_array_equal(got["flags"], want_flags)
    close(got["scores"], want_scores)
    error(tiny.post("/v1/detect", json={"images": tiny_images[:2].tolist(), "dtype": "uint8"}), 409,
          "model_package", "not calibrated", "vae-infer calibrate")
    got = ok(tiny.post("/v1/detect", json={"images": tiny_images[:2].tolist(), "dtype": "uint8", "kind": "recon",
                                           "threshold": 1.0}))
    assert got["flags"] == [True, True] and got["threshold"] == 1.0


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_from_images_equals_the_python_api(tiny, tiny_model, tiny_images, method):
    a, b = tiny_images[0], tiny_images[1]
    got = ok(tiny.post("/v1/interpolate", json={"image_a": a.tolist(), "image_b": b.tolist(), "dtype": "uint8",
                                                "steps": 7, "method": method}))
    images, codes = tiny_model.interpolate(a, b, steps=7, method=method, return_codes=True)
    close(got["z"], codes)
    close(got["x_hat"], images)
    want = tiny_model.path_metrics(codes)
    assert got["method"] == method and got["metrics"]["points"] == 7
    assert got["metrics"]["length"] == pytest.approx(want["length"], abs=TOL)


def test_interpolate_from_codes_and_graph_paths(shipped, shipped_model):
    from vae_infer.interpolation.paths import interpolate_codes

    za, zb = [-1.5, 0.5], [1.0, -1.0]
    for method in ("linear", "slerp", "graph"):
        got = ok(shipped.post("/v1/interpolate", json={"z_a": za, "z_b": zb, "steps": 9, "method": method}))
        codes = interpolate_codes(shipped_model, np.array(za), np.array(zb), steps=9, method=method)
        close(got["z"], codes, 1e-5)
        close(got["x_hat"], shipped_model.decode(codes), 1e-5)
        close(got["z"][0], za, 1e-6)
        close(got["z"][-1], zb, 1e-6)
        assert got["metrics"]["length"] == pytest.approx(shipped_model.path_metrics(codes)["length"], rel=1e-5)


def test_info_files_latent_map_and_examples(shipped, shipped_model, tiny):
    from vae_infer.package.files import sha256_bytes

    info = ok(shipped.get("/v1/info"))
    man = shipped_model.manifest
    assert info["name"] == man.name and info["latent_size"] == man.latent_size
    assert info["image_shape"] == list(man.image_shape) and info["calibrated"] is True
    assert info["files"][man.decoder.file] == man.files[man.decoder.file]
    assert info["limits"]["max_rows"] == 4096 and info["auth"] is False
    onnx = shipped.get(f"/v1/files/{man.decoder.file}")
    assert onnx.status_code == 200 and sha256_bytes(onnx.content) == man.files[man.decoder.file]
    assert json.loads(shipped.get("/v1/files/model.json").content)["name"] == man.name
    error(shipped.get("/v1/files/encoder.onnx"), 404, "not_found", "decoder.onnx")
    error(shipped.get("/v1/files/..%2Fmodel.json"), 404, "not_found")
    found = ok(shipped.get("/v1/latent-map"))
    z = np.asarray(found["z"])
    assert z.ndim == 2 and z.shape[1] == man.latent_size and len(z) >= 100 and np.isfinite(z).all()
    if found["labels"] is not None:
        assert len(found["labels"]) == len(z) and len(found["class_names"]) == 10
    error(tiny.get("/v1/latent-map"), 409, "model_package", "latent_map")
    error(tiny.get("/v1/examples"), 409, "data_error", "--examples")


@needs_real_data
def test_examples_are_real_test_images(tiny_model):
    from vae_infer.data.datasets import CLASS_NAMES
    from vae_infer.data.sources import open_source

    with client_for(tiny_model, examples="fashion-mnist", examples_count=5) as c:
        got = ok(c.get("/v1/examples"))
    source = open_source("fashion-mnist", split="test")
    images, labels = np.asarray(got["images"]), np.asarray(got["labels"])
    assert images.shape == (5, tiny_model.manifest.features) and images.max() > 100
    assert got["class_names"] == list(CLASS_NAMES["fashion-mnist"])
    # each one is a real test image with its real label
    all_images = source.read(0, len(source)).reshape(len(source), -1)
    for img, label in zip(images, labels, strict=True):
        hits = np.nonzero((all_images == img).all(1))[0]
        assert len(hits) >= 1 and label in source.labels()[hits]


# -- bad input ----------------------------------------------------------------------------------------------


ROW = [0.0] * 784


@pytest.mark.parametrize("path,body,status,kind,fragment", [
    ("/v1/encode", {"images": [[0.0] * 783]}, 400, "input_error", "expected images shaped (n, 784)"),
    ("/v1/encode", {"images": [ROW, [0.0] * 10]}, 400, "input_error", "equal length"),
    ("/v1/encode", {"images": [[2.0] * 784]}, 400, "input_error", "must lie in [0, 1]"),
    ("/v1/encode", {"images": [[-0.5] + ROW[1:]]}, 400, "input_error", "must lie in [0, 1]"),
    ("/v1/encode", {"images": [[300] * 784], "dtype": "uint8"}, 400, "input_error", "integers 0..255"),
    ("/v1/encode", {"images": [[0.5] * 784], "dtype": "uint8"}, 400, "input_error", "integers 0..255"),
    ("/v1/encode", {"images": []}, 400, "input_error", "expected images shaped"),
    ("/v1/encode", {"images": [[[0.0] * 28] * 27]}, 400, "input_error", "expected images shaped"),
    ("/v1/encode", {}, 422, "schema", "images: Field required"),
    ("/v1/encode", {"images": "cat"}, 422, "schema", "images"),
    ("/v1/encode", {"images": [ROW], "colour": True}, 422, "schema", "colour: Extra inputs"),
    ("/v1/encode", {"images": [ROW], "dtype": "int64"}, 422, "schema", "dtype"),
    ("/v1/encode", [ROW], 422, "schema", ""),
    ("/v1/decode", {"z": [[0.0, 0.0, 0.0]]}, 400, "input_error", "expected latent codes shaped (n, 2)"),
    ("/v1/decode", {"z": [[1e39, 0.0]]}, 400, "input_error", "latent codes"),
    ("/v1/decode", {"z": [[0.0, None]]}, 422, "schema", "z.0.1"),
    ("/v1/reconstruct", {"images": [[0.0] * 784, None]}, 422, "schema", ""),
    ("/v1/sample", {"n": 0}, 422, "schema", "n: Input should be greater than or equal to 1"),
    ("/v1/sample", {"n": 2, "seed": -1}, 422, "schema", "seed"),
    ("/v1/sample", {"n": "two"}, 422, "schema", "n"),
    ("/v1/score", {"images": [ROW], "kind": "likelihood"}, 422, "schema", "kind"),
    ("/v1/score", {"images": [ROW], "samples": 0}, 422, "schema", "samples"),
    ("/v1/score", {"images": [ROW], "samples": 10**6}, 422, "schema", "samples"),
    ("/v1/detect", {"images": [ROW], "quantile": 1.5}, 422, "schema", "quantile"),
    ("/v1/detect", {"images": [ROW], "quantile": 0.9, "threshold": 3.0}, 400, "input_error", "not both"),
    ("/v1/interpolate", {"image_a": ROW, "image_b": ROW, "steps": 1}, 422, "schema", "steps"),
    ("/v1/interpolate", {"image_a": ROW, "image_b": ROW, "method": "cubic"}, 422, "schema", "method"),
    ("/v1/interpolate", {"image_a": ROW, "z_b": [0, 0]}, 422, "schema", "either image_a and image_b"),
    ("/v1/interpolate", {"image_a": ROW, "image_b": ROW, "z_a": [0, 0], "z_b": [1, 1]}, 422, "schema", "either"),
    ("/v1/interpolate", {"image_a": ROW, "image_b": ROW}, 400, "input_error", "same latent code"),
    ("/v1/interpolate", {"image_a": ROW[:5], "image_b": ROW}, 400, "input_error", "expected"),
    ("/v1/interpolate", {"z_a": [0, 0, 0], "z_b": [1, 1, 1]}, 400, "input_error", "latent"),
    ("/v1/interpolate", {"z_a": [0, 0], "z_b": [1, 1], "method": "graph"}, 409, "model_package", "latent_index"),
])
def test_bad_json_inputs(tiny, path, body, status, kind, fragment):
    error(tiny.post(path, json=body), status, kind, fragment)


def test_bad_bodies(tiny, tiny_images):
    error(tiny.post("/v1/encode", content=b'{"images": [[0.0,', headers={"content-type": "application/json"}), 400,
          "bad_request", "not valid JSON")
    error(tiny.post("/v1/encode", content=b'{"images": [[NaN' + b", 0.0" * 783 + b"]]}", headers=JSON_TYPE), 400,
          "input_error", "NaN or inf")
    error(tiny.post("/v1/encode", content=b"not an array", headers=NPY), 400, "bad_request", "numpy's .npy format")
    error(tiny.post("/v1/encode", content=npy(tiny_images[:2])[:100], headers=NPY), 400, "bad_request", ".npy body")
    error(tiny.post("/v1/encode", content=npy(np.array([{"a": 1}], dtype=object)), headers=NPY), 400, "bad_request",
          "pickle")
    error(tiny.post("/v1/encode", content=npy(np.zeros((2, 28, 28, 3), np.uint8)), headers=NPY), 400, "input_error",
          "grayscale")
    error(tiny.post("/v1/encode", content=npy(np.zeros((2, 784), np.int64)), headers=NPY), 400, "input_error",
          "uint8")
    error(tiny.post("/v1/decode", content=npy(np.array([[np.inf, 0]], np.float32)), headers=NPY), 400,
          "input_error", "NaN or inf")
    error(tiny.post("/v1/encode", content=npy(np.float32(0.5)), headers=NPY), 400, "input_error", "expected images")
    error(tiny.post("/v1/score?kind=nope", content=npy(tiny_images[:1]), headers=NPY), 422, "schema", "kind")
    error(tiny.post("/v1/score?samples=3&bogus=1", content=npy(tiny_images[:1]), headers=NPY), 422, "schema", "bogus")
    error(tiny.get("/v1/nothing"), 404, "not_found")
    error(tiny.get("/v1/encode"), 405, "method_not_allowed")


# -- limits ---------------------------------------------------------------------------------------------------


def test_row_and_body_limits(tiny, tiny_images):
    many = np.zeros((65, 784), np.uint8)
    error(tiny.post("/v1/encode", content=npy(many), headers=NPY), 413, "too_large", "65 images", "--max-rows")
    error(tiny.post("/v1/decode", json={"z": [[0.0, 0.0]] * 65}), 413, "too_large", "65 latent codes")
    error(tiny.post("/v1/sample", json={"n": 65}), 413, "too_large", "65 samples")
    assert len(npz(tiny.post("/v1/encode", content=npy(many[:64]), headers=NPY))["mu"]) == 64
    big = npy(np.zeros((1300, 784), np.uint8))  # 1.02 MB > the 1 MB limit of this app
    error(tiny.post("/v1/encode", content=big, headers=NPY), 413, "too_large", "--max-body-bytes")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    error(tiny.post("/v1/encode", content=chunks(), headers=NPY), 413, "too_large", "--max-body-bytes")
    assert 'vae_rejected_total{reason="too_large"} 2' in tiny.get("/metrics").text


def test_busy_and_timeout_give_503_with_retry_after(tiny_model):
    """A call holding the only slot (a real blocking call on the app's own limiter) makes the next request 503;
    with one compute thread busy, a queued request times out with 503 while its call still finishes later."""
    release = threading.Event()
    with client_for(tiny_model, max_in_flight=1, compute_threads=1) as c:
        limiter = c.app.state.vae.limiter
        held = c.portal.start_task_soon(limiter.run, release.wait, 10)
        _wait(lambda: limiter.in_flight == 1)
        r = c.post("/v1/decode", json={"z": [[0.0, 0.0]]})
        error(r, 503, "busy", "1 requests in flight", "--max-in-flight")
        assert r.headers["retry-after"] == "1"
        release.set()
        held.result(5)
        _wait(lambda: limiter.in_flight == 0)
        ok(c.post("/v1/decode", json={"z": [[0.0, 0.0]]}))
    release.clear()
    # inline_rows=0: the one-row decode must queue for the busy compute thread (an inline call would not wait)
    with client_for(tiny_model, max_in_flight=4, compute_threads=1, request_timeout_s=0.2, inline_rows=0) as c:
        limiter = c.app.state.vae.limiter
        held = c.portal.start_task_soon(limiter.run, release.wait, 10)
        _wait(lambda: limiter.in_flight == 1)
        r = c.post("/v1/decode", json={"z": [[0.0, 0.0]]})
        error(r, 503, "timeout", "longer than 0.2 s")
        assert r.headers["retry-after"] == "1" and limiter.in_flight == 2  # the timed-out call keeps its slot
        release.set()
        with pytest.raises(Exception, match="longer than 0.2 s"):  # the holder's own wait timed out too
            held.result(5)
        _wait(lambda: limiter.in_flight == 0)
        text = c.get("/metrics").text
        assert 'vae_rejected_total{reason="timeout"} 2' in text  # the request's and the slot holder's waits


def _wait(condition, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# -- token, config, health, metrics, docs -----------------------------------------------------------------------


def test_token(tiny_model):
    with client_for(tiny_model, host="0.0.0.0", token="s3cret", allowed_hosts=("localhost",)) as c:
        r = c.get("/v1/info")
        error(r, 401, "unauthorized", "no Authorization header", "--token")
        assert r.headers["www-authenticate"] == "Bearer"
        error(c.get("/v1/info", headers={"authorization": "Bearer wrong"}), 401, "unauthorized", "wrong token")
        error(c.post("/v1/decode", json={"z": [[0, 0]]}, headers={"authorization": "s3cret"}), 401, "unauthorized")
        error(c.get("/metrics"), 401, "unauthorized")
        error(c.get("/v1/files/decoder.onnx"), 401, "unauthorized")
        auth = {"authorization": "Bearer s3cret"}
        assert ok(c.get("/v1/info", headers=auth))["auth"] is True
        close(ok(c.post("/v1/decode", json={"z": [[0, 0]]}, headers=auth))["x_hat"], tiny_model.decode([[0, 0]]))
        assert ok(c.get("/healthz")) == {"status": "ok"} and ok(c.get("/readyz"))["ready"] is True
        assert c.get("/").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_config_refuses_open_binds_without_token():
    from vae_infer.errors import InputError
    from vae_infer.serve import ServeConfig

    with pytest.raises(InputError, match="refusing to bind to 0.0.0.0 without a token.*--insecure"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", insecure=True, allowed_hosts=("vae.example",)).host == "0.0.0.0"
    with pytest.raises(InputError, match="needs --allowed-host NAME"):
        ServeConfig(host="::", token="t0ken")
    assert ServeConfig(host="::1").token is None  # loopback, v6
    with pytest.raises(InputError, match="token must not be empty"):
        ServeConfig(token=" ")
    with pytest.raises(InputError, match="max_rows must be a positive integer"):
        ServeConfig(max_rows=0)


def test_health_readiness_metrics_and_docs(tiny_model):
    with client_for(tiny_model) as c:
        assert ok(c.get("/readyz")) == {"ready": True, "in_flight": 0}
        for _ in range(3):
            ok(c.post("/v1/decode", json={"z": [[0.0, 0.0]]}))
        c.post("/v1/decode", json={"z": [[0.0]]})
        text = c.get("/metrics").text
        assert c.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'vae_http_requests_total{method="POST",endpoint="/v1/decode",status="200"} 3' in text
        assert 'vae_http_requests_total{method="POST",endpoint="/v1/decode",status="400"} 1' in text
        assert 'vae_rows_total{endpoint="decode"} 3' in text
        buckets = [int(v) for v in re.findall(
            r'vae_http_request_duration_seconds_bucket\{method="POST",endpoint="/v1/decode",le="[^"]+"\} (\d+)', text)]
        assert len(buckets) == 15 and buckets == sorted(buckets) and buckets[-1] == 4
        assert 'vae_http_request_duration_seconds_count{method="POST",endpoint="/v1/decode"} 4' in text
        schema = c.get("/openapi.json").json()
        for path in ("/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/sample", "/v1/score", "/v1/detect",
                     "/v1/interpolate", "/v1/info", "/v1/latent-map", "/healthz", "/readyz", "/metrics"):
            assert path in schema["paths"], path
        body = schema["paths"]["/v1/encode"]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "application/x-npy"}
        assert "images" in schema["components"]["schemas"]["EncodeRequest"]["properties"]
        assert "mu" in schema["components"]["schemas"]["EncodeResponse"]["properties"]
        docs = c.get("/docs")  # rendered from the schema by the wheel's own code: no CDN, no npm, no script
        assert docs.status_code == 200 and "<script" not in docs.text and "cdn" not in docs.text.lower()
        assert "/v1/encode" in docs.text and "&quot;images&quot;" in docs.text and "logvar" in docs.text
        assert "script-src" not in docs.headers["content-security-policy"]
        assert c.get("/docs.css").headers["content-type"].startswith("text/css") and c.get("/redoc").status_code == 404
        c.app.state.vae.draining = True
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["ready"] is False
        assert ok(c.get("/healthz")) == {"status": "ok"}


# -- the command and the real server ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_serve_help_refusals_and_missing_extra(tmp_path):
    from click.testing import CliRunner

    from tests.conftest import fails
    from vae_infer.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and "--token" in result.output and "--web-assets" in result.output
    fails(runner.invoke(main, ["serve", str(SHIPPED), "--host", "0.0.0.0"]), "refusing to bind", "--token")
    fails(runner.invoke(main, ["serve", str(tmp_path / "nope")]), "nope")
    code = ("import sys; sys.modules['fastapi'] = None; from vae_infer.cli import main; "
            "main(['serve', 'models/fashion-mnist'])")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "Error: serving needs fastapi, which is not installed: pip install 'vae-infer[serve]'"


def start_server(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`vae-infer serve` on a free loopback port in a subprocess; returns it and its base URL."""
    cmd = [sys.executable, "-m", "vae_infer", "serve", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    line = proc.stderr.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe from filling
    return proc, match.group(1)


@pytest.mark.slow
def test_real_server_graceful_shutdown():
    """SIGTERM: /readyz turns false at once, a request in flight still gets its answer, then the process ends (uvicorn
    re-raises the signal after its graceful shutdown, so the exit status says SIGTERM)."""
    import httpx

    proc, url = start_server(str(SHIPPED), "--examples", "none", "--drain", "1.5")
    try:
        _wait(lambda: _get(url + "/readyz") == 200, 30)
        body = npy(np.zeros((512, 784), np.float32))  # about a second of work (a batch this size goes as .npy)
        result = {}
        slow = threading.Thread(target=lambda: result.update(r=httpx.post(
            url + "/v1/score?kind=iwae&samples=256", content=body, headers=NPY, timeout=60)))
        slow.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert _get(url + "/readyz") == 503  # still answering, but not ready
        slow.join(60)
        assert len(npz(result["r"])["scores"]) == 512
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert _get(url + "/healthz") == -1  # gone
    finally:
        proc.kill()
        proc.wait()


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return -1


# -- fuzzing from the app's own OpenAPI schema ----------------------------------------------------------------

FUZZ_CASES: dict[str, dict[int, int]] = {}  # path -> status -> count


def _strategy(schema: dict, components: dict, budget: int = 4000):
    """A hypothesis strategy for JSON values that mostly follow `schema` (OpenAPI 3.1 / JSON Schema as pydantic
    writes it), with boundary values and array lengths near the model's shapes, so that both valid and invalid
    requests come out. `budget` bounds the numbers in one value (nested arrays multiply)."""
    from hypothesis import strategies as st

    if "$ref" in schema:
        return _strategy(components[schema["$ref"].rsplit("/", 1)[1]], components, budget)
    if "anyOf" in schema:
        return st.one_of([_strategy(s, components, budget) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), st.sampled_from(schema["enum"]), st.text(max_size=6))
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object":
        props = {k: _strategy(v, components, budget) for k, v in schema.get("properties", {}).items()}
        required = {k: props[k] for k in schema.get("required", [])}
        optional = {k: v for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "array":
        # lengths near the model's shapes (latent 2, width 28, features 784), within the budget
        sizes = st.sampled_from([n for n in (0, 1, 2, 2, 3, 28, 784, 784, 784) if n <= budget])
        items = schema.get("items", {})

        def of_length(n: int):
            item = _strategy(items, components, budget // max(n, 1))
            # one value repeated (often valid: all pixels 0.5), or a few independent values
            return item.map(lambda v: [v] * n) | st.lists(item, min_size=min(n, 3), max_size=min(n, 3))

        return sizes.flatmap(of_length)
    if kind == "number":
        return st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([-1.0, 255.0, 1e30, -0.0]),
                         st.floats(allow_nan=False, width=32))
    if kind == "integer":
        lo, hi = schema.get("minimum", -3), schema.get("maximum", 70)
        return st.integers(lo - 2, min(hi, 70) + 2) | st.sampled_from([hi + 1, 2**63, -(2**31)])
    if kind == "string":
        return st.text(max_size=8)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _junk()


def _junk():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | st.text(max_size=5)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5),
                                                                                              inner, max_size=3),
                        max_leaves=12)


# One valid body per endpoint: the fuzzer also sends it with one or two fields replaced by values drawn from the
# schema, which reaches the model with odd-but-typed values far more often than fully random bodies do.
VALID = {
    "/v1/encode": {"images": [[0.5] * 784]},
    "/v1/decode": {"z": [[0.1, -0.2]]},
    "/v1/reconstruct": {"images": [[0.25] * 784], "dtype": "float32"},
    "/v1/sample": {"n": 2, "seed": 1},
    "/v1/score": {"images": [[0.5] * 784], "kind": "recon"},
    "/v1/detect": {"images": [[0.5] * 784], "kind": "recon", "threshold": 100.0},
    "/v1/interpolate": {"z_a": [0.0, 0.0], "z_b": [1.0, 1.0], "steps": 5},
}
FUZZED = list(VALID)


def _with_replaced_fields(valid: dict, schema: dict, components: dict):
    from hypothesis import strategies as st

    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    fields = {k: _strategy(v, components) for k, v in schema["properties"].items()}
    keys = st.sets(st.sampled_from(sorted(fields)), min_size=1, max_size=2)
    return keys.flatmap(lambda ks: st.fixed_dictionaries({k: fields[k] for k in ks})).map(lambda o: {**valid, **o})


@pytest.fixture(scope="module")
def fuzz_client(tiny_model):
    with client_for(tiny_model, max_rows=16, request_timeout_s=10) as c:
        schema = c.get("/openapi.json").json()
        yield c, schema


@pytest.mark.parametrize("path", FUZZED)
@pytest.mark.slow
def test_fuzz_from_openapi_schema(fuzz_client, path):
    """Bodies drawn from the request schema the app publishes (plus arbitrary JSON): never a 5xx (the only
    documented one, 503, needs load this test does not make), always the error format."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client, schema = fuzz_client
    components = schema["components"]["schemas"]
    body_schema = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    bodies = st.one_of(_with_replaced_fields(VALID[path], body_schema, components),
                       _strategy(body_schema, components), _junk())

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies)
    def check(body):
        r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        counts = FUZZ_CASES.setdefault(path, {})
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code != 200:
            err = r.json()["error"]
            assert isinstance(err["type"], str) and err["message"], r.text

    check()
    counts = FUZZ_CASES[path]
    total = sum(sum(c.values()) for c in FUZZ_CASES.values())
    print(f"\nfuzz {path}: {sum(counts.values())} cases, statuses {sorted(counts.items())}; {total} in all so far")
    assert counts.get(200, 0) > 0  # the strategy reaches valid requests too, not only the error paths
    assert set(counts) <= {200, 400, 409, 413, 422}, counts


def test_limiter_releases_slots_of_calls_that_fail(tiny_model):
    """A call that raises frees its slot, and the error reaches the client in the error format."""
    with client_for(tiny_model, max_in_flight=1) as c:
        for _ in range(3):
            error(c.post("/v1/decode", json={"z": [[0.0, 0.0, 1.0]]}), 400, "input_error")
        assert c.app.state.vae.limiter.in_flight == 0
        ok(c.post("/v1/decode", json={"z": [[0.0, 0.0]]}))


def test_small_requests_run_inline_and_large_ones_on_a_compute_thread(tiny_package, tiny_images):
    """encode/decode/reconstruct of at most inline_rows rows run on the event loop's thread, larger ones on a
    compute thread; both give the Python API's answers, and inline_rows=0 sends every call to the threads."""
    import threading

    import vae_infer

    for inline_rows, small_where in ((8, "loop"), (0, "compute")):
        model = vae_infer.load(tiny_package, threads=1)
        seen = []
        encode = model.encode

        def recording(x, encode=encode, seen=seen):
            name = threading.current_thread().name
            seen.append("compute" if name.startswith("vae-compute") else "loop")
            return encode(x)

        model.encode = recording  # the real encode, with a note of the thread it ran on
        with client_for(model, inline_rows=inline_rows) as c:
            for rows in (1, 8, 9):
                r = c.post("/v1/encode", json={"images": (tiny_images[:rows] / 255.0).tolist()})
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(np.array(r.json()["mu"]), encode(tiny_images[:rows])[0], atol=TOL)
        assert seen == [small_where, small_where, "compute"], (inline_rows, seen)


def test_score_iwae_defaults_to_the_same_k_as_python(tiny, tiny_model, tiny_images):
    x = tiny_images[:4] / 255.0
    r = tiny.post("/v1/score", json={"images": x.tolist(), "kind": "iwae"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["scores"], tiny_model.score(x, kind="iwae", seed=0), rtol=1e-6)
    np.testing.assert_allclose(r.json()["scores"], tiny_model.score(x, kind="iwae", samples=64, seed=0), rtol=1e-6)
