"""Every bad input gets a named exception whose message says what was expected and what was found."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import vae_infer
from vae_infer import DeviceError, InputError

GOOD = np.zeros((3, 784), dtype=np.float32)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((3, 783), np.float32), r"expected images shaped \(n, 784\) or \(n, 28, 28\), got \(3, 783\)"),
        (np.zeros((784,), np.float32), r"for a single image pass images\[None\]"),
        (np.zeros((28, 28), np.float32), r"for a single image pass images\[None\]"),
        (np.zeros((2, 28, 28, 3), np.float32), r"28x28x3 per row.*pass grayscale 28x28 images"),
        (np.zeros((2, 27, 27), np.float32), r"got \(2, 27, 27\)"),
        (np.zeros((0, 784), np.float32), r"empty batch"),
        (np.full((3, 784), 0.5, np.float32) * np.array([np.nan, 1, 1])[:, None],
         r"NaN or inf in 1 row\(s\), first at row 0"),
        (np.where(np.eye(3, 784) > 0, np.inf, 0).astype(np.float32), r"NaN or inf in 3 row\(s\)"),
        (np.full((3, 784), 255.0, np.float32), r"must lie in \[0, 1\], found values in \[255, 255\].*divide"),
        (np.full((3, 784), -0.1, np.float32), r"found values in \[-0.1, -0.1\]"),
        (np.zeros((3, 784), np.int32), r"integer images must be uint8"),
        (np.zeros((3, 784), bool), r"expected uint8 or float images, got dtype bool"),
        (np.array([["a"] * 784]), r"got dtype <U1"),
        ([[None] * 784], r"got dtype object"),
    ],
)
def test_bad_images_are_refused_with_a_clear_message(tiny_model, images, message):
    with pytest.raises(InputError, match=message):
        tiny_model.encode(images)
    with pytest.raises(InputError, match=message):
        tiny_model.score(images)


@pytest.mark.parametrize(
    ("z", "message"),
    [
        (np.zeros((4, 3), np.float32), r"expected latent codes shaped \(n, 2\), got \(4, 3\)"),
        (np.zeros((2,), np.float32), r"for a single code pass z\[None\]"),
        (np.zeros((0, 2), np.float32), r"empty batch"),
        (np.array([[0.0, np.nan]]), r"latent codes contain NaN or inf"),
        (np.array([["a", "b"]]), r"numeric latent codes"),
    ],
)
def test_bad_latents_are_refused(tiny_model, z, message):
    with pytest.raises(InputError, match=message):
        tiny_model.decode(z)


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3", None])
def test_bad_sample_count(tiny_model, n):
    with pytest.raises(InputError, match=r"n must be a positive integer"):
        tiny_model.sample(n)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(tiny_model, seed):
    with pytest.raises(InputError, match=r"seed must be a non-negative integer or None"):
        tiny_model.sample(2, seed=seed)
    with pytest.raises(InputError, match=r"seed must be"):
        tiny_model.score(GOOD, seed=seed)


def test_bad_samples_for_score(tiny_model):
    with pytest.raises(InputError, match=r"samples must be a positive integer, got 0"):
        tiny_model.score(GOOD, samples=0)


def test_unknown_device(tiny_package):
    with pytest.raises(DeviceError, match=r"unknown device 'tpu': expected one of cpu, cuda, auto"):
        vae_infer.load(tiny_package, device="tpu")


# The device="cuda" paths run on every machine: onnxruntime's report of its providers is patched
# (tests/conftest.py onnxruntime_offers), the sessions stay real.


def test_cuda_not_offered_is_refused(tiny_package, onnxruntime_offers):
    onnxruntime_offers(cuda=False)
    with pytest.raises(DeviceError, match=r"device='cuda' but this onnxruntime offers only \['CPUExecutionProvider'\]; "
                                          r"install the gpu extra \(pip install 'vae-infer\[gpu\]'\) .*device='cpu'"):
        vae_infer.load(tiny_package, device="cuda")


@pytest.mark.parametrize(
    ("session", "problem"),
    [
        ("cpu", r"onnxruntime made the session with \['CPUExecutionProvider'\] instead"),
        ("raises", r"\[ONNXRuntimeError\] : 1 : FAIL : Failed to load library "
                   r"libonnxruntime_providers_cuda\.so .*libcublasLt\.so\.12"),
    ],
)
def test_cuda_offered_but_not_active_never_falls_back_silently(tiny_package, onnxruntime_offers, session, problem):
    onnxruntime_offers(cuda=True, session=session)
    with pytest.raises(DeviceError, match=r"^device='cuda' requested but CUDAExecutionProvider is not active: "
                                          + problem):
        vae_infer.load(tiny_package, device="cuda")


@pytest.mark.parametrize(("cuda", "session"), [(False, "cpu"), (True, "cpu"), (True, "raises")])
def test_auto_falls_back_to_the_cpu_and_says_so(tiny_package, tiny_model, tiny_images, onnxruntime_offers,
                                                cuda, session):
    onnxruntime_offers(cuda=cuda, session=session)
    m = vae_infer.load(tiny_package, device="auto", threads=1)
    assert m.device == "cpu"
    assert m.providers == {"encoder": ["CPUExecutionProvider"], "decoder": ["CPUExecutionProvider"]}
    np.testing.assert_array_equal(m.encode(tiny_images)[0], tiny_model.encode(tiny_images)[0])


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_an_active_cuda_provider_is_reported(tiny_package, onnxruntime_offers, device):
    onnxruntime_offers(cuda=True, session="cuda")
    m = vae_infer.load(tiny_package, device=device, threads=1)
    assert m.device == "cuda"
    assert m.providers["encoder"][0] == m.providers["decoder"][0] == "CUDAExecutionProvider"


def test_auto_reports_what_it_got(tiny_package):
    import onnxruntime as ort

    m = vae_infer.load(tiny_package, device="auto")
    expected = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert m.device == expected


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_bad_threads(tiny_package, threads):
    with pytest.raises(DeviceError, match=r"threads must be a positive integer"):
        vae_infer.load(tiny_package, threads=threads)


def test_bad_chunk_size(tiny_package):
    with pytest.raises(InputError, match=r"chunk_size must be a positive integer"):
        vae_infer.load(tiny_package, chunk_size=0)


def test_one_except_clause_catches_every_kind_of_bad_call(tiny_package, tmp_path, monkeypatch):
    """What each kind of mistake really raises is caught by `except vae_infer.VaeInferError`, as an
    application (and the CLI's one error handler) relies on."""
    from vae_infer.data.datasets import read_idx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached C library to fall back on
    monkeypatch.setitem(sys.modules, "onnx", None)  # the C backend's extra, missing
    calls = {
        vae_infer.InputError: lambda: vae_infer.load(tiny_package).encode(np.zeros((2, 3), np.float32)),
        vae_infer.ModelPackageError: lambda: vae_infer.load(tmp_path / "nowhere"),
        vae_infer.DeviceError: lambda: vae_infer.load(tiny_package, threads=0),
        vae_infer.DataError: lambda: read_idx(tmp_path / "absent-idx3-ubyte.gz"),
        vae_infer.MissingExtraError: lambda: vae_infer.load(tiny_package, backend="c"),
    }
    for kind, call in calls.items():
        try:
            call()
        except vae_infer.VaeInferError as e:
            assert isinstance(e, kind), (kind, e)
            assert str(e) and "\n" not in str(e)  # one line that says what went wrong
        else:
            raise AssertionError(f"{kind.__name__} expected")


def test_unknown_backend_and_c_on_gpu(tiny_package):
    with pytest.raises(DeviceError, match=r"unknown backend 'tensorrt': expected one of onnxruntime, c"):
        vae_infer.load(tiny_package, backend="tensorrt")
    with pytest.raises(DeviceError, match=r"backend='c' runs on the CPU only, got device='cuda'"):
        vae_infer.load(tiny_package, backend="c", device="cuda")


def test_weights_are_a_c_backend_option(tiny_package):
    with pytest.raises(DeviceError, match=r"weights='int8' is a C-backend option .*variant='int8'"):
        vae_infer.load(tiny_package, weights="int8")
