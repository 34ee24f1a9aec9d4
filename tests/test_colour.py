"""Colour images end to end: a folder of 32x32 RGB patches cut from scikit-learn's bundled photos
(`load_sample_images`, real data inside the package, no download) trains an RGB model, and every command works on
it with the same folder; model.json's format_version 2 records the channels while version-1 packages (the shipped
model) keep loading as gray. Rows are (h, w, c) flattened channels-last everywhere."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vae_infer
from tests.conftest import fails, needs_module, ok
from vae_infer import cli
from vae_infer.anomaly.statistics import png_bits
from vae_infer.errors import InputError, ModelPackageError
from vae_infer.inputs import check_images
from vae_infer.package.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
SIDE, PATCHES_PER_PHOTO = 32, 150
HIDDEN = 256  # fp32 tables of 6.3 MB: more than the Cortex-M4 board's 4 MiB flash; int8 (1.6 MB) fits


def run(*args: object):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


# -- fast: the manifest and input rules --------------------------------------------------------------------------


def _manifest_dict() -> dict:
    return json.loads((SHIPPED / "model.json").read_text())


def test_a_version_1_package_still_loads_as_gray():
    d = _manifest_dict()
    assert d["format_version"] == 1 and "channels" not in d["input"]
    model = vae_infer.load(SHIPPED, threads=1)
    assert model.manifest.format_version == 1 and model.manifest.channels == 1
    assert model.image_shape == (28, 28) and model.manifest.features == 784
    assert model.manifest.to_dict()["format_version"] == 1 and "channels" not in model.manifest.to_dict()["input"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["input"].update(channels=3), r"input.channels needs format_version 2, found format_version 1"),
    (lambda d: d.update(format_version=2), r"the field input.channels is missing"),
    (lambda d: (d.update(format_version=2), d["input"].update(channels=2)),
     r"input.channels must be one of \(1, 3\) \(gray or RGB\), found 2"),
    (lambda d: (d.update(format_version=2), d["input"].update(channels=True)),
     r"input.channels must be a positive integer, found True"),
    (lambda d: (d.update(format_version=2), d["input"].update(channels=3)),
     r"the encoder should take \[\('batch', 2352\)\]"),  # 28x28x3 = 2352 values, but the graphs take 784
    (lambda d: d.update(format_version=3), r"format_version 3; this vae_infer reads version 1 or 2"),
])
def test_manifest_channels_are_checked_field_by_field(edit, message):
    d = copy.deepcopy(_manifest_dict())
    edit(d)
    with pytest.raises(ModelPackageError, match=message):
        Manifest.from_dict(d)


def test_version_2_round_trips_the_channels():
    d = copy.deepcopy(_manifest_dict())
    d["format_version"], d["input"]["channels"] = 2, 1
    m = Manifest.from_dict(d)
    assert m.to_dict()["input"]["channels"] == 1 and Manifest.from_dict(m.to_dict()) == m


def test_colour_rows_are_channels_last_and_errors_say_what_was_expected():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    rows = check_images(x, (4, 5, 3), 255.0)
    assert rows.shape == (2, 60) and (rows[0, :3] == x[0, 0, 0]).all()  # red, green, blue of pixel (0, 0) first
    assert (check_images(x.reshape(2, 60), (4, 5, 3), 255.0) == rows).all()
    with pytest.raises(InputError, match=r"expected images shaped \(n, 60\) or \(n, 4, 5, 3\), got \(2, 4, 5\) .*"
                                         r"RGB 4x5 images with 3 channels last"):
        check_images(x[..., 0], (4, 5, 3), 255.0)
    with pytest.raises(InputError, match=r"got \(2, 3, 4, 5\) .*channels go last: pass images.transpose\(0, 2, 3, 1\)"):
        check_images(x.transpose(0, 3, 1, 2), (4, 5, 3), 255.0)
    gray = check_images(x[..., :1], (4, 5), 255.0)  # (n, h, w, 1) is a gray image too
    assert gray.shape == (2, 20) and (gray == x[..., 0].reshape(2, 20)).all()


def test_png_code_length_of_a_colour_image_counts_all_three_channels():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.float32) / 255
    bits = png_bits(noise.reshape(1, -1), (16, 16, 3))[0]
    assert 8 * 16 * 16 * 3 <= bits <= 1.1 * 8 * 16 * 16 * 3  # noise does not compress: 8 bits a value, 3 a pixel
    flat = np.full((1, 16 * 16 * 3), 0.5, np.float32)
    assert png_bits(flat, (16, 16, 3))[0] < 300


# -- slow: train on a folder of colour patches, then every command ---------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """300 32x32 RGB patches of the two bundled photos, one class folder per photo, as PNG files."""
    pytest.importorskip("sklearn")
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("colour") / "patches"
    data = load_sample_images()
    rng = np.random.default_rng(0)
    for photo, file in zip(data.images, data.filenames, strict=True):
        cls = root / Path(file).stem
        cls.mkdir(parents=True)
        h, w, _ = photo.shape
        for i in range(PATCHES_PER_PHOTO):
            y, x = rng.integers(0, h - SIDE), rng.integers(0, w - SIDE)
            Image.fromarray(photo[y : y + SIDE, x : x + SIDE]).save(cls / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pixels(folder) -> np.ndarray:
    """The folder's images as uint8 (n, 32, 32, 3), in the folder's order (class folders, then file names)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(f)) for f in sorted(folder.glob("*/*.png"))])


@pytest.fixture(scope="module")
def model(folder, tmp_path_factory) -> Path:
    """`python -m train fit --dataset FOLDER`, one epoch, then `vae-infer index build` (the map and the graph)."""
    out = tmp_path_factory.mktemp("colour-model") / "patches-rgb"
    cmd = [sys.executable, "-m", "train", "fit", "--dataset", str(folder), "--epochs", "1", "--validation-size",
           "30", "--iw-samples", "4", "--hidden-size", str(HIDDEN), "--threads", "2", "--quiet", "--no-pictures",
           "--out", str(out), "--run-dir", str(out.parent / "run")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
    ok(run("index", "build", out, "--data", folder))
    return out


@pytest.mark.slow
def test_training_on_colour_files_makes_an_rgb_model(model, pixels):
    d = json.loads((model / "model.json").read_text())
    assert d["format_version"] == 2 and d["input"]["image_shape"] == [32, 32] and d["input"]["channels"] == 3
    assert d["input"]["features"] == 32 * 32 * 3 and d["graphs"]["encoder"]["inputs"][0]["shape"] == ["batch", 3072]
    m = vae_infer.load(model, threads=1)
    assert m.image_shape == (32, 32, 3) and m.channels == 3
    out = ok(run("info", model)).output
    assert "32 x 32 x 3 (RGB, channels last) (3072 features)" in out and "read as RGB" in out
    assert json.loads(ok(run("info", model, "--json")).output)["channels"] == 3


@pytest.mark.slow
def test_the_folder_reads_as_rgb_unless_to_gray(folder, pixels):
    from train.data import load_image_folder
    from vae_infer.data.preprocessing import Preprocessing

    rgb = load_image_folder(folder)
    assert rgb.image_shape == (32, 32, 3) and rgb.class_names == ("china", "flower")
    gray = load_image_folder(folder, Preprocessing(to_gray=True))
    assert gray.image_shape == (32, 32)
    both = np.concatenate([rgb.train_images, rgb.test_images]).astype(np.uint32)
    luma = (19595 * both[..., 0] + 38470 * both[..., 1] + 7471 * both[..., 2] + 32768) >> 16  # the recorded rule
    np.testing.assert_array_equal(np.concatenate([gray.train_images, gray.test_images]), luma)
    assert sorted(map(bytes, both.astype(np.uint8))) == sorted(map(bytes, pixels))  # every file, none twice


@pytest.mark.slow
def test_encode_decode_sample_pictures(model, folder, pixels, tmp_path):
    ok(run("encode", model, folder, "--out", tmp_path / "a.npz"))
    np.save(tmp_path / "x.npy", pixels)
    ok(run("encode", model, tmp_path / "x.npy", "--out", tmp_path / "b.npz"))
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["mu"].shape == (300, 2)
    np.testing.assert_array_equal(a["mu"], b["mu"])  # the PNG folder reads as the very same pixels
    m = vae_infer.load(model, threads=1)
    np.testing.assert_allclose(a["mu"], m.encode(pixels)[0], atol=1e-6)

    ok(run("decode", model, tmp_path / "a.npz", "--out", tmp_path / "d.npy", "--png", tmp_path / "d.png"))
    decoded = np.load(tmp_path / "d.npy")
    assert decoded.shape == (300, 3072)
    np.testing.assert_allclose(decoded, m.decode(a["mu"]), atol=1e-6)
    ok(run("sample", model, "-n", "16", "--seed", "0", "--out", tmp_path / "s.npy", "--png", tmp_path / "s.png"))
    assert np.load(tmp_path / "s.npy").shape == (16, 3072)
    from PIL import Image

    for png in ("d.png", "s.png"):
        with Image.open(tmp_path / png) as im:
            assert im.mode == "RGB", png
            rgb = np.asarray(im).astype(int)
        assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 10, png  # colour on the picture, not gray

    from vae_infer.viz import image_grid

    grid = image_grid(pixels[:4], (32, 32, 3), ncols=2, pad=1)
    assert grid.shape == (65, 65, 3)
    np.testing.assert_allclose(grid[:32, 33:65], pixels[1] / 255, atol=1e-6)


@pytest.mark.slow
def test_score_every_kind_calibrate_detect_denoise(model, folder, pixels, tmp_path):
    m = vae_infer.load(model, threads=1)
    for kind in ("nelbo", "recon", "mse", "iwae", "excess", "ic"):
        ok(run("score", model, folder, "--kind", kind, "--out", tmp_path / f"{kind}.npy"))
        scores = np.load(tmp_path / f"{kind}.npy")
        assert scores.shape == (300,) and np.isfinite(scores).all(), kind
    recon = np.load(tmp_path / "recon.npy")
    assert recon.mean() > 1000  # BCE summed over 3072 values, not 1024
    out = ok(run("calibrate", model, "--data", folder)).output
    assert "validation split (30 images" in out
    ok(run("score", model, folder, "--kind", "dose", "--out", tmp_path / "dose.npy"))
    assert np.isfinite(np.load(tmp_path / "dose.npy")).all()
    out = ok(run("detect", model, folder, "--json")).output
    detected = json.loads(out)
    assert len(detected["flags"]) == 300 and detected["kind"] == "dose"
    ok(run("denoise", model, folder, "--out", tmp_path / "dn.npy"))
    denoised = np.load(tmp_path / "dn.npy")
    assert denoised.shape == (300, 3072)
    np.testing.assert_allclose(denoised[:5], m.decode(m.encode(pixels[:5])[0]), atol=1e-5)


@pytest.mark.slow
def test_graph_interpolation_and_realism(model, folder, tmp_path):
    a, b = sorted(folder.glob("*/000.png"))
    ok(run("interpolate", model, a, b, "--method", "graph", "--compare", "--reference", folder,
           "--out", tmp_path / "p.npy", "--png", tmp_path / "p.png"))
    path = np.load(tmp_path / "p.npy")
    assert path.shape[1:] == (3072,) and len(path) >= 10
    from PIL import Image

    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "RGB"


@pytest.mark.slow
@needs_module("pyarrow", "parquet")
def test_batch_to_parquet_from_the_folder_and_from_parquet_rows(model, folder, pixels, tmp_path):
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    ok(run("batch", model, folder, "--out", tmp_path / "a", "--outputs", "mu,score"))
    flat = pixels.reshape(len(pixels), -1)  # rows of h*w*c values, channels-last
    pq.write_table(pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])}),
                   tmp_path / "x.parquet")
    ok(run("batch", model, f"{tmp_path / 'x.parquet'}:pixels", "--out", tmp_path / "b", "--outputs", "mu,score"))
    got = [ds.dataset(tmp_path / d).to_table().sort_by("row") for d in ("a", "b")]
    assert got[0].num_rows == got[1].num_rows == 300
    mu = [np.stack(t["mu"].to_numpy(zero_copy_only=False)) for t in got]
    np.testing.assert_array_equal(mu[0], mu[1])
    np.testing.assert_allclose(mu[0], vae_infer.load(model, threads=1).encode(pixels)[0], atol=1e-6)


@pytest.mark.slow
def test_export_c_checks_on_x86_64_and_the_board_refuses_fp32_but_takes_int8(model, folder, tmp_path):
    out = ok(run("export-c", model, "--out", tmp_path / "x86", "--check", "--check-data", folder)).output
    assert "PASSED" in out and "50 images of" in out
    err = fails(run("export-c", model, "--out", tmp_path / "m4", "--target", "cortex-m4"),
                "the model (32x32x3 images, 256 hidden units, latent 2) is too big for cortex-m4: its fp32 weight "
                "tables take", "but the flash holds 4,194,304 (--flash)", "--weights int8 would take about",
                "which fits")
    assert not (tmp_path / "m4").exists()
    assert "6,29" in err  # 3072*256*2 weights * 4 bytes, and then some
    board = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")  # then run it on the board too
    result = json.loads(ok(run("export-c", model, "--out", tmp_path / "m4", "--target", "cortex-m4",
                               "--weights", "int8", "--json", *(["--check", "--check-data", folder] if board else [])
                               )).output)
    assert result["weights"] == "int8" and result["weight_bytes"] < result["flash_bytes"] == 4 * 2**20
    if board:
        assert result["check"]["rows"] == 50 and result["check"]["memory"]["flash_bytes"] < 4 * 2**20


# -- slow: the page in Chromium draws colour -------------------------------------------------------------------


@pytest.mark.slow
@needs_module("playwright", "dev")
@needs_module("fastapi", "serve")
def test_the_page_shows_colour_thumbnails_and_a_colour_decoded_canvas(model, folder):
    from PIL import Image

    from tests.test_browser import CHROMIUM, TIMEOUT_MS, canvas_pixels, launched_chromium, open_page
    from tests.test_serve import start_server

    if not Path(CHROMIUM).exists():
        pytest.skip("needs chromium")
    proc, url = start_server(str(model), "--examples", str(folder))
    try:
        import httpx

        x = np.asarray(Image.open(sorted(folder.glob("*/*.png"))[0]))[None]  # (1, 32, 32, 3) as JSON, 4 deep
        got = [httpx.post(url + "/v1/encode", json={"images": a.tolist(), "dtype": "uint8"}, timeout=30)
               for a in (x, x.reshape(1, -1))]
        assert got[0].status_code == got[1].status_code == 200 and got[0].json() == got[1].json()
        mu = vae_infer.load(model, threads=1).encode(x)[0]
        np.testing.assert_allclose(got[0].json()["mu"], mu, atol=1e-6)
        with launched_chromium() as browser:
            page = open_page(browser, url)
            page.wait_for_selector("#examples canvas", timeout=TIMEOUT_MS)
            thumb = canvas_pixels(page, "#examples canvas").reshape(-1, 4).astype(int)
            assert (thumb[:, 0] != thumb[:, 1]).any()  # a colour thumbnail
            box = page.locator("#map").bounding_box()
            page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.5 * box["height"])
            page.wait_for_function("() => window.explorer.hovers > 0", timeout=TIMEOUT_MS)
            page.wait_for_timeout(100)
            hover = page.evaluate("window.explorer.lastHover")
            assert len(hover["row"]) == 3072
            shown = canvas_pixels(page, "#hover-image").reshape(-1, 4).astype(int)
            assert (np.abs(shown[:, 0] - shown[:, 1]) > 2).any()  # the decoded canvas is drawn in colour
            row = np.asarray(hover["row"]).reshape(32, 32, 3)
            # the canvas's top-left pixel is the decoded image's top-left pixel, red green blue in that order
            np.testing.assert_allclose(shown[0, :3], np.round(row[0, 0] * 255), atol=1)

            page.set_input_files("#upload", str(sorted(folder.glob("*/*.png"))[0]))  # a colour PNG, sent as RGB
            page.wait_for_selector("#upload-score", timeout=TIMEOUT_MS)
            np.testing.assert_allclose(page.evaluate("window.explorer.lastResult.z"), mu[0], atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(30)
