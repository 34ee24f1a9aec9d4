"""The server's rules as plain functions, without a server: Host names, metric labels, path redaction, and the
JSON reader's exact types and shapes (tests/test_serve_hostile.py drives the same rules through a real server)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs_module

pytestmark = [needs_module("fastapi", "serve"), needs_module("simdjson", "serve")]


@pytest.mark.parametrize("raw,name", [("localhost", "localhost"), ("LocalHost:8000", "localhost"),
                                      ("localhost.", "localhost"), ("[::1]:80", "::1"), ("[::1]", "::1"),
                                      ("127.0.0.1:1", "127.0.0.1"), ("::1", None), ("localhost:x", None),
                                      ("a b", None), ("", None), ("[::1]x", None), ("host:123456", None)])
def test_host_names(raw, name):
    from vae_infer.serve.guards import normalize_host

    assert normalize_host(raw) == name


def test_allowed_host_names():
    from vae_infer.serve.guards import allowed_host_names

    assert allowed_host_names("127.0.0.1", ()) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_host_names("0.0.0.0", ("VAE.example.", "fe80::1")) == {"localhost", "127.0.0.1", "::1",
                                                                           "vae.example", "fe80::1"}
    assert "10.0.0.5" in allowed_host_names("10.0.0.5", ())


def test_metric_labels_are_a_closed_set():
    from vae_infer.serve.metrics import OTHER, Labels

    labels = Labels(frozenset({"/v1/info", "/"}), (("/v1/files/", "/v1/files/{name}", False),
                                                   ("/web/", "/web/*", True)))
    assert labels.endpoint("/v1/info") == "/v1/info" and labels.endpoint("/") == "/"
    assert labels.endpoint("/v1/files/decoder.onnx") == "/v1/files/{name}"
    assert labels.endpoint("/v1/files/a/b") == OTHER and labels.endpoint("/v1/files/") == OTHER
    assert labels.endpoint("/web/js/main.js") == "/web/*"
    assert labels.endpoint("/v1/info/x") == OTHER and labels.endpoint("/" + "x" * 5000) == OTHER
    assert [labels.method(m) for m in ("GET", "POST", "HEAD", "OPTIONS", "BREW", "get")] == \
        ["GET", "POST", "HEAD", "OPTIONS", OTHER, OTHER]


@pytest.mark.parametrize("text,shown", [
    ("/srv/models/fashion-mnist has no latent_map", "fashion-mnist has no latent_map"),
    ("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz (test)", "t10k-images-idx3-ubyte.gz (test)"),
    ("C:\\data\\x.npy", "x.npy"), ("see POST /v1/decode and /healthz", "see POST /v1/decode and /healthz"),
    ("http://host:8000/a/b", "http://host:8000/a/b"), ("shape (n, 784) and 1/2", "shape (n, 784) and 1/2")])
def test_paths_are_cut_to_their_last_component(text, shown):
    from vae_infer.serve.redact import redact, redact_paths

    assert redact_paths(text) == shown
    assert redact({"a": [text, 3], "b": None}) == {"a": [shown, 3], "b": None}


def read(body: bytes, model: str = "DecodeRequest"):
    from vae_infer.serve import schemas
    from vae_infer.serve.jsonbody import read_json

    return read_json(body, getattr(schemas, model))


def test_json_numbers_go_straight_into_numpy():
    parsed, arrays = read(b'{"images": [[[0, 255], [1, 2.5]], [[3, 4], [5, 6]]], "dtype": "uint8"}', "EncodeRequest")
    assert parsed.dtype == "uint8" and arrays["images"].shape == (2, 2, 2)
    np.testing.assert_array_equal(arrays["images"][0], [[0, 255], [1, 2.5]])
    parsed, arrays = read(b'{"z_a": [0, 1.5], "z_b": [2, 3], "steps": 4}', "InterpolateRequest")
    assert parsed.steps == 4 and arrays["z_b"].tolist() == [2.0, 3.0]
    assert read(b'{"images": [], "dtype": "float32"}', "EncodeRequest")[1]["images"].shape == (0,)
    assert read(b"", "SampleRequest")[0].n == 1


@pytest.mark.parametrize("body,status,fragment", [
    (b'{"z": [["0.5", 0]]}', 422, "z.0.0: expected a number"),
    (b'{"z": [[true, false]]}', 422, "z.0.0"),
    (b'{"z": [[0.5, null]]}', 422, "z.0.1"),
    (b'{"z": [[1, 2], [3]]}', 400, "equal length"),
    (b'{"z": [[1, 2], 3, [[4, 5]]]}', 400, "equal length"),
    (b'{"z": [[[1], [2]]]}', 400, "nested"),
    (b'{"z": [[], [0.0]]}', 400, "equal length"),
    (b'{"z": [[1e309, 0]]}', 400, "not valid JSON"),
    (b'{"z": [[NaN, 0]]}', 400, "NaN or inf"),
    (b'{"z": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "not valid JSON"),
    (b'{"z": [[1, 2]], "z": [[3, 4]]}', 422, "given twice"),
    (b'{"z": [[1, 2]], "extra": 1}', 422, "extra: Extra inputs"),
    (b'{"z": "cat"}', 422, "z: expected an array"),
    (b"[[1, 2]]", 422, "expected a JSON object"),
])
def test_json_bodies_refused(body, status, fragment):
    from vae_infer.errors import InputError
    from vae_infer.serve.errors import classify

    with pytest.raises(Exception) as e:
        read(body)
    got, _, message, _ = classify(e.value)
    assert (got, fragment in message) == (status, True), (got, message)
    assert not isinstance(e.value, InputError) or status == 400


@pytest.mark.parametrize("body,field", [(b'{"n": "3"}', "n"), (b'{"seed": true}', "seed"), (b'{"n": 2.0}', "n"),
                                        (b'{"n": [3]}', "n")])
def test_option_types_are_exact(body, field):
    from vae_infer.serve.errors import classify

    with pytest.raises(Exception) as e:
        read(body, "SampleRequest")
    status, kind, message, _ = classify(e.value)
    assert (status, kind) == (422, "schema") and message.startswith(f"{field}:"), message
