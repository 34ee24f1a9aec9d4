"""Anomaly detection and denoising benchmark: AUROC / AUPRC of every score kind, PSNR of denoising.

    python benchmarks/anomaly.py --model models/fashion-mnist --sklearn /tmp/skl \
        --json benchmarks/anomaly.json --markdown benchmarks/anomaly.md --pictures docs/images

What it measures (Fashion-MNIST from train.data.load_dataset; nothing is downloaded):
  1. Out-of-distribution sets against the shipped model, calibrated on its validation split (the 5,000
     training images held out of training): in-distribution = the 10,000 test images; out = corrupted test
     images (Gaussian noise, occlusion, inverted, constant and uniform-random images) and other images found
     on this machine: handwritten digits (scikit-learn's 8x8 digits, upscaled and centred like MNIST; the
     real MNIST is not installed here), digits and letters printed in the fonts matplotlib ships, and crops
     of the photographs and the MRI slice shipped by matplotlib and scikit-learn.
  2. Held-out classes: for each class, a model trained (short run) without it, calibrated on its own
     validation split; in = test images of the other nine classes, out = test images of that class.
  3. Denoising: PSNR of noisy test images and of their denoised versions, Gaussian noise (sigma 0.1, 0.2,
     0.3) and salt-and-pepper noise, for the shipped model and for a plain and a denoising VAE trained
     with the same short recipe (`python -m train fit --noise ...`).

--sklearn takes a scikit-learn wheel or a folder holding digits.csv.gz, china.jpg and flower.jpg (the files
scikit-learn ships); without it, an installed scikit-learn is used, else those sets are skipped. To get the
wheel: pip download --no-deps --only-binary=:all: scikit-learn -d /tmp/skl

Trained packages are kept under --runs (default runs/anomaly) and reused when present.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import common  # the repository on sys.path, the environment record, report writing
import numpy as np
from common import ROOT

import vae_infer
from vae_infer.anomaly import corruptions
from vae_infer.anomaly import scores as anomaly
from vae_infer.data.datasets import CLASS_NAMES as DATASET_CLASSES
from vae_infer.data.datasets import validation_split

CORRUPTED_N = 2000  # test images each corruption is applied to
FONT_N = 2000
CROP_N = 2000
PSNR_N = 2000
NOISES = (("gaussian", 0.1), ("gaussian", 0.2), ("gaussian", 0.3), ("salt-pepper", 0.1), ("salt-pepper", 0.2))
TRAIN_NOISE = "gaussian:0-0.35,salt-pepper:0-0.25"  # the denoising VAE's training noise
DENOISE_STEPS = (1, 3)
SEMANTIC_SHIFTS = ("upside down", "rotated 90 degrees")  # the test images' own pixels, moved: harder, reported apart
CLASS_NAMES = DATASET_CLASSES["fashion-mnist"]


# -- metrics -------------------------------------------------------------------------------------------------


def auroc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """P(score of a random outlier > score of a random inlier), ties counted half (Mann-Whitney U)."""
    s = np.concatenate([inlier, outlier])
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    n_in, n_out = len(inlier), len(outlier)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0) / (n_in * n_out))


def auprc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """Average precision with the outliers as the positive class (sklearn's average_precision_score)."""
    s = np.concatenate([inlier, outlier])
    y = np.concatenate([np.zeros(len(inlier)), np.ones(len(outlier))])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# -- data ----------------------------------------------------------------------------------------------------


def _center_glyph(img: np.ndarray) -> np.ndarray | None:
    """A bright-on-dark glyph -> 28x28 the way MNIST was made: fitted into a 20x20 box (aspect kept),
    placed so its centre of mass is at the centre."""
    from PIL import Image

    ys, xs = np.nonzero(img > 0.05)
    if len(ys) == 0:
        return None
    img = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = img.shape
    s = 20.0 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    a = np.asarray(Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255)).resize((nw, nh), Image.LANCZOS),
                   np.float32) / 255.0
    total = a.sum()
    cy = (a.sum(1) * np.arange(nh)).sum() / total
    cx = (a.sum(0) * np.arange(nw)).sum() / total
    top = min(max(int(round(14 - cy)), 0), 28 - nh)
    left = min(max(int(round(14 - cx)), 0), 28 - nw)
    out = np.zeros((28, 28), np.float32)
    out[top : top + nh, left : left + nw] = a
    return out


def _sklearn_file(source: Path | None, name: str) -> bytes | None:
    """A data file scikit-learn ships (digits.csv.gz, china.jpg, flower.jpg) from a wheel, a folder or the
    installed package; None when none has it."""
    member = {"digits.csv.gz": "sklearn/datasets/data/digits.csv.gz"}.get(name, f"sklearn/datasets/images/{name}")
    candidates = []
    if source is not None:
        if source.is_dir():
            candidates += [source / name] + sorted(source.glob("scikit_learn-*.whl"))
        else:
            candidates.append(source)
    try:
        import sklearn

        candidates.append(Path(sklearn.__file__).parent.parent / member)
    except ImportError:
        pass
    for c in candidates:
        if c.suffix == ".whl" and c.is_file():
            with zipfile.ZipFile(c) as z:
                if member in z.namelist():
                    return z.read(member)
        elif c.is_file() and c.name == name:
            return c.read_bytes()
    return None


def handwritten_digits(source: Path | None) -> np.ndarray | None:
    """scikit-learn's 1,797 handwritten digits (8x8, 0..16), upscaled and centred like MNIST -> uint8 28x28."""
    from PIL import Image

    raw = _sklearn_file(source, "digits.csv.gz")
    if raw is None:
        return None
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")
    out = []
    for row in table[:, :64].reshape(-1, 8, 8) / 16.0:
        big = np.asarray(Image.fromarray(np.uint8(row * 255)).resize((32, 32), Image.BILINEAR), np.float32) / 255
        out.append(_center_glyph(big))
    return np.rint(np.stack(out) * 255).astype(np.uint8)


def _font_files() -> list[str]:
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = sorted(p.name for p in ttf.glob("DejaVu*.ttf")) + [
        "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
        "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
    ]
    return [str(ttf / n) for n in names if (ttf / n).is_file()]


def printed_glyphs(chars: str, n: int, seed: int) -> np.ndarray:
    """n characters printed in matplotlib's fonts (random font, stroke width 0-3, rotation within 15 degrees),
    white on black, centred like MNIST -> uint8 28x28."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _font_files()
    out = []
    while len(out) < n:
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], 64)
        im = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(im).text((16, 8), chars[rng.integers(len(chars))], fill=255, font=font,
                                stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        glyph = _center_glyph(np.asarray(im, np.float32) / 255.0)
        if glyph is not None:
            out.append(glyph)
    return np.rint(np.stack(out) * 255).astype(np.uint8)


def photo_crops(source: Path | None, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Random square crops (28 px to half the picture's side), resized to 28x28 gray: matplotlib's
    grace_hopper.jpg and MRI slice s1045.ima, and scikit-learn's china.jpg and flower.jpg when available."""
    import matplotlib
    from PIL import Image

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    pictures, names = [], []
    for name in ("china.jpg", "flower.jpg"):
        raw = _sklearn_file(source, name)
        if raw is not None:
            pictures.append(np.asarray(Image.open(io.BytesIO(raw)).convert("L"), np.float32) / 255.0)
            names.append(f"scikit-learn {name}")
    pictures.append(np.asarray(Image.open(sample / "grace_hopper.jpg").convert("L"), np.float32) / 255.0)
    names.append("matplotlib grace_hopper.jpg")
    mri = np.frombuffer(gzip.decompress((sample / "s1045.ima.gz").read_bytes()), np.uint16).reshape(256, 256)
    pictures.append(mri.astype(np.float32) / mri.max())
    names.append("matplotlib s1045.ima (MRI)")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pic = pictures[i % len(pictures)]
        side = int(rng.integers(28, min(pic.shape) // 2))
        top, left = rng.integers(0, pic.shape[0] - side), rng.integers(0, pic.shape[1] - side)
        crop = Image.fromarray(np.uint8(pic[top : top + side, left : left + side] * 255)).resize((28, 28),
                                                                                              Image.BILINEAR)
        out.append(np.asarray(crop))
    return np.stack(out).astype(np.uint8), names


def ood_sets(test: np.ndarray, image_shape, sklearn_source: Path | None, seed: int = 0) -> tuple[dict, dict]:
    """name -> float32 (n, 784) images, and name -> a line saying what it is."""
    rng = np.random.default_rng(seed)
    base = test[:CORRUPTED_N]
    f = base.shape[1]
    sets = {
        "gaussian noise 0.1": corruptions.gaussian_noise(base, 0.1, rng),
        "gaussian noise 0.2": corruptions.gaussian_noise(base, 0.2, rng),
        "occlusion": corruptions.occlude(base, image_shape, rng),
        "inverted": corruptions.invert(base),
        "constant": corruptions.constant_images(CORRUPTED_N, f, rng),
        "uniform random": corruptions.uniform_images(CORRUPTED_N, f, rng),
        "upside down": base.reshape(-1, *image_shape)[:, ::-1].reshape(CORRUPTED_N, f),
        "rotated 90 degrees": np.rot90(base.reshape(-1, *image_shape), 1, axes=(1, 2)).reshape(CORRUPTED_N, f),
    }
    about = {
        "gaussian noise 0.1": f"{CORRUPTED_N} test images + N(0, 0.1^2) per pixel, clipped to [0, 1]",
        "gaussian noise 0.2": f"{CORRUPTED_N} test images + N(0, 0.2^2) per pixel, clipped to [0, 1]",
        "occlusion": f"{CORRUPTED_N} test images, a 14x14 square (a quarter of the image) of one random gray "
                     "level at a random place in the central 20x20",
        "inverted": f"{CORRUPTED_N} test images, 1 - x",
        "constant": f"{CORRUPTED_N} images of one gray level each, uniform in [0, 1]",
        "uniform random": f"{CORRUPTED_N} images of independent uniform [0, 1] pixels",
        "upside down": f"{CORRUPTED_N} test images flipped top to bottom (a semantic shift: same pixels, "
                       "an orientation the training set never shows)",
        "rotated 90 degrees": f"{CORRUPTED_N} test images rotated by 90 degrees counter-clockwise (a semantic shift)",
    }
    digits = handwritten_digits(sklearn_source)
    if digits is not None:
        sets["handwritten digits"] = digits.reshape(len(digits), -1).astype(np.float32) / 255
        about["handwritten digits"] = (f"scikit-learn's {len(digits)} handwritten digits (8x8), upscaled to 20x20 "
                                       "and centred in 28x28 by centre of mass like MNIST")
    for name, chars, s in (("printed digits", "0123456789", 1),
                           ("printed letters", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 2)):
        glyphs = printed_glyphs(chars, FONT_N, seed + s)
        sets[name] = glyphs.reshape(FONT_N, -1).astype(np.float32) / 255
        about[name] = (f"{FONT_N} {name.split()[1]} in {len(_font_files())} fonts shipped with matplotlib "
                       "(DejaVu, STIX, Computer Modern), stroke 0-3 px, rotated within 15 degrees, MNIST-style")
    crops, names = photo_crops(sklearn_source, CROP_N, seed + 3)
    sets["photo crops"] = crops.reshape(CROP_N, -1).astype(np.float32) / 255
    about["photo crops"] = f"{CROP_N} random crops resized to 28x28 of: {', '.join(names)}"
    return sets, about


# -- models --------------------------------------------------------------------------------------------------


def train_package(out: Path, dataset, epochs: int, threads: int, noise: str | None = None) -> Path:
    """A short training run (one-cycle 2e-3, batch 128) exported to `out`; reused when `out` exists."""
    if (out / "model.json").is_file():
        return out
    from train.config import ModelConfig, TrainConfig
    from train.export import export_package
    from train.fit import fit, to_tensor

    options = dict(dataset=dataset.name, epochs=epochs, lr=2e-3, schedule="onecycle", iw_samples=10,
                   threads=threads, noise=noise or "")
    t0 = time.perf_counter()
    result = fit(TrainConfig(**options), ModelConfig(), run_dir=out.parent / f"{out.name}-run", dataset=dataset,
                 progress=False)
    seconds = time.perf_counter() - t0
    record = result.record(f"benchmarks/anomaly.py: {options}, noise={noise}")
    record["train_seconds"] = seconds
    export_package(result.model, out, to_tensor(result.dataset.test_images), training=record)
    print(f"trained {out} in {seconds:.0f} s: test -ELBO {result.test['nelbo']:.2f}", file=sys.stderr)
    return out


def validation_images(train_images: np.ndarray, training: dict) -> np.ndarray:
    """The validation split a run held out of training (vae_infer.data.datasets.validation_split with its config)."""
    config = training["config"]
    images = train_images[: config.get("train_limit") or None]
    _, val = validation_split(len(images), config["validation_size"], config["seed"])
    return images[val]


def calibrated_copy(package: Path, images: np.ndarray, workdir: Path, source: str, threads: int):
    """A calibrated copy of `package` in workdir (the original is left alone), loaded."""
    dest = workdir / package.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(package, dest)
    model = vae_infer.load(dest, threads=threads)
    anomaly.calibrate(model, images, source=source)
    return model


def all_scores(model, x: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    cal = model.manifest.calibration
    return {k: anomaly.score(model, x, kind=k, samples=cal["samples"].get(k, 1), seed=seed)
            for k in anomaly.SCORE_KINDS}


def rates(model, scores_in: dict, scores_out: dict) -> dict:
    cal = model.manifest.calibration
    out = {}
    for k in anomaly.SCORE_KINDS:
        t = cal["thresholds"][k]
        out[k] = {"auroc": auroc(scores_in[k], scores_out[k]), "auprc": auprc(scores_in[k], scores_out[k]),
                  "tpr_at_threshold": float(np.mean(scores_out[k] > t))}
    return out


# -- the three parts -----------------------------------------------------------------------------------------


def run_ood(model_dir: Path, dataset, sklearn_source, workdir: Path, threads: int) -> tuple[dict, dict, dict]:
    package_training = json.loads((model_dir / "model.json").read_text())["training"]
    val = validation_images(dataset.train_images, package_training)
    model = calibrated_copy(model_dir, val, workdir, "validation split", threads)
    test = model.as_images(dataset.test_images)
    sets, about = ood_sets(test, model.image_shape, sklearn_source)
    t0 = time.perf_counter()
    s_in = all_scores(model, test)
    seconds = time.perf_counter() - t0
    results = {}
    per_set_scores = {}
    for name, x in sets.items():
        s_out = all_scores(model, x)
        per_set_scores[name] = s_out
        results[name] = {"n": len(x), "about": about[name], **rates(model, s_in, s_out)}
        line = "  ".join(f"{k} {results[name][k]['auroc']:.3f}" for k in anomaly.SCORE_KINDS)
        print(f"OOD {name}: {line}", file=sys.stderr)
    cal = model.manifest.calibration
    summary = {
        "model": str(model_dir), "calibration_examples": len(val), "test_examples": len(test),
        "quantile": cal["quantile"], "thresholds": cal["thresholds"], "samples": cal["samples"],
        "false_positive_rate_on_test": {k: float(np.mean(s_in[k] > cal["thresholds"][k]))
                                        for k in anomaly.SCORE_KINDS},
        "seconds_all_kinds_10000_test_images": seconds,
        "sets": results,
    }
    return summary, {"test": s_in, **per_set_scores}, sets


def run_holdout(dataset, classes: list[int], runs: Path, workdir: Path, epochs: int, threads: int) -> dict:
    from train.data import Dataset

    out = {}
    for c in classes:
        keep = dataset.train_labels != c
        ds = Dataset(name=f"fashion-mnist-without-{c}", train_images=dataset.train_images[keep],
                     train_labels=dataset.train_labels[keep], test_images=dataset.test_images,
                     test_labels=dataset.test_labels, source=dataset.source)
        package = train_package(runs / f"holdout-{c}", ds, epochs, threads)
        training = json.loads((package / "model.json").read_text())["training"]
        model = calibrated_copy(package, validation_images(ds.train_images, training), workdir,
                                f"validation split without class {c}", threads)
        test_in = dataset.test_images[dataset.test_labels != c]
        test_out = dataset.test_images[dataset.test_labels == c]
        r = rates(model, all_scores(model, test_in), all_scores(model, test_out))
        out[str(c)] = {"class": CLASS_NAMES[c], "test_nelbo": training.get("test_nelbo"),
                       "train_seconds": training.get("train_seconds"),
                       "in": len(test_in), "out": len(test_out), **r}
        print(f"holdout {c} {CLASS_NAMES[c]}: " + "  ".join(f"{k} {r[k]['auroc']:.3f}" for k in r), file=sys.stderr)
        shutil.rmtree(Path(model.path))
    mean = {k: {m: float(np.mean([out[c][k][m] for c in out])) for m in ("auroc", "auprc")}
            for k in anomaly.SCORE_KINDS}
    return {"epochs": epochs, "classes": out, "mean": mean}


def run_denoise(models: dict[str, Path], dataset, threads: int, seed: int = 0) -> tuple[dict, dict]:
    clean = dataset.test_images[:PSNR_N].reshape(PSNR_N, -1).astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    noisy = {f"{kind} {level}": corruptions.apply_noise(clean, f"{kind}:{level}", rng) for kind, level in NOISES}
    loaded = {name: vae_infer.load(path, threads=threads) for name, path in models.items()}
    out = {"images": PSNR_N, "noises": {}, "models": {name: str(p) for name, p in models.items()},
           "clean_reconstruction_psnr": {name: float(np.mean(corruptions.psnr(clean, m.denoise(clean))))
                                         for name, m in loaded.items()}}
    examples = {"clean": clean[:10]}
    for noise_name, x in noisy.items():
        row = {"noisy_psnr": float(np.mean(corruptions.psnr(clean, x)))}
        examples[noise_name] = x[:10]
        for name, m in loaded.items():
            for steps in DENOISE_STEPS:
                d = m.denoise(x, steps=steps)
                p = float(np.mean(corruptions.psnr(clean, d)))
                row[f"{name}, steps {steps}"] = {"psnr": p, "gain_db": p - row["noisy_psnr"]}
                examples[f"{noise_name} | {name} | {steps}"] = d[:10]
        out["noises"][noise_name] = row
        print(f"denoise {noise_name}: noisy {row['noisy_psnr']:.2f} dB  " + "  ".join(
            f"{k}: {v['psnr']:.2f}" for k, v in row.items() if isinstance(v, dict)), file=sys.stderr)
    return out, examples


# -- report --------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    kinds = anomaly.SCORE_KINDS
    default = anomaly.DEFAULT_KIND
    head = "| set | n | " + " | ".join(f"**{k}**" if k == default else k for k in kinds) + " |"
    rule = "|---|---:|" + "---:|" * len(kinds)
    lines = [
        "# Anomaly detection and denoising benchmark",
        "",
        f"Measured on {result['environment']['machine']}, Python {result['environment']['python']}, numpy "
        f"{result['environment']['numpy']}, onnxruntime {result['environment']['onnxruntime']}.",
        "Scores: see `vae_infer/anomaly/scores.py`; higher = more anomalous. The default score of `detect` is "
        f"**{default}**. AUROC and AUPRC take the out-of-distribution images as the positive class.",
        "",
    ]
    ood = result.get("ood")
    if ood:
        lines += [
            f"## Out-of-distribution images, model `{ood['model']}`",
            "",
            f"`{ood['command']}` ({ood['seconds']:.0f} s)",
            "",
            f"Calibrated on the {ood['calibration_examples']} validation images held out of training "
            f"(quantile {ood['quantile']}); in-distribution: the {ood['test_examples']} Fashion-MNIST test images.",
            "",
            "AUROC:", "", head, rule,
        ]
        for name, r in ood["sets"].items():
            lines.append(f"| {name} | {r['n']} | " + " | ".join(_cell(r[k]["auroc"], k == default) for k in kinds)
                         + " |")
        plain = [r for n, r in ood["sets"].items() if n not in SEMANTIC_SHIFTS]
        worst = {k: min(r[k]["auroc"] for r in plain) for k in kinds}
        lines.append("| **worst set** (all but upside down and rotated) | | " + " | ".join(
            _cell(worst[k], k == default) for k in kinds) + " |")
        worst = {k: min(r[k]["auroc"] for r in ood["sets"].values()) for k in kinds}
        lines.append("| worst set, all | | " + " | ".join(_cell(worst[k], k == default) for k in kinds) + " |")
        lines += ["", "AUPRC:", "", head, rule]
        for name, r in ood["sets"].items():
            lines.append(f"| {name} | {r['n']} | " + " | ".join(_cell(r[k]["auprc"], k == default) for k in kinds)
                         + " |")
        lines += ["", f"Detection rate at the calibrated threshold (quantile {ood['quantile']}); first row: the "
                  "false-positive rate on the test images:", "", head, rule]
        lines.append(f"| *test images (false positives)* | {ood['test_examples']} | " + " | ".join(
            _cell(ood["false_positive_rate_on_test"][k], k == default) for k in kinds) + " |")
        for name, r in ood["sets"].items():
            lines.append(f"| {name} | {r['n']} | " + " | ".join(
                _cell(r[k]["tpr_at_threshold"], k == default) for k in kinds) + " |")
        lines += ["", "The sets:", ""] + [f"- **{n}**: {r['about']}" for n, r in ood["sets"].items()]
        lines += ["", f"Scoring the 10,000 test images with all seven kinds took "
                  f"{ood['seconds_all_kinds_10000_test_images']:.1f} s (iwae with k = {ood['samples']['iwae']})."]
    hold = result.get("holdout")
    if hold:
        lines += ["", f"## Held-out classes ({hold['epochs']}-epoch models, one per class, trained without it)",
                  "", f"`{hold['command']}` ({hold['seconds']:.0f} s; models trained by an earlier run are reused, "
                  f"each took {_seconds_range(hold)} to train on one thread)", "",
                  "AUROC (in: the other nine classes' test images; out: the held-out class's 1,000):", "",
                  "| held-out class | test -ELBO | " + " | ".join(f"**{k}**" if k == default else k for k in kinds)
                  + " |", "|---|---:|" + "---:|" * len(kinds)]
        for c, r in hold["classes"].items():
            lines.append(f"| {c} {r['class']} | {r['test_nelbo']:.1f} | " + " | ".join(
                _cell(r[k]["auroc"], k == default) for k in kinds) + " |")
        lines.append("| **mean** | | " + " | ".join(_cell(hold["mean"][k]["auroc"], k == default) for k in kinds)
                     + " |")
        lines.append("| mean AUPRC | | " + " | ".join(_cell(hold["mean"][k]["auprc"], k == default) for k in kinds)
                     + " |")
    den = result.get("denoise")
    if den:
        names = [k for k in next(iter(den["noises"].values())) if k != "noisy_psnr"]
        lines += ["", f"## Denoising: PSNR in dB (mean over {den['images']} test images, peak 1)", "",
                  f"`{den['command']}` ({den['seconds']:.0f} s). **plain** and **denoising** are {_epochs(den)}-epoch "
                  f"models of the same recipe; the denoising one was trained on noisy inputs with clean targets, "
                  f"noise `{den['training_noise']}` (each example: one kind at random, level uniform in the range).",
                  "",
                  "Models: " + "; ".join(f"**{n}** `{p}`" for n, p in den["models"].items()) + ". "
                  "`steps` = times through encoder mean and decoder. Gain = denoised minus noisy PSNR.", "",
                  "| noise | noisy | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for noise, row in den["noises"].items():
            lines.append(f"| {noise} | {row['noisy_psnr']:.2f} | " + " | ".join(
                f"{row[n]['psnr']:.2f} ({row[n]['gain_db']:+.2f})" for n in names) + " |")
        lines += ["", "PSNR of each model's reconstruction of the clean images (its ceiling): " + "; ".join(
            f"{n} {v:.2f} dB" for n, v in den["clean_reconstruction_psnr"].items()) + "."]
    return "\n".join(lines) + "\n"


def _seconds_range(hold: dict) -> str:
    secs = [r["train_seconds"] for r in hold["classes"].values() if r.get("train_seconds")]
    return f"{min(secs):.0f}-{max(secs):.0f} s" if secs else "?"


def _epochs(den: dict) -> str:
    try:
        return str(json.loads((Path(den["models"]["plain"]) / "model.json").read_text())["training"]["epochs_run"])
    except (OSError, KeyError, ValueError):
        return "short"


def _cell(v: float, bold: bool) -> str:
    return f"**{v:.3f}**" if bold else f"{v:.3f}"


# -- pictures ------------------------------------------------------------------------------------------------


def pictures(folder: Path, sets: dict, scores: dict, denoise_examples: dict | None,
             thresholds: dict | None = None) -> list[Path]:

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if sets:
        paths += _set_pictures(folder, sets, scores, thresholds or {})
    if denoise_examples:
        paths.append(_denoise_picture(folder, denoise_examples))
    return paths


def _set_pictures(folder: Path, sets: dict, scores: dict, thresholds: dict) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    names = list(sets)
    fig = Figure(figsize=(10, 0.95 * len(names) + 0.4))
    FigureCanvasAgg(fig)
    for r, name in enumerate(names):
        for c in range(10):
            ax = fig.add_subplot(len(names), 10, r * 10 + c + 1)
            ax.imshow(sets[name][c].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.98, bottom=0.02, wspace=0.05, hspace=0.08)
    paths.append(folder / "anomaly_sets.png")
    fig.savefig(paths[-1], dpi=80)
    # 2. score distributions: -ELBO against the default score
    show = ["test", "handwritten digits", "printed digits", "photo crops", "constant", "gaussian noise 0.1",
            "occlusion"]
    show = [s for s in show if s in scores]
    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    for i, kind in enumerate(("nelbo", anomaly.DEFAULT_KIND)):
        ax = fig.add_subplot(1, 2, i + 1)
        everything = np.concatenate([scores[s][kind] for s in show])
        if kind == "nelbo":
            lo, hi = np.percentile(everything, [0.5, 99])
            bins, shift = np.linspace(lo, hi, 80), 0.0
        else:  # spans orders of magnitude: log axis, shifted to start at 1
            shift = 1.0 - everything.min()
            lo, hi = 1.0, everything.max() + shift
            bins = np.geomspace(lo, hi, 80)
            ax.set_xscale("log")
        for s in show:
            v = np.clip(scores[s][kind] + shift, lo, hi)
            ax.hist(v, bins=bins, weights=np.full(len(v), 1.0 / len(v)), histtype="step", linewidth=1.6,
                    label="Fashion-MNIST test (in)" if s == "test" else s)
        if kind in thresholds:
            ax.axvline(thresholds[kind] + shift, color="k", linestyle="--", linewidth=1, label="threshold (0.99)")
        ax.set_xlabel("-ELBO (nats)" if kind == "nelbo" else
                      f"{kind} score {shift:+.1f} (log axis)" if shift else kind)
        ax.set_ylabel("fraction of the set's images")
        ax.set_title(f"{kind}" + (" (the plain likelihood)" if kind == "nelbo" else " (detect's default)"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(folder / "anomaly_scores.png")
    fig.savefig(paths[-1], dpi=80)
    return paths


def _denoise_picture(folder: Path, denoise_examples: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [k for k in denoise_examples if "|" not in k or k.endswith("| 1")]
    rows = [r for r in rows if r == "clean" or "0.3" in r or "salt-pepper 0.2" in r]
    fig = Figure(figsize=(10, 0.95 * len(rows) + 0.4))
    FigureCanvasAgg(fig)
    for r, name in enumerate(rows):
        for c in range(10):
            ax = fig.add_subplot(len(rows), 10, r * 10 + c + 1)
            ax.imshow(denoise_examples[name][c].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                label = name.replace(" | 1", "").replace(" | ", ",\n")
                ax.set_ylabel(label if "|" in name else f"{name}\n(noisy)" if name != "clean" else name,
                              rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.22, right=0.99, top=0.98, bottom=0.02, wspace=0.05, hspace=0.08)
    path = folder / "denoise_examples.png"
    fig.savefig(path, dpi=80)
    return path


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    p.add_argument("--sklearn", type=Path, default=None, help="scikit-learn wheel or folder with its data files")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "anomaly", help="trained packages, reused")
    p.add_argument("--holdout", default="0,1,2,3,4,5,6,7,8,9", help="classes to hold out ('' for none)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of each short training run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", default="ood,holdout,denoise")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--pictures", type=Path, default=None, help="folder for anomaly_*.png and denoise_*.png")
    args = p.parse_args(argv)
    from train.data import load_dataset

    t0 = time.perf_counter()
    dataset = load_dataset("fashion-mnist")
    parts = set(args.parts.split(","))
    command = "python benchmarks/anomaly.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result: dict = {}
    if args.json and args.json.is_file():  # parts run separately add up in one report
        result = {k: v for k, v in json.loads(args.json.read_text()).items() if k in ("ood", "holdout", "denoise")}
    scores, sets, examples = {}, {}, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "ood" in parts:
            result["ood"], scores, sets = run_ood(args.model, dataset, args.sklearn, workdir, args.threads)
        if "holdout" in parts and args.holdout:
            classes = [int(c) for c in args.holdout.split(",")]
            result["holdout"] = run_holdout(dataset, classes, args.runs, workdir, args.epochs, args.threads)
        if "denoise" in parts:
            models = {"shipped": args.model,
                      "plain": train_package(args.runs / "plain", dataset, args.epochs, args.threads),
                      "denoising": train_package(args.runs / "denoising", dataset, args.epochs, args.threads,
                                                 noise=TRAIN_NOISE)}
            result["denoise"], examples = run_denoise(models, dataset, args.threads)
            result["denoise"]["training_noise"] = TRAIN_NOISE
    for part in ("ood", "holdout", "denoise"):
        if part in parts and part in result:
            result[part]["command"] = command
            result[part]["seconds"] = time.perf_counter() - t0
    import onnxruntime

    result["environment"] = {**common.environment(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                             "python": platform.python_version(), "numpy": np.__version__,
                             "onnxruntime": onnxruntime.__version__}
    if args.json:
        common.write_report(result, json_path=args.json)
    if args.markdown:
        common.write_report(result, markdown=markdown(result), markdown_path=args.markdown)
    if args.pictures and (sets or examples):
        for path in pictures(args.pictures, sets, scores, examples, result.get("ood", {}).get("thresholds")):
            print(f"wrote {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
