"""Anomaly scores, calibrated detection and denoising with a loaded model package (numpy and onnxruntime only).

Every score is per image, in nats unless said otherwise, and higher means more anomalous. With x the
image in [0, 1]^D (D = 784), q(z|x) = N(mu, diag(exp(logvar))) the encoder, x_hat(z) = sigmoid(logits(z))
the decoder and BCE(x, p) = -sum_i [x_i log p_i + (1 - x_i) log(1 - p_i)]:

    nelbo   -ELBO = E_q[BCE(x, x_hat(z))] + KL(q(z|x) || N(0, I)), with `samples` draws of z
            (the training loss; VAEModel.score's default).
    recon   BCE(x, x_hat(mu)): the Bernoulli reconstruction error of the deterministic reconstruction.
    mse     sum_i (x_i - x_hat(mu)_i)^2: the squared reconstruction error.
    iwae    -log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x), k = `samples` (default 64): the
            importance-weighted bound on -log p(x) (Burda et al. 2016); <= -ELBO on average, tightening as k grows.
    excess  BCE(x, x_hat(mu)) - sum_i H(x_i), H(p) = -p log p - (1 - p) log(1 - p): the reconstruction
            error beyond the part no decoder can avoid, = sum_i KL(Bern(x_i) || Bern(x_hat_i)) >= 0. The
            subtracted entropy is large for images with many gray pixels and ~0 for black-and-white ones,
            which is where the plain likelihood confuses "simple" with "likely".
    ic      -ELBO - ln(2) * L(x): the input-complexity correction of Serra et al. (ICLR 2020), with L(x) the
            length in bits of the image's 8-bit pixels compressed as PNG image data (Paeth filter, zlib
            level 9). Robust to simple inputs; it fails on noise here, because a Bernoulli decoder's -ELBO
            does not grow like a compressor's code length (benchmarks/anomaly.md).
    dose    -log p_hat(T(x)): the density-of-states score (Morningstar et al., AISTATS 2021). T(x) = (log(1 +
            recon(x) + KL), log(1 + L(x)), log(1 + excess(x))) are three statistics of the image under the
            model; p_hat is a Gaussian kernel density estimate fitted to T on the calibration images
            (standardized; Scott bandwidth n^(-1/(d+4))). It is two-sided: an image is anomalous when its
            statistics are unlike those of the model's own data, whether its likelihood is too low (noise,
            inverted) or too high for its complexity (simple images, constant images). Needs calibration.

Calibration (`calibrate`) scores held-out images of the training distribution, stores the per-kind
thresholds (a quantile of the scores) in model.json's `calibration` section and the validation scores and
the density-of-states reference in `calibration.npz`; `detect` compares scores with those thresholds.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import likelihood
from .calibration_schema import (  # noqa: F401  (validate_calibration, load_calibration_arrays: public here too)
    CALIBRATION_VERSION,
    DOSE_STATISTICS,
    MIN_CALIBRATION_IMAGES,
    SCORE_KINDS,
    STOCHASTIC_KINDS,
    load_calibration_arrays,
    validate_calibration,
)
from .errors import InputError, ModelPackageError
from .inputs import as_count, as_seed

DEFAULT_KIND = "dose"  # detect's default: chosen by measurement (benchmarks/anomaly.md)
DEFAULT_QUANTILE = 0.99
DEFAULT_IW_SAMPLES = 64  # k of the iwae score when calibrating
CALIBRATION_FILE = "calibration.npz"
KDE_BLOCK = 1024  # rows per block of the kernel density sums: a (block, reference) float64 matrix

Scores = NDArray[np.float64]


# -- the scores ----------------------------------------------------------------------------------------


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in SCORE_KINDS:
        raise InputError(f"unknown score kind {kind!r}: expected one of {', '.join(SCORE_KINDS)}")
    return kind


def default_samples(kind: str) -> int:
    """Draws of z a kind uses when none are asked for: k of the iwae bound, one draw for nelbo and ic.
    The same defaults everywhere: VAEModel.score, the CLI, calibration and detect."""
    return DEFAULT_IW_SAMPLES if kind == "iwae" else 1


def score(model, images: object, kind: str = "nelbo", samples: int | None = None, seed: int | None = 0) -> Scores:
    """Per-image anomaly scores (n,), higher = more anomalous; `kind` is one of SCORE_KINDS (module docstring).

    samples: draws of z for nelbo and ic, k for iwae (default: default_samples(kind)); the other kinds are
    deterministic and ignore it. seed: the draws' seed (None: fresh randomness). Large inputs stream through
    in chunks of model.chunk_size."""
    kind = check_kind(kind)
    rows = model.check_images(images)  # converted to float32 a chunk at a time below: memory stays bounded
    k = default_samples(kind) if samples is None else as_count(samples, "samples")
    rng = np.random.default_rng(as_seed(seed))
    reference = _dose_reference(model) if kind == "dose" else None
    out = np.empty(len(rows))
    for s in range(0, len(rows), model.chunk_size):
        chunk = model.to_float32(rows[s : s + model.chunk_size])
        out[s : s + len(chunk)] = _scores_chunk(model, chunk, (kind,), k, k, rng, reference)[kind]
    return _finite(out, model, kind)


def _finite(scores: Scores, model, kind: str) -> Scores:
    """Scores of validated images are finite unless the package is broken: a NaN would flag nothing."""
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ModelPackageError(
            f"{model.path}: the {kind} score of {len(rows)} image(s) is not finite (first at row {int(rows[0])}); "
            f"the package's graphs or calibration give NaN or inf for valid images: re-export or calibrate again"
        )
    return scores


def _scores_chunk(model, x: NDArray[np.float32], kinds: tuple[str, ...], samples: int, iw_samples: int,
                  rng: np.random.Generator, reference: dict | None = None) -> dict[str, Scores]:
    """The requested kinds for one chunk, sharing one encoder pass, and one decoder pass at mu between the
    kinds that use it (recon, mse, excess, dose); nelbo, iwae and ic need only their own draws."""
    mu, logvar = model.encode_rows(x)
    wanted = set(kinds)
    at_mu = wanted & {"recon", "mse", "excess", "dose"}
    logits = model.decode_logits(mu) if at_mu else None
    recon = likelihood.bernoulli_nll(logits, x) if at_mu else None
    kl = likelihood.kl_to_standard_normal(mu, logvar)
    out: dict[str, Scores] = {}
    needs_png = {"ic", "dose"} & wanted
    bits = png_bits(x, model.image_shape) if needs_png else None
    excess = recon - pixel_entropy(x) if wanted & {"excess", "dose"} else None
    if "recon" in kinds:
        out["recon"] = recon
    if "mse" in kinds:
        out["mse"] = np.sum((_sigmoid(logits) - x.astype(np.float64)) ** 2, axis=1)
    if "excess" in kinds:
        out["excess"] = excess
    if "nelbo" in kinds or "ic" in kinds:
        nelbo = likelihood.expected_nll(model.decode_logits, x, mu, logvar, samples, rng) + kl
        out["nelbo"] = nelbo
        if "ic" in kinds:
            out["ic"] = nelbo - math.log(2) * bits
    if "iwae" in kinds:
        out["iwae"] = likelihood.importance_weighted_nll(model.decode_logits, x, mu, logvar, iw_samples, rng)
    if "dose" in kinds:
        feats = dose_statistics(recon, kl, bits, excess)
        if reference is not None:
            out["dose"] = kde_score(feats, reference)
        else:
            out["_dose_statistics"] = feats  # calibration fits the reference from these
    return {k: v for k, v in out.items() if k in kinds or k.startswith("_")}


def _sigmoid(logits: NDArray) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # never overflows


def pixel_entropy(x: NDArray) -> Scores:
    """sum_i H(x_i), H(p) = -p log p - (1 - p) log(1 - p) in nats (H(0) = H(1) = 0): the least BCE any
    decoder can reach on x."""
    p = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1.0 - p) * np.log1p(-p))
    return np.nan_to_num(h, nan=0.0).sum(axis=1)


def png_bits(x: NDArray, image_shape: tuple[int, int]) -> Scores:
    """L(x): bits of each image's PNG image data, the 8-bit pixels round(255 x), each row Paeth-filtered
    (PNG filter type 4) and the whole zlib-compressed at level 9. A PNG file adds a constant ~57 bytes of
    headers, left out. Deterministic; a constant image gives ~100 bits, uniform noise ~8 bits a pixel."""
    h, w = image_shape
    u8 = np.rint(np.asarray(x, np.float64) * 255.0).astype(np.int16).reshape(-1, h, w)
    a = np.zeros_like(u8)
    a[:, :, 1:] = u8[:, :, :-1]  # left
    b = np.zeros_like(u8)
    b[:, 1:, :] = u8[:, :-1, :]  # up
    c = np.zeros_like(u8)
    c[:, 1:, 1:] = u8[:, :-1, :-1]  # up-left
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    filtered = ((u8 - pred) % 256).astype(np.uint8)
    rows = np.concatenate([np.full((len(u8), h, 1), 4, np.uint8), filtered], axis=2)  # filter byte per row
    return np.array([8.0 * len(zlib.compress(r.tobytes(), 9)) for r in rows])


def dose_statistics(recon: Scores, kl: Scores, bits: Scores, excess: Scores) -> NDArray[np.float64]:
    """T(x), (n, 3): log(1 + recon + KL), log(1 + L(x)), log(1 + excess), in DOSE_STATISTICS order."""
    return np.stack([np.log1p(recon + kl), np.log1p(bits), np.log1p(np.maximum(excess, 0.0))], axis=1)


def kde_score(features: NDArray, reference: dict, exclude_self: bool = False) -> Scores:
    """-log p_hat(T): a Gaussian kernel density over the standardized reference statistics, with bandwidth h:
    p_hat(u) = (1/n) sum_j N(u; u_j, h^2 I). exclude_self: features are the reference itself, each row's
    own kernel left out (leave-one-out), so calibration scores are not biased low."""
    mean, std, h = reference["mean"], reference["std"], reference["bandwidth"]
    ref = (reference["statistics"] - mean) / std
    u = (np.asarray(features, np.float64) - mean) / std
    n, d = ref.shape
    if exclude_self and len(u) != n:
        raise InputError("exclude_self needs the reference statistics themselves")
    ref_sq = np.sum(ref**2, axis=1)
    log_norm = math.log(n - 1 if exclude_self else n) + 0.5 * d * math.log(2 * math.pi * h * h)
    out = np.empty(len(u))
    for s in range(0, len(u), KDE_BLOCK):
        ub = u[s : s + KDE_BLOCK]
        sq = np.maximum(np.sum(ub**2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * ub @ ref.T, 0.0)
        expo = -sq / (2 * h * h)
        if exclude_self:
            rows = np.arange(len(ub))
            expo[rows, s + rows] = -np.inf
        m = expo.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(expo - m).sum(axis=1))
        out[s : s + KDE_BLOCK] = log_norm - lse
    return out


# -- calibration ---------------------------------------------------------------------------------------


def _calibration(model) -> dict[str, Any] | None:
    """The manifest's calibration section, validated (None when the model is not calibrated)."""
    cal = model.manifest.calibration
    if cal is not None:
        validate_calibration(cal, where=str(model.path / "model.json"))
    return cal or None


def _require_calibration(model, what: str) -> dict[str, Any]:
    cal = _calibration(model)
    if not cal:
        raise ModelPackageError(
            f"{model.path} is not calibrated, so {what} has no threshold: run `vae-infer calibrate {model.path} "
            f"--data SOURCE` (or vae_infer.anomaly.calibrate) on held-out images of the training data, "
            f"or pass a threshold"
        )
    return cal


def _calibration_arrays(model) -> dict[str, NDArray]:
    from .package import read_verified

    cal = _require_calibration(model, "this score")
    name = cal["reference_file"]
    data = read_verified(model.path, model.manifest, name)
    arrays = load_calibration_arrays(data, str(model.path / name))
    validate_calibration(cal, arrays, where=str(model.path / "model.json"))
    return arrays


def _dose_reference(model) -> dict:
    cal = _calibration(model)
    if not cal or "dose" not in cal:
        raise ModelPackageError(
            f"the dose score needs a calibrated model and {model.path} has no dose calibration: run "
            f"`vae-infer calibrate {model.path} --data SOURCE` first"
        )
    arrays = _calibration_arrays(model)
    dose = cal["dose"]
    return {
        "statistics": arrays["dose_statistics"].astype(np.float64),
        "mean": np.asarray(dose["mean"], np.float64),
        "std": np.asarray(dose["std"], np.float64),
        "bandwidth": float(dose["bandwidth"]),
    }


def _check_quantile(q: object) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < float(q) < 1.0:
        raise InputError(f"quantile must be a number strictly between 0 and 1 (such as 0.99), got {q!r}")
    return float(q)


def calibration_scores(model, images: object, kinds: tuple[str, ...] = SCORE_KINDS, samples: int = 1,
                       iw_samples: int = DEFAULT_IW_SAMPLES, seed: int | None = 0) -> dict[str, Scores]:
    """Scores of every kind in `kinds` on the calibration images (dose: leave-one-out against these images'
    own statistics), and under "_dose_statistics" the statistics T(x) of each image."""
    kinds = tuple(check_kind(k) for k in kinds)
    x = model.as_images(images)
    if len(x) < MIN_CALIBRATION_IMAGES:
        raise InputError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} images of the training distribution, got {len(x)}"
        )
    k, iw_k = as_count(samples, "samples"), as_count(iw_samples, "iw_samples")
    rng = np.random.default_rng(as_seed(seed))
    parts = [_scores_chunk(model, x[s : s + model.chunk_size], kinds, k, iw_k, rng)
             for s in range(0, len(x), model.chunk_size)]
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if "dose" in kinds:
        out["dose"] = kde_score(out["_dose_statistics"], _fit_reference(out["_dose_statistics"]), exclude_self=True)
    return out


def _fit_reference(statistics: NDArray) -> dict:
    n, d = statistics.shape
    std = statistics.std(axis=0)
    return {"statistics": statistics, "mean": statistics.mean(axis=0), "std": np.where(std > 0, std, 1.0),
            "bandwidth": float(n ** (-1.0 / (d + 4)))}


def calibrate(model, images: object, quantile: float = DEFAULT_QUANTILE, kinds: tuple[str, ...] = SCORE_KINDS,
              default_kind: str = DEFAULT_KIND, samples: int = 1, iw_samples: int = DEFAULT_IW_SAMPLES,
              seed: int | None = 0, source: str | None = None, write: bool = True) -> dict[str, Any]:
    """Score held-out images of the training distribution and store thresholds in the model package.

    For every kind, the threshold is the `quantile` of its scores on `images` (0.99: about 1% of such images
    get flagged). The section written to model.json (and returned) holds the thresholds; calibration.npz
    holds every kind's calibration scores, so detect can use another quantile without calibrating again,
    and the statistics the dose score's density is fitted to. write=False computes without writing.
    After writing, model.manifest is the new manifest, so the same loaded model detects at once."""
    q = _check_quantile(quantile)
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    default_kind = check_kind(default_kind)
    if default_kind not in kinds:
        raise InputError(f"default_kind {default_kind!r} is not among the calibrated kinds {', '.join(kinds)}")
    scores = calibration_scores(model, images, kinds, samples, iw_samples, seed)
    arrays = {f"scores_{k}": scores[k].astype(np.float64) for k in kinds}
    section: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "source": source or "images passed to vae_infer.anomaly.calibrate",
        "examples": int(len(scores[kinds[0]])),
        "variant": getattr(model, "variant", None),  # the graphs scored: None for the fp32 ones
        "quantile": q,
        "default_kind": default_kind,
        "samples": {k: (iw_samples if k == "iwae" else samples) for k in kinds if k in STOCHASTIC_KINDS},
        "seed": seed,
        "thresholds": {k: float(np.quantile(scores[k], q)) for k in kinds},
        "reference_file": CALIBRATION_FILE,
    }
    if "dose" in kinds:
        ref = _fit_reference(scores["_dose_statistics"])
        arrays["dose_statistics"] = scores["_dose_statistics"]
        section["dose"] = {"statistics": list(DOSE_STATISTICS), "mean": ref["mean"].tolist(),
                           "std": ref["std"].tolist(), "bandwidth": ref["bandwidth"], "kernel": "gaussian"}
    validate_calibration(section, arrays, where=f"{model.path}: the new calibration")  # no NaN reaches the disk
    if write:
        from .package import update_package

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        model.manifest = update_package(model.path, {CALIBRATION_FILE: buf.getvalue()}, calibration=section)
    return section


def threshold(model, kind: str | None = None, quantile: float | None = None) -> tuple[str, float]:
    """(kind, threshold) that detect uses: the calibrated threshold of `kind` (default: the calibration's
    default kind), or the `quantile` of its stored calibration scores."""
    cal = _require_calibration(model, "detect")
    kind = check_kind(kind or cal["default_kind"])
    if kind not in cal["thresholds"]:
        raise ModelPackageError(
            f"{model.path} was calibrated for {', '.join(cal['thresholds'])}, not {kind!r}; calibrate again "
            f"with that kind or pass a threshold"
        )
    if quantile is None:
        return kind, float(cal["thresholds"][kind])
    q = _check_quantile(quantile)
    return kind, float(np.quantile(_calibration_arrays(model)[f"scores_{kind}"], q))


def detect(model, images: object, kind: str | None = None, quantile: float | None = None,
           threshold: float | None = None, samples: int | None = None,
           seed: int | None = 0) -> tuple[NDArray[np.bool_], Scores]:
    """(flags, scores): flags[i] is True where scores[i] is above the threshold.

    The threshold is, in order: `threshold` if given (then no calibration is needed, except for dose); the
    `quantile` of the stored calibration scores; the calibrated threshold. kind defaults to the
    calibration's default kind (dose). samples defaults to what the calibration used for that kind."""
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        if quantile is not None:
            raise InputError("pass either a threshold or a quantile, not both")
        cal = _calibration(model)
        kind = check_kind(kind or (cal or {}).get("default_kind") or DEFAULT_KIND)
        limit = float(threshold)
    else:
        kind, limit = _threshold_for(model, kind, quantile)
        cal = _calibration(model)
    if samples is None:
        samples = int((cal or {}).get("samples", {}).get(kind, default_samples(kind)))
    scores = score(model, images, kind=kind, samples=samples, seed=seed)
    return scores > limit, scores


_threshold_for = threshold  # detect's `threshold` argument shadows the function's name inside it


def denoise(model, images: object, steps: int = 1) -> NDArray[np.float32]:
    """Images mapped through the encoder mean and the decoder, x <- decode(mu(x)), `steps` times; (n, features)
    float32 in [0, 1]. One step is VAEModel.reconstruct; more steps pull further towards the model's images."""
    steps = as_count(steps, "steps")
    x = model.as_images(images)
    out = np.empty_like(x)
    for s in range(0, len(x), model.chunk_size):
        chunk = x[s : s + model.chunk_size]
        for _ in range(steps):
            mu, _ = model.encode_rows(chunk)
            chunk = model.decode_rows(mu)
        out[s : s + model.chunk_size] = chunk
    return out
