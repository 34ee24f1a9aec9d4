"""Check images: `vae-infer calibrate` stores a few of its images in the package (check_images.npy, listed with
its sha256, checked at load), `export-c --check` runs on them whatever the image size, new weights refuse to drop
them without --drop-extras, and --no-check-images stores none. The model: 8x8 images of scikit-learn's bundled
digits (1,797 real images), trained for one epoch (a few seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import vae_infer
from tests.test_serve import ROOT
from vae_infer.errors import ModelPackageError
from vae_infer.package.check_images import (
    CHECK_IMAGES_FILE,
    DEFAULT_CHECK_IMAGES,
    check_images_files,
    read_check_images,
)
from vae_infer.package.files import sha256_bytes, update_package

pytestmark = pytest.mark.slow


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """(the .npz of scikit-learn's digits as uint8 8x8 images with train/test splits, the trained run folder, a
    calibrated package of that run)."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8): the set's 0..16 levels as bytes
    y = d.target.astype(np.int64)
    data = root / "digits.npz"
    np.savez(data, x_train=x[:1500], y_train=y[:1500], x_test=x[1500:], y_test=y[1500:])
    out = root / "d8"
    _run("-m", "train", "fit", "--dataset", str(data), "--latent-size", "2", "--hidden-size", "32", "--epochs",
         "1", "--validation-size", "200", "--iw-samples", "2", "--threads", "1", "--no-pictures", "--quiet",
         "--run-dir", str(root / "run"), "--out", str(out))
    _run("-m", "vae_infer", "calibrate", str(out), "--data", str(data), "--threads", "1")
    return data, root / "run", out


@pytest.fixture
def package(digits, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(digits[2], copy)
    return copy


def test_calibrate_stores_check_images_listed_with_their_sha256(digits):
    data, _, out = digits
    man = json.loads((out / "model.json").read_text())
    section = man["check_images"]
    assert section["file"] == CHECK_IMAGES_FILE and section["count"] == DEFAULT_CHECK_IMAGES
    assert section["dtype"] == "uint8" and "validation split" in section["source"]
    stored = (out / CHECK_IMAGES_FILE).read_bytes()
    assert man["files"][CHECK_IMAGES_FILE]["sha256"] == sha256_bytes(stored) and section["bytes"] == len(stored)
    model = vae_infer.load(out, threads=1)
    rows = read_check_images(out)
    assert rows.shape == (DEFAULT_CHECK_IMAGES, 64) and rows.dtype == np.uint8
    with np.load(data) as z:
        train = z["x_train"].reshape(-1, 64)
    # every stored image is one of the training file's images (the validation split training held out)
    assert all((train == r).all(axis=1).any() for r in rows)
    assert len({r.tobytes() for r in rows}) > 40  # a sample, not one image repeated
    assert model.manifest.check_images == section


def test_load_refuses_tampered_nan_and_misshapen_check_images(package):
    path = package / CHECK_IMAGES_FILE
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ModelPackageError, match=r"check_images\.npy does not match model.json: sha256"):
        vae_infer.load(package, threads=1)
    path.write_bytes(good)

    nan = np.full((DEFAULT_CHECK_IMAGES, 64), 0.5, np.float32)
    nan[3, 7] = np.nan
    files, section = check_images_files(nan, "hand-made")
    update_package(package, files, check_images=section)  # listed with a correct sha256: only the content is bad
    with pytest.raises(ModelPackageError, match=r"finite and within \[0, 1\].*NaN or inf: 1"):
        vae_infer.load(package, threads=1)

    files, section = check_images_files(np.zeros((5, 63), np.uint8), "hand-made")
    update_package(package, files, check_images={**section, "count": 5})
    with pytest.raises(ModelPackageError, match=r"expected uint8 \(5, 64\) images, found uint8 \(5, 63\)"):
        vae_infer.load(package, threads=1)


def test_export_c_check_on_an_8x8_model_uses_the_images_the_package_carries(digits, tmp_path):
    _, _, out = digits
    r = _run("-m", "vae_infer", "export-c", str(out), "--out", str(tmp_path / "c"), "--check", "--json")
    report = json.loads(r.stdout)["check"]
    assert report is not None
    r = _run("-m", "vae_infer", "export-c", str(out), "--out", str(tmp_path / "c"), "--check")
    assert "on 50 images the package carries" in r.stdout and "PASSED" in r.stdout
    # --check-data, when given, is what the check runs on
    r = _run("-m", "vae_infer", "export-c", str(out), "--out", str(tmp_path / "c"), "--check", "--check-data",
             str(digits[0]))
    assert "the package carries" not in r.stdout and "images of" in r.stdout and "PASSED" in r.stdout


def test_new_weights_refuse_to_drop_check_images_without_drop_extras(digits, package):
    _, run, _ = digits
    r = _run("-m", "train", "export", str(run), "--out", str(package), ok=False)
    assert r.returncode != 0
    assert "holds calibration, check images, which exporting new weights there would drop" in r.stderr
    assert (package / CHECK_IMAGES_FILE).is_file()
    _run("-m", "train", "export", str(run), "--out", str(package), "--drop-extras")
    man = json.loads((package / "model.json").read_text())
    assert "check_images" not in man and not (package / CHECK_IMAGES_FILE).exists()


def test_no_check_images_stores_none_and_drops_earlier_ones(digits, package):
    data, _, _ = digits
    r = _run("-m", "vae_infer", "calibrate", str(package), "--data", str(data), "--threads", "1",
             "--no-check-images")
    assert "dropped the package's check images" in r.stdout
    man = json.loads((package / "model.json").read_text())
    assert "check_images" not in man and CHECK_IMAGES_FILE not in man["files"]
    assert not (package / CHECK_IMAGES_FILE).exists() and man["calibration"]
    model = vae_infer.load(package, threads=1)  # still a whole package
    assert model.manifest.check_images is None
    r = _run("-m", "vae_infer", "calibrate", str(package), "--data", str(data), "--threads", "1",
             "--no-check-images")
    assert "stored no check images" in r.stdout
    r = _run("-m", "vae_infer", "export-c", str(package), "--out", str(package.parent / "c"), "--check")
    assert "50 random images (pass --check-data for real ones)" in r.stdout  # never Fashion-MNIST for 8x8
