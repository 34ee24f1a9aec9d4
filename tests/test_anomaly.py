"""Anomaly scores, calibration, detect and denoise (vae_infer.anomaly), their CLI, and the noise of train/noise.py."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vae_infer
import vae_infer.cli.anomaly_commands  # noqa: F401  (registers calibrate, detect, denoise on main)
from vae_infer.anomaly import corruptions
from vae_infer.anomaly import scores as anomaly
from vae_infer.cli import main
from vae_infer.data.datasets import validation_split
from vae_infer.errors import InputError, ModelPackageError
from vae_infer.package.files import read_manifest, update_package

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    """A writable copy of the shipped model (a real model: the tiny one is too weak to denoise or detect)."""
    dest = tmp_path / "fashion-mnist"
    shutil.copytree(SHIPPED, dest)
    return dest


@pytest.fixture
def calibrated_tiny(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    anomaly.calibrate(model, tiny_images, iw_samples=8)
    return model


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


# -- each score against a direct computation --------------------------------------------------------------


def _direct_parts(model, x):
    """Encoder mean, decoded means and per-pixel cross-entropy, computed from the public API in float64."""
    mu, logvar = model.encode(x)
    x_hat = model.decode(mu).astype(np.float64)
    x = x.astype(np.float64)
    p = np.clip(x_hat, 1e-12, 1 - 1e-12)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    return mu, logvar, x_hat, bce


def test_recon_mse_excess_match_direct_formulas(tiny_model, tiny_images):
    x = tiny_model.as_images(tiny_images[:6])
    _, _, x_hat, bce = _direct_parts(tiny_model, x)
    np.testing.assert_allclose(tiny_model.score(x, kind="recon"), bce, rtol=1e-4)
    np.testing.assert_allclose(tiny_model.score(x, kind="mse"), ((x - x_hat) ** 2).sum(axis=1), rtol=1e-4)
    # excess = sum_i KL(Bern(x_i) || Bern(x_hat_i)), written out pixel by pixel
    xs, ps = x.astype(np.float64), np.clip(x_hat, 1e-12, 1 - 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(xs > 0, xs * np.log(xs / ps), 0.0) + np.where(xs < 1, (1 - xs) * np.log((1 - xs) / (1 - ps)), 0.0)
    np.testing.assert_allclose(tiny_model.score(x, kind="excess"), kl.sum(axis=1), rtol=1e-4, atol=1e-3)
    assert (tiny_model.score(x, kind="excess") >= -1e-6).all()


def test_nelbo_kind_is_the_models_own_score(tiny_model, tiny_images):
    a = anomaly.score(tiny_model, tiny_images, kind="nelbo", samples=3, seed=5)
    np.testing.assert_array_equal(a, tiny_model.score(tiny_images, samples=3, seed=5))


def test_iwae_matches_a_direct_importance_sampling_estimate(tiny_model, tiny_images):
    x = tiny_model.as_images(tiny_images[:5])
    k, seed = 4, 3
    got = tiny_model.score(x, kind="iwae", samples=k, seed=seed)
    mu, logvar = tiny_model.encode(x)
    rng = np.random.default_rng(seed)
    log_w = []
    for _ in range(k):  # the draws in the order anomaly._iwae makes them
        z = (mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=np.float32)).astype(np.float32)
        p = np.clip(tiny_model.decode(z).astype(np.float64), 1e-12, 1 - 1e-12)
        log_px_z = (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
        zz, m, lv = z.astype(np.float64), mu.astype(np.float64), logvar.astype(np.float64)
        log_pz = (-0.5 * zz**2 - 0.5 * math.log(2 * math.pi)).sum(axis=1)
        log_qz = (-0.5 * (zz - m) ** 2 / np.exp(lv) - 0.5 * lv - 0.5 * math.log(2 * math.pi)).sum(axis=1)
        log_w.append(log_px_z + log_pz - log_qz)
    log_w = np.array(log_w)
    direct = -(np.log(np.mean(np.exp(log_w - log_w.max(0)), axis=0)) + log_w.max(0))
    np.testing.assert_allclose(got, direct, rtol=1e-4)


def test_iwae_is_below_nelbo_on_average_and_tightens_with_k(tiny_model, tiny_images):
    nelbo = tiny_model.score(tiny_images, samples=64, seed=0).mean()
    iw = {k: tiny_model.score(tiny_images, kind="iwae", samples=k, seed=1).mean() for k in (1, 8, 64)}
    assert abs(iw[1] - nelbo) < 1.0  # k = 1: the ELBO itself, in expectation
    assert iw[64] < iw[8] < iw[1]
    assert iw[64] < nelbo - 1.0


def _paeth_png_bits(img: np.ndarray) -> float:
    """PNG image data of one 8-bit image with the Paeth filter, written out pixel by pixel (PNG spec 9.4)."""
    h, w = img.shape
    data = bytearray()
    for r in range(h):
        data.append(4)
        for c in range(w):
            a = int(img[r, c - 1]) if c else 0
            b = int(img[r - 1, c]) if r else 0
            cc = int(img[r - 1, c - 1]) if r and c else 0
            p = a + b - cc
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
            pred = a if pa <= pb and pa <= pc else b if pb <= pc else cc
            data.append((int(img[r, c]) - pred) % 256)
    return 8.0 * len(zlib.compress(bytes(data), 9))


def test_png_bits_and_ic_match_direct_computation(tiny_model, tiny_images):
    imgs = tiny_images[:3]
    bits = anomaly.png_bits(tiny_model.as_images(imgs), (28, 28))
    np.testing.assert_array_equal(bits, [_paeth_png_bits(i) for i in imgs])
    const, noise = np.full((1, 784), 0.5, np.float32), np.random.default_rng(0).random((1, 784), dtype=np.float32)
    assert anomaly.png_bits(const, (28, 28))[0] < 200 < 6000 < anomaly.png_bits(noise, (28, 28))[0]
    nelbo = tiny_model.score(imgs, samples=2, seed=4)
    np.testing.assert_allclose(tiny_model.score(imgs, kind="ic", samples=2, seed=4),
                               nelbo - math.log(2) * bits, rtol=1e-9)


def test_dose_is_minus_log_of_a_direct_kernel_density(calibrated_tiny, tiny_images):
    model = calibrated_tiny
    x = model.as_images(tiny_images[:4])
    got = model.score(x, kind="dose")
    cal = model.manifest.calibration["dose"]
    with np.load(model.path / anomaly.CALIBRATION_FILE) as z:
        ref = z["dose_statistics"]
    # the statistics, from the other scores
    mu, logvar = model.encode(x)
    kl = 0.5 * np.sum(mu.astype(np.float64) ** 2 + np.exp(logvar) - 1 - logvar, axis=1)
    recon = model.score(x, kind="recon")
    t = np.stack([np.log1p(recon + kl), np.log1p(anomaly.png_bits(x, (28, 28))),
                  np.log1p(model.score(x, kind="excess"))], axis=1)
    mean, std, h = np.array(cal["mean"]), np.array(cal["std"]), cal["bandwidth"]
    assert h == pytest.approx(len(ref) ** (-1 / 7))
    u, r = (t - mean) / std, (ref - mean) / std
    for i in range(len(x)):
        dens = np.mean([np.prod(np.exp(-((u[i] - rj) ** 2) / (2 * h * h)) / math.sqrt(2 * math.pi * h * h))
                        for rj in r])
        assert got[i] == pytest.approx(-math.log(dens), rel=1e-6)


def test_scores_stream_in_chunks_with_the_same_result(tiny_package, tiny_images):
    whole = vae_infer.load(tiny_package, threads=1)
    small = vae_infer.load(tiny_package, threads=1, chunk_size=5)
    for kind in ("recon", "mse", "excess", "ic", "iwae"):  # one draw per image: the same draws whatever the chunks
        np.testing.assert_allclose(small.score(tiny_images, kind=kind, samples=1),
                                   whole.score(tiny_images, kind=kind, samples=1), rtol=1e-6, err_msg=kind)
    np.testing.assert_allclose(small.denoise(tiny_images, steps=2), whole.denoise(tiny_images, steps=2), atol=1e-6)


def test_iwae_uses_the_same_k_in_python_the_cli_and_calibration(tiny_model, tiny_images):
    """score(kind="iwae") without samples draws k = 64, as the CLI and calibrate do, not one draw."""
    x = tiny_images[:8]
    default = tiny_model.score(x, kind="iwae", seed=1)
    np.testing.assert_array_equal(default, tiny_model.score(x, kind="iwae", samples=anomaly.DEFAULT_IW_SAMPLES, seed=1))
    assert not np.allclose(default, tiny_model.score(x, kind="iwae", samples=1, seed=1))
    # nelbo keeps one draw by default: the figure training reports
    np.testing.assert_array_equal(tiny_model.score(x, seed=1), tiny_model.score(x, samples=1, seed=1))


# -- calibration ------------------------------------------------------------------------------------------------


def test_thresholds_round_trip_through_the_manifest(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    section = anomaly.calibrate(model, tiny_images, quantile=0.9, iw_samples=8, source="tiny images")
    on_disk = json.loads((tiny_copy / "model.json").read_text())["calibration"]
    assert on_disk == section == model.manifest.calibration
    assert set(section["thresholds"]) == set(anomaly.SCORE_KINDS)
    assert section["examples"] == len(tiny_images) and section["quantile"] == 0.9
    assert section["samples"] == {"nelbo": 1, "iwae": 8, "ic": 1}
    reloaded = vae_infer.load(tiny_copy, threads=1)
    assert reloaded.manifest.calibration == section
    assert anomaly.CALIBRATION_FILE in read_manifest(tiny_copy).files
    with np.load(tiny_copy / anomaly.CALIBRATION_FILE) as z:
        for kind, t in section["thresholds"].items():
            assert t == pytest.approx(np.quantile(z[f"scores_{kind}"], 0.9))
        assert anomaly.threshold(reloaded, "recon", 0.5)[1] == pytest.approx(np.median(z["scores_recon"]))
    # the deterministic kinds' stored scores are what score() gives for the same images
    with np.load(tiny_copy / anomaly.CALIBRATION_FILE) as z:
        np.testing.assert_allclose(z["scores_recon"], reloaded.score(tiny_images, kind="recon"), rtol=1e-9)
    assert anomaly.threshold(reloaded) == ("dose", section["thresholds"]["dose"])


def test_calibration_scores_of_dose_are_leave_one_out(calibrated_tiny, tiny_images):
    with np.load(calibrated_tiny.path / anomaly.CALIBRATION_FILE) as z:
        loo = z["scores_dose"]
    with_self = calibrated_tiny.score(tiny_images, kind="dose")
    assert (with_self < loo).all()  # each image's own kernel raises its density


def test_calibrating_again_replaces_the_section(calibrated_tiny, tiny_images):
    anomaly.calibrate(calibrated_tiny, tiny_images, quantile=0.5, kinds=("recon", "dose"))
    cal = vae_infer.load(calibrated_tiny.path, threads=1).manifest.calibration
    assert set(cal["thresholds"]) == {"recon", "dose"} and cal["quantile"] == 0.5


# -- detect and denoise on a real model ------------------------------------------------------------------------


def test_detect_flags_planted_anomalies(shipped_copy, tiny_images):
    model = vae_infer.load(shipped_copy, threads=1)
    x = model.as_images(tiny_images)
    anomaly.calibrate(model, x[:24], iw_samples=8)
    rng = np.random.default_rng(0)
    normal = x[24:]
    planted = np.concatenate([corruptions.invert(normal[:3]), corruptions.uniform_images(3, 784, rng),
                              corruptions.constant_images(3, 784, rng),
                              corruptions.gaussian_noise(normal[3:6], 0.5, rng)])
    batch = np.concatenate([normal, planted])
    flags, scores = model.detect(batch)  # the default: dose, at the calibrated 0.99 quantile
    assert flags.dtype == bool and flags.shape == scores.shape == (len(batch),)
    assert flags[len(normal):].all()
    assert not flags[: len(normal)].any()
    flags_nelbo, _ = model.detect(batch, kind="nelbo")
    assert flags_nelbo[len(normal):].all()
    # an explicit threshold overrides the calibrated one
    assert model.detect(batch, kind="recon", threshold=-1.0)[0].all()


def test_denoising_raises_psnr_on_noisy_test_images(tiny_images):
    model = vae_infer.load(SHIPPED, threads=1)
    clean = model.as_images(tiny_images)
    rng = np.random.default_rng(0)
    for spec in ("salt-pepper:0.2", "gaussian:0.5"):
        noisy = corruptions.apply_noise(clean, spec, rng)
        before = corruptions.psnr(clean, noisy).mean()
        for steps in (1, 2):
            after = corruptions.psnr(clean, model.denoise(noisy, steps=steps)).mean()
            assert after > before + 0.5, (spec, steps, before, after)
    one = model.denoise(clean)
    np.testing.assert_array_equal(one, model.reconstruct(clean))
    assert one.dtype == np.float32 and one.min() >= 0 and one.max() <= 1


# -- bad input --------------------------------------------------------------------------------------------------


def test_unknown_score_kind(tiny_model, tiny_images):
    with pytest.raises(InputError, match=r"unknown score kind 'likelihood': expected one of nelbo, recon, mse"):
        tiny_model.score(tiny_images, kind="likelihood")
    with pytest.raises(InputError, match="unknown score kind"):
        anomaly.calibrate(tiny_model, tiny_images, kinds=("recon", "bogus"), write=False)


def test_wrong_shapes_and_nan(tiny_model, tiny_images):
    with pytest.raises(InputError, match=r"expected images shaped \(n, 784\) or \(n, 28, 28\), got \(2, 28, 28, 3\)"):
        tiny_model.score(np.zeros((2, 28, 28, 3), np.float32), kind="excess")
    with pytest.raises(InputError, match="for a single image pass images"):
        tiny_model.denoise(np.zeros(784, np.float32))
    bad = tiny_model.as_images(tiny_images[:3]).copy()
    bad[1, 5] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf in 1 row\(s\), first at row 1"):
        tiny_model.score(bad, kind="dose")
    with pytest.raises(InputError, match="NaN"):
        tiny_model.denoise(bad)
    with pytest.raises(InputError, match="steps must be a positive integer, got 0"):
        tiny_model.denoise(tiny_images, steps=0)
    with pytest.raises(InputError, match="samples must be a positive integer"):
        tiny_model.score(tiny_images, kind="iwae", samples=0)


def test_uncalibrated_model_asked_to_detect(tiny_model, tiny_images):
    with pytest.raises(ModelPackageError, match=r"not calibrated, so detect has no threshold: run `vae-infer"):
        tiny_model.detect(tiny_images)
    with pytest.raises(ModelPackageError, match="the dose score needs a calibrated model"):
        tiny_model.score(tiny_images, kind="dose")
    with pytest.raises(ModelPackageError, match="dose score needs a calibrated model"):
        tiny_model.detect(tiny_images, threshold=1.0)  # dose needs its reference even with a threshold
    flags, scores = tiny_model.detect(tiny_images, kind="recon", threshold=float("1e9"))
    assert not flags.any() and len(scores) == len(tiny_images)


def test_bad_calibration_and_detect_options(calibrated_tiny, tiny_images):
    model = calibrated_tiny
    with pytest.raises(InputError, match=r"strictly between 0 and 1 \(such as 0.99\), got 1.5"):
        model.detect(tiny_images, quantile=1.5)
    with pytest.raises(InputError, match="calibration needs at least 10 images"):
        anomaly.calibrate(model, tiny_images[:3])
    with pytest.raises(InputError, match="pass either a threshold or a quantile"):
        model.detect(tiny_images, threshold=1.0, quantile=0.9)
    with pytest.raises(InputError, match="threshold must be a finite number"):
        model.detect(tiny_images, kind="recon", threshold=float("nan"))
    with pytest.raises(InputError, match="default_kind 'dose' is not among the calibrated kinds recon"):
        anomaly.calibrate(model, tiny_images, kinds=("recon",))
    anomaly.calibrate(model, tiny_images, kinds=("recon",), default_kind="recon")
    with pytest.raises(ModelPackageError, match="was calibrated for recon, not 'mse'"):
        model.detect(tiny_images, kind="mse")


def test_tampered_calibration_file_is_refused(calibrated_tiny, tiny_images):
    path = calibrated_tiny.path / anomaly.CALIBRATION_FILE
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(ModelPackageError, match="calibration.npz does not match model.json"):
        vae_infer.load(calibrated_tiny.path, threads=1)  # load verifies every file the manifest lists
    path.write_bytes(good)
    model = vae_infer.load(calibrated_tiny.path, threads=1)
    path.write_bytes(good[:-10])  # changed after loading: caught when it is read for use
    with pytest.raises(ModelPackageError, match="calibration.npz does not match model.json"):
        model.detect(tiny_images)
    with pytest.raises(ModelPackageError, match="does not match model.json"):
        model.score(tiny_images, kind="dose")
    assert len(model.detect(tiny_images, kind="recon")[0]) == len(tiny_images)  # no stored scores needed


# -- corruptions and training noise ------------------------------------------------------------------------------


def test_noise_specs():
    items = corruptions.parse_noise("gaussian:0.1-0.3,salt-pepper:0.2")
    assert [str(i) for i in items] == ["gaussian:0.1-0.3", "salt-pepper:0.2"]
    for bad, message in (("speckle:0.1", "KIND one of gaussian, salt-pepper"), ("gaussian", "expected KIND:LEVEL"),
                         ("gaussian:abc", "expected a number or a range"), ("gaussian:0.3-0.1", "0 <= LO <= HI <= 1"),
                         ("salt-pepper:2", "0 <= LO <= HI <= 1"), ("", "expected a noise spec")):
        with pytest.raises(InputError, match=message):
            corruptions.parse_noise(bad)


def test_corruptions_are_seeded_and_in_range(tiny_images):
    x = tiny_images.reshape(len(tiny_images), -1).astype(np.float32) / 255
    a = corruptions.apply_noise(x, "gaussian:0-0.3,salt-pepper:0.1", np.random.default_rng(1))
    b = corruptions.apply_noise(x, "gaussian:0-0.3,salt-pepper:0.1", np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 and not np.array_equal(a, x)
    sp = corruptions.salt_pepper(np.full((200, 784), 0.5, np.float32), 0.1, np.random.default_rng(0))
    assert abs(np.mean(sp != 0.5) - 0.1) < 0.01 and set(np.unique(sp)) == {0.0, 0.5, 1.0}
    occ = corruptions.occlude(x, (28, 28), np.random.default_rng(0), fill=0.25)
    assert (np.sum(occ.reshape(-1, 28, 28) == 0.25, axis=(1, 2)) >= 14 * 14 - 1).all()
    assert corruptions.psnr(x[:1], x[:1])[0] == np.inf
    assert corruptions.psnr(np.zeros((1, 4)), np.full((1, 4), 0.1))[0] == pytest.approx(20.0)


def test_training_noise_corrupts_the_input_only():
    torch = pytest.importorskip("torch")
    from train.noise import add_noise

    x = torch.rand(64, 784)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = add_noise(x, "gaussian:0.2,salt-pepper:0.3", g1), add_noise(x, "gaussian:0.2,salt-pepper:0.3", g2)
    assert torch.equal(a, b) and not torch.equal(a, x) and a.min() >= 0 and a.max() <= 1
    sp = add_noise(torch.full((100, 784), 0.5), "salt-pepper:0.2", torch.Generator().manual_seed(0))
    assert abs(float((sp != 0.5).float().mean()) - 0.2) < 0.01


# -- command line -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_calibrate_detect_denoise(tiny_copy, tiny_images, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, tiny_images)
    r = _run("calibrate", tiny_copy, "--data", images, "--quantile", "0.95", "--iw-samples", "4", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert f"calibrated {tiny_copy} on {images} (32 images)" in r.output and "dose" in r.output
    r = _run("calibrate", tiny_copy, "--data", images, "--kind", "recon", "--kind", "dose", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out["thresholds"]) == {"recon", "dose"} and out["default_kind"] == "dose"

    planted = np.concatenate([tiny_images[:4], 255 - tiny_images[:2]])
    np.save(tmp_path / "planted.npy", planted)
    r = _run("detect", tiny_copy, tmp_path / "planted.npy", "--kind", "recon", "--json", "--out", tmp_path / "d.npz")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["n"] == 6 and d["kind"] == "recon" and len(d["flags"]) == len(d["scores"]) == 6
    assert d["flags"][4:] == [True, True]
    with np.load(tmp_path / "d.npz") as z:
        assert z["flags"].tolist() == d["flags"] and np.allclose(z["scores"], d["scores"])
    r = _run("detect", tiny_copy, tmp_path / "planted.npy", "--kind", "recon", "--quantile", "0.5")
    assert r.exit_code == 0, r.output
    assert "recon score above" in r.output and "the 0.5 quantile of the calibration scores" in r.output

    noisy = corruptions.apply_noise(tiny_images.reshape(32, -1) / 255.0, "salt-pepper:0.2", np.random.default_rng(0))
    np.save(tmp_path / "noisy.npy", noisy.astype(np.float32))
    r = _run("denoise", tiny_copy, tmp_path / "noisy.npy", "--out", tmp_path / "clean.npy", "--steps", "2",
             "--png", tmp_path / "before-after.png")
    assert r.exit_code == 0, r.output
    assert "wrote 32 denoised images (32 x 784, 2 step(s))" in r.output
    model = vae_infer.load(tiny_copy, threads=1)
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), model.denoise(noisy.astype(np.float32), steps=2),
                               atol=1e-6)
    assert (tmp_path / "before-after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tiny_copy, tiny_images, tmp_path):
    np.save(tmp_path / "images.npy", tiny_images)
    r = _run("detect", tiny_copy, tmp_path / "images.npy")
    assert r.exit_code == 1 and "Error:" in r.output and "is not calibrated" in r.output
    r = _run("detect", tiny_copy, tmp_path / "images.npy", "--kind", "likelihood")
    assert r.exit_code == 2 and "'likelihood' is not one of" in r.output
    r = _run("detect", tiny_copy, tmp_path / "images.npy", "--threshold", "1", "--quantile", "0.5")
    assert r.exit_code == 2 and "either --threshold or --quantile" in r.output
    np.save(tmp_path / "bad.npy", np.zeros((3, 28, 28, 3), np.uint8))
    r = _run("denoise", tiny_copy, tmp_path / "bad.npy", "--out", tmp_path / "o.npy")
    assert r.exit_code == 1 and "expected images shaped (n, 784) or (n, 28, 28), got (3, 28, 28, 3)" in r.output
    r = _run("calibrate", tiny_copy, "--data", tmp_path / "images.npy", "--split", "test")
    assert r.exit_code == 1 and "--split applies to IDX datasets" in r.output
    r = _run("calibrate", tiny_copy, "--data", "no-such-dataset", "--data-dir", tmp_path)
    assert r.exit_code == 1 and "no-such-dataset: no such file or folder; expected a data set name" in r.output
    r = _run("calibrate", tiny_copy, "--data", tmp_path / "images.npy", "--quantile", "1")
    assert r.exit_code == 2


def _write_idx(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    header = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in (n, h, w))
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


def test_cli_calibrate_on_the_validation_split_of_idx_files(tiny_copy, tiny_images, tmp_path):
    # the training record a real run leaves in model.json: 60 images, 20 of them held out with seed 3
    update_package(tiny_copy, {}, training={"config": {"validation_size": 20, "seed": 3, "train_limit": 0},
                                            "train_examples": 40, "validation_examples": 20})
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = np.concatenate([tiny_images, tiny_images[:28]])[rng.permutation(60)]
    _write_idx(folder / "train-images-idx3-ubyte.gz", train)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", tiny_images[:12])
    r = _run("calibrate", tiny_copy, "--data", folder, "--kind", "recon", "--default-kind", "recon", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["examples"] == 20 and "validation split (20 images held out of training" in out["source"]
    val = train[validation_split(60, 20, seed=3)[1]]  # the one split, as training drew it
    model = vae_infer.load(tiny_copy, threads=1)
    assert out["thresholds"]["recon"] == pytest.approx(np.quantile(model.score(val, kind="recon"), 0.99))
    # the same files found by name under --data-dir; the test split
    (tmp_path / "named").mkdir()
    shutil.copytree(folder, tmp_path / "named" / "fashion-mnist")
    r = _run("calibrate", tiny_copy, "--data", "fashion-mnist", "--data-dir", tmp_path / "named", "--split", "test",
             "--kind", "recon", "--default-kind", "recon", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["examples"] == 12
    # data that is not the model's: a different number of training images
    _write_idx(folder / "train-images-idx3-ubyte.gz", train[:50])
    r = _run("calibrate", tiny_copy, "--data", folder)
    assert r.exit_code == 1 and "the data holds 50 training images but the model was trained on 60" in r.output
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    r = _run("calibrate", tiny_copy, "--data", folder)
    assert r.exit_code == 1 and "IDX header is truncated" in r.output


def test_cli_score_kind(tiny_copy, tiny_images, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, tiny_images)
    model = vae_infer.load(tiny_copy, threads=1)
    r = _run("score", tiny_copy, images, "--kind", "iwae", "--samples", "8", "--threads", "1", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["kind"], out["unit"], out["samples"], out["n"]) == ("iwae", "nats", 8, 32)
    assert out["mean"] == pytest.approx(model.score(tiny_images, kind="iwae", samples=8, seed=0).mean())
    r = _run("score", tiny_copy, images, "--kind", "recon", "--out", tmp_path / "s.npz")
    assert r.exit_code == 0 and "recon score of 32 images, nats" in r.output
    with np.load(tmp_path / "s.npz") as z:
        np.testing.assert_allclose(z["recon"], model.score(tiny_images, kind="recon"))
    r = _run("score", tiny_copy, images, "--kind", "dose")
    assert r.exit_code == 1 and "the dose score needs a calibrated model" in r.output and "Traceback" not in r.output
