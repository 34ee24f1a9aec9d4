"""The vae-infer command line, through click's CliRunner: help, results equal to the Python API, --json, and
bad input that ends in one `Error: ...` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import vae_infer
from tests.conftest import fails, ok
from vae_infer import cli
from vae_infer.cli import base as cli_base
from vae_infer.cli import model_commands
from vae_infer.data import arrays as vio

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = FIXTURES / "tiny-model"
IMAGES = FIXTURES / "tiny-images.npz"
T1 = ["--threads", "1"]  # the API model below uses one thread too, so results can be compared exactly


@pytest.fixture(scope="module")
def api():
    return vae_infer.load(MODEL, threads=1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    with np.load(IMAGES) as z:
        return z["images"]


@pytest.fixture
def images_npy(tmp_path, images) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path


def run(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


# -- help --------------------------------------------------------------------------------------------------

COMMON = ["MODEL", "--device", "[cpu|cuda|auto]", "--threads"]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("info", ["Describe a model package", "sha256", "--json"]),
        ("encode", ["Encode images to latent codes", "mu", "logvar", "INPUT", "--out", ".npy gets mu only", "--json"]),
        ("decode", ["Decode latent codes to images", "LATENTS", "--out", "--png"]),
        ("reconstruct", ["Reconstruct images", "INPUT", "--out", "--png", "originals above"]),
        ("sample", ["Sample new images", "-n, --count", "--seed", "--out", "--png"]),
        ("score", ["negative ELBO", "nats", "INPUT", "--samples", "--seed", "--out", "--json"]),
    ],
)
def test_command_help_says_what_it_does_and_its_options(command, words):
    text = " ".join(ok(run(command, "--help")).output.split())  # unwrap click's line breaks
    assert f"Usage: vae-infer {command} [OPTIONS] MODEL" in text
    for word in COMMON + words:
        assert word in text, (word, text)


def test_main_help_lists_every_command():
    text = ok(run("--help")).output
    assert "Usage: vae-infer" in text
    for command in ("info", "encode", "decode", "reconstruct", "sample", "score"):
        assert f"  {command} " in text
    assert ok(run("--version")).output.strip() == f"vae-infer, version {vae_infer.__version__}"


@pytest.mark.slow
def test_installed_console_script_runs():
    script = Path(sys.executable).parent / "vae-infer"
    if not script.exists():
        pytest.skip(f"needs {script}: pip install -e . (make venv)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: vae-infer" in done.stdout and "encode" in done.stdout


# -- info --------------------------------------------------------------------------------------------------


def test_info_shows_the_manifest_and_verified_files(api):
    text = ok(run("info", MODEL, "--full")).output
    man = api.manifest
    for fragment in ("tiny-model", "28 x 28", "latent size:  2", "bernoulli", "opset:        18",
                     "test.nelbo: 533.724", "CPUExecutionProvider", man.files["encoder.onnx"]):
        assert fragment in text, (fragment, text)


def test_info_json(api):
    info = json.loads(ok(run("info", MODEL, "--json")).stdout)
    assert {"name", "image_shape", "latent_size", "likelihood", "opset", "training", "files", "device",
            "providers"} <= set(info)
    assert info["image_shape"] == [28, 28] and info["latent_size"] == 2 and info["opset"] == 18
    assert info["files"] == api.manifest.files
    assert info["training"] == api.manifest.training
    assert info["device"] == "cpu" and info["providers"]["encoder"] == ["CPUExecutionProvider"]


# -- encode ------------------------------------------------------------------------------------------------


def test_encode_writes_exactly_what_the_api_gives(tmp_path, api, images):
    out = tmp_path / "codes.npz"
    text = ok(run("encode", MODEL, f"{IMAGES}:images", "--out", out, *T1)).output
    assert "wrote mu and logvar (32 x 2)" in text
    mu, logvar = api.encode(images)
    with np.load(out) as z:
        assert sorted(z.files) == ["logvar", "mu"]
        np.testing.assert_array_equal(z["mu"], mu)
        np.testing.assert_array_equal(z["logvar"], logvar)


def test_encode_to_npy_writes_mu_only_and_json(tmp_path, api, images, images_npy):
    out = tmp_path / "mu.npy"
    result = ok(run("encode", MODEL, images_npy, "--out", out, "--json", *T1))
    assert json.loads(result.stdout) == {"out": str(out), "arrays": ["mu"], "n": 32, "latent_size": 2}
    np.testing.assert_array_equal(np.load(out), api.encode(images)[0])


def test_encode_accepts_one_image_and_flat_floats(tmp_path, api, images):
    one = tmp_path / "one.npy"
    np.save(one, images[3])  # (28, 28): a single image becomes a batch of one
    ok(run("encode", MODEL, one, "--out", tmp_path / "one.npz", *T1))
    with np.load(tmp_path / "one.npz") as z:
        np.testing.assert_array_equal(z["mu"], api.encode(images[3:4])[0])
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=images.reshape(32, 784).astype(np.float32) / 255)
    ok(run("encode", MODEL, flat, "--out", tmp_path / "flat-mu.npy", *T1))
    np.testing.assert_allclose(np.load(tmp_path / "flat-mu.npy"), api.encode(images)[0], atol=1e-6)


def test_progress_is_shown_on_a_terminal_and_changes_no_result(tmp_path, monkeypatch, images_npy, images):
    small = vae_infer.load(MODEL, threads=1, chunk_size=10)
    monkeypatch.setattr(model_commands, "open_model", lambda model, device, threads: small)
    monkeypatch.setattr(cli_base, "stderr_is_terminal", lambda: True)
    result = ok(run("encode", MODEL, images_npy, "--out", tmp_path / "a.npz"))
    assert "encoding" in result.stderr
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["mu"], small.encode(images)[0])
    result = ok(run("encode", MODEL, images_npy, "--out", tmp_path / "b.npz", "--json"))
    assert result.stderr == "" and json.loads(result.stdout)["n"] == 32
    result = ok(run("score", MODEL, images_npy, "--json"))
    assert result.stderr == "" and json.loads(result.stdout)["mean"] == pytest.approx(small.score(images).mean(), 0)
    assert "sampling 11 images" in ok(run("sample", MODEL, "-n", 11, "--out", tmp_path / "s.npy")).stderr


# -- decode, reconstruct, sample ---------------------------------------------------------------------------


def test_decode_equals_the_api(tmp_path, api):
    z = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    ok(run("decode", MODEL, tmp_path / "z.npy", "--out", tmp_path / "x.npy", *T1))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), api.decode(z))
    np.savez(tmp_path / "codes.npz", mu=z, logvar=z)
    ok(run("decode", MODEL, f"{tmp_path / 'codes.npz'}:mu", "--out", tmp_path / "x.npz", *T1))
    with np.load(tmp_path / "x.npz") as f:
        np.testing.assert_array_equal(f["images"], api.decode(z))


def test_reconstruct_equals_the_api(tmp_path, api, images, images_npy):
    text = ok(run("reconstruct", MODEL, images_npy, "--out", tmp_path / "r.npy", *T1)).output
    assert "wrote 32 reconstructions (32 x 784)" in text
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), api.reconstruct(images))


def test_sample_is_reproducible_with_a_seed(tmp_path, api):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        ok(run("sample", MODEL, "-n", 6, "--seed", seed, "--out", tmp_path / f"{name}.npy", *T1))
    a, b, c = (np.load(tmp_path / f"{name}.npy") for name in "abc")
    assert a.shape == (6, 784) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, api.sample(6, seed=3))
    assert not np.array_equal(a, c)
    ok(run("sample", MODEL, "--count", 2, "--out", tmp_path / "d.npy"))  # no seed: fresh randomness
    assert np.load(tmp_path / "d.npy").shape == (2, 784)


# -- score -------------------------------------------------------------------------------------------------


def test_score_json_and_out_equal_the_api(tmp_path, api, images, images_npy):
    result = ok(run("score", MODEL, images_npy, "--samples", 3, "--seed", 5, "--out", tmp_path / "s.npy",
                    "--json", *T1))
    info = json.loads(result.stdout)
    expect = api.score(images, samples=3, seed=5)
    assert {"n", "mean", "min", "max", "unit", "samples", "seed", "out"} <= set(info)
    assert info["n"] == 32 and info["unit"] == "nats" and info["samples"] == 3 and info["seed"] == 5
    assert info["mean"] == pytest.approx(expect.mean(), rel=1e-12)
    assert (info["min"], info["max"]) == (expect.min(), expect.max())
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expect)


def test_score_prints_a_summary(api, images):
    text = ok(run("score", MODEL, f"{IMAGES}:images", *T1)).output
    expect = api.score(images)  # defaults: one draw, seed 0
    assert "negative ELBO of 32 images, nats" in text
    for k in ("mean", "min", "max"):
        assert f"{k}:" in text
    assert f"{expect.mean():.4f}" in text and f"{expect.max():.4f}" in text


# -- pictures (the viz extra) ------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # width, height


def test_png_grids(tmp_path, images_npy):
    pytest.importorskip("matplotlib")
    ok(run("sample", MODEL, "-n", 4, "--seed", 0, "--out", tmp_path / "s.npy", "--png", tmp_path / "s.png"))
    ok(run("reconstruct", MODEL, images_npy, "--out", tmp_path / "r.npy", "--png", tmp_path / "r.png"))
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))
    ok(run("decode", MODEL, tmp_path / "z.npy", "--out", tmp_path / "d.npy", "--png", tmp_path / "d.png"))
    for name in ("s", "d"):
        _png_size(tmp_path / f"{name}.png")
    width, height = _png_size(tmp_path / "r.png")
    assert width > 4 * height  # 16 originals in a row above their 16 reconstructions: a wide picture


def test_png_image_as_input(tmp_path, api, images):
    pil = pytest.importorskip("PIL.Image")
    pytest.importorskip("matplotlib")
    pil.fromarray(images[7]).save(tmp_path / "seven.png")
    ok(run("encode", MODEL, tmp_path / "seven.png", "--out", tmp_path / "mu.npy", *T1))
    np.testing.assert_array_equal(np.load(tmp_path / "mu.npy"), api.encode(images[7:8])[0])


# -- bad input: one line, non-zero exit, no traceback ------------------------------------------------------


def test_missing_model_folder(tmp_path, images_npy):
    fails(run("info", tmp_path / "nowhere"), "no model package at", "nowhere")
    fails(run("encode", tmp_path / "nowhere", images_npy, "--out", tmp_path / "o.npz"), "no model package")


def test_tampered_model_file(tmp_path, images_npy):
    import shutil

    model = tmp_path / "tiny-model"
    shutil.copytree(MODEL, model)
    data = bytearray((model / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "encoder.onnx").write_bytes(bytes(data))
    fails(run("info", model), "encoder.onnx", "sha256")
    fails(run("score", model, images_npy), "sha256")


def test_wrong_image_shape(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((3, 27, 27), np.uint8))
    fails(run("encode", MODEL, tmp_path / "small.npy", "--out", tmp_path / "o.npz"),
          "expected images shaped (n, 784) or (n, 28, 28), got (3, 27, 27)")
    assert not (tmp_path / "o.npz").exists()


def test_nan_in_input(tmp_path, images):
    x = images.astype(np.float32) / 255
    x[2, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    fails(run("score", MODEL, tmp_path / "nan.npy"), "NaN or inf in 1 row(s), first at row 2")
    np.save(tmp_path / "z.npy", np.array([[0.0, np.nan]], np.float32))
    fails(run("decode", MODEL, tmp_path / "z.npy", "--out", tmp_path / "x.npy"), "latent codes contain NaN")


def test_unknown_device_and_bad_counts(tmp_path, images_npy):
    fails(run("info", MODEL, "--device", "tpu"), "'tpu' is not one of 'cpu', 'cuda', 'auto'", code=2)
    fails(run("info", MODEL, "--threads", 0), "--threads", code=2)
    fails(run("sample", MODEL, "-n", 0, "--out", tmp_path / "s.npy"), "'-n' / '--count'", "0 is not in the range",
          code=2)
    fails(run("sample", MODEL, "--out", tmp_path / "s.npy"), "Missing option '-n' / '--count'", code=2)
    fails(run("score", MODEL, images_npy, "--samples", 0), "--samples", code=2)
    assert not (tmp_path / "s.npy").exists()


def test_cuda_that_is_not_there_is_an_error(onnxruntime_offers, tmp_path):
    onnxruntime_offers(cuda=False)  # patched, so this runs on machines with and without CUDA
    fails(run("info", MODEL, "--device", "cuda"), "device='cuda'", "use device='cpu'")
    onnxruntime_offers(cuda=True, session="cpu")
    fails(run("encode", MODEL, f"{IMAGES}:images", "--device", "cuda", "--out", tmp_path / "never.npy"),
          "Error: device='cuda' requested but CUDAExecutionProvider is not active: onnxruntime made the session "
          "with ['CPUExecutionProvider'] instead")
    assert not (tmp_path / "never.npy").exists()


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_unsupported_output_suffix_is_refused_before_any_work(tmp_path, images_npy, command):
    fails(run(command, MODEL, images_npy, "--out", tmp_path / "o.txt"),
          "expected an output file ending in .npy or .npz, found '.txt'")
    fails(run(command, MODEL, images_npy, "--out", tmp_path / "o.npy", "--png", tmp_path / "g.jpg")
          if command == "reconstruct" else run(command, MODEL, images_npy, "--out", tmp_path / "o.csv"),
          "expected an output file ending in")
    fails(run(command, MODEL, images_npy, "--out", tmp_path / "no-such-folder" / "o.npy"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy"]


def test_npz_with_several_arrays_needs_a_key(tmp_path):
    fails(run("encode", MODEL, IMAGES, "--out", tmp_path / "o.npz"),
          "found 2 arrays: images, labels", f"{IMAGES}:KEY")
    fails(run("encode", MODEL, f"{IMAGES}:pixels", "--out", tmp_path / "o.npz"),
          "no array named 'pixels'", "images, labels")
    fails(run("score", MODEL, f"{IMAGES}:labels"), "expected images shaped")


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda p: None, ["no such file"]),
        (lambda p: p.write_bytes(b"not numpy at all"), ["expected a numpy .npy file of images, cannot read it"]),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), ["cannot read it", "pickle"]),
        (lambda p: np.save(p, np.zeros(3, dtype=[("a", "u1")])), ["structured dtype"]),
    ],
)
def test_unreadable_input_files(tmp_path, make, fragments):
    path = tmp_path / "in.npy"
    make(path)
    fails(run("encode", MODEL, path, "--out", tmp_path / "o.npz"), *fragments)


def test_wrong_input_suffix_and_latent_size(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n")
    fails(run("encode", MODEL, tmp_path / "x.csv", "--out", tmp_path / "o.npz"), "found suffix '.csv'")
    fails(run("decode", MODEL, tmp_path / "x.csv", "--out", tmp_path / "o.npy"), "found suffix '.csv'")
    np.save(tmp_path / "z.npy", np.zeros((4, 3), np.float32))
    fails(run("decode", MODEL, tmp_path / "z.npy", "--out", tmp_path / "o.npy"),
          "expected latent codes shaped (n, 2), got (4, 3)")


# -- outputs are written atomically ------------------------------------------------------------------------


def test_a_failed_write_leaves_the_existing_file_untouched(tmp_path, monkeypatch, images_npy):
    out = tmp_path / "codes.npz"
    out.write_bytes(b"the previous results")

    def broken_dump(f, arrays):
        f.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vio, "_dump", broken_dump)
    fails(run("encode", MODEL, images_npy, "--out", out), "No space left on device")
    assert out.read_bytes() == b"the previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz", "images.npy"]  # no temporary file left


def test_a_failed_command_leaves_the_existing_file_untouched(tmp_path):
    out = tmp_path / "samples.npy"
    np.save(out, np.arange(3))
    np.save(tmp_path / "z.npy", np.full((2, 2), np.inf, np.float32))
    fails(run("decode", MODEL, tmp_path / "z.npy", "--out", out), "NaN or inf")
    np.testing.assert_array_equal(np.load(out), np.arange(3))


def test_write_array_round_trips_and_keeps_permissions(tmp_path):
    out = tmp_path / "a.npy"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    vio.write_array(out, np.arange(4.0))
    np.testing.assert_array_equal(np.load(out), np.arange(4.0))
    assert out.stat().st_mode & 0o777 == 0o640
    vio.write_array(tmp_path / "b.npz", {"x": np.ones(2), "y": np.zeros(3)})
    with np.load(tmp_path / "b.npz") as z:
        assert sorted(z.files) == ["x", "y"]
    with pytest.raises(vae_infer.InputError, match="a .npy file holds one array, got 2"):
        vio.write_array(out, {"x": np.ones(2), "y": np.zeros(3)})
    with pytest.raises(vae_infer.InputError, match="expected numeric arrays, found object arrays"):
        vio.write_array(tmp_path / "c.npy", np.array([None, 1], dtype=object))
    with pytest.raises(vae_infer.InputError, match=r"ending in \.npy or \.npz, found '\.json'"):
        vio.write_array(tmp_path / "c.json", np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz"]


def test_decode_reads_the_npz_that_encode_writes(tiny_package, tiny_images, tmp_path):
    np.save(tmp_path / "x.npy", tiny_images[:5])
    ok(run("encode", tiny_package, tmp_path / "x.npy", "--out", tmp_path / "z.npz"))
    ok(run("decode", tiny_package, tmp_path / "z.npz", "--out", tmp_path / "d.npy"))
    with np.load(tmp_path / "z.npz") as z:
        want = vae_infer.load(tiny_package, threads=1).decode(z["mu"])
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), want, atol=1e-6)


def test_info_lists_the_optional_sections(tiny_package):
    shipped = ok(CliRunner().invoke(cli.main, ["info", "models/fashion-mnist", "--json"]))
    info = json.loads(shipped.output)
    assert set(info["variants"]) == {"int8", "fp16", "ort"}
    assert info["variants"]["int8"]["encoder_file"] == "encoder.int8.onnx"
    assert info["calibration"]["default_kind"] == "dose" and "dose" in info["calibration"]["kinds"]
    assert info["latent_index"]["file"] == "latent_index.npz"
    text = ok(CliRunner().invoke(cli.main, ["info", str(tiny_package), "--full"])).output
    assert "variants:     none (make them with: python -m train export" in text
    assert "calibration:  none (vae-infer calibrate" in text
    shipped_text = ok(CliRunner().invoke(cli.main, ["info", "models/fashion-mnist", "--full"])).output
    assert "variants:     int8 (variant='int8'), fp16 (variant='fp16'), ort (variant='ort')" in shipped_text
