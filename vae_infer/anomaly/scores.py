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
            level 9). For a colour model L(x) is the image compressed as an 8-bit RGB PNG (each byte Paeth-
            predicted from the same channel of its neighbours), so the correction counts all h*w*3 values
            the -ELBO sums over. Robust to simple inputs; it fails on noise here, because a Bernoulli decoder's -ELBO
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
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, ModelPackageError
from ..inputs import as_count, as_seed, check_output_rows
from ..package.calibration import (  # noqa: F401  (validate_calibration, load_calibration_arrays: public here too)
    CALIBRATION_VERSION,
    DOSE_STATISTICS,
    MIN_CALIBRATION_IMAGES,
    SCORE_KINDS,
    STOCHASTIC_KINDS,
    load_calibration_arrays,
    validate_calibration,
)
from ..work_limits import MAX_DENOISE_STEPS, MAX_SAMPLES, check_at_most, check_work
from . import likelihood
from .statistics import (  # noqa: F401  (KDE_BLOCK: public here too)
    KDE_BLOCK,
    _sigmoid,
    dose_statistics,
    kde_score,
    pixel_entropy,
    png_bits,
)

DEFAULT_KIND = "dose"  # detect's default: chosen by measurement (benchmarks/anomaly.md)
DEFAULT_QUANTILE = 0.99
DEFAULT_IW_SAMPLES = 64  # k of the iwae score when calibrating
CALIBRATION_FILE = "calibration.npz"

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


def resolve_samples(kind: str, samples: object, option: str = "samples") -> int:
    """The draws of z `kind` uses: default_samples(kind) when samples is None, else samples checked to be an
    integer in 1..MAX_SAMPLES (1024). A deterministic kind (recon, mse, excess, dose) evaluates once per image:
    samples=1 says just that, and any other value would be ignored, so it is refused."""
    if samples is None:
        return default_samples(kind)
    k = as_count(samples, option)
    if kind not in STOCHASTIC_KINDS and k != 1:
        raise InputError(f"{option}={k} does nothing for kind {kind!r}, a deterministic score (one evaluation per "
                         f"image); only {', '.join(STOCHASTIC_KINDS)} draw z: leave {option} out")
    return check_at_most(k, MAX_SAMPLES, option, "draws of z per image")


class ChunkScorer:
    """Scores of one kind for successive chunks of validated float32 rows, with one stream of draws: fed
    model.chunk_size rows at a time, it gives exactly what score gives for the whole input. `rows`, the number
    of images that will be fed, is checked against MAX_WORK (rows x samples) before any work."""

    def __init__(self, model, kind: str, samples: int | None, seed: int | None, rows: int) -> None:
        self.model, self.kind = model, check_kind(kind)
        self.samples = resolve_samples(self.kind, samples)
        check_work(rows, self.samples, "samples", f"score (kind {self.kind})")
        self._rng = np.random.default_rng(as_seed(seed))
        self._reference = _dose_reference(model) if self.kind == "dose" else None
        self._done = 0

    def __call__(self, x: NDArray[np.float32]) -> Scores:
        out = _scores_chunk(self.model, x, (self.kind,), self.samples, self.samples, self._rng,
                            self._reference)[self.kind]
        _finite(out, self.model, self.kind, self._done)
        self._done += len(out)
        return out


def score(model, images: object, kind: str = "nelbo", samples: int | None = None, seed: int | None = 0) -> Scores:
    """Per-image anomaly scores (n,), higher = more anomalous; `kind` is one of SCORE_KINDS (module docstring).

    samples: draws of z for nelbo and ic, k for iwae (default: default_samples(kind)), at most MAX_SAMPLES
    (1024); the deterministic kinds take none (samples=1 at most). The work, images x samples, is at most
    MAX_WORK (2**24 decoder evaluations) per call. Both are checked before any work (vae_infer.work_limits).
    seed: the draws' seed (None: fresh randomness). Large inputs stream through in chunks of model.chunk_size."""
    resolve_samples(check_kind(kind), samples)  # refused before the images are even looked at
    rows = model.check_images(images)  # converted to float32 a chunk at a time below: memory stays bounded
    run = ChunkScorer(model, kind, samples, seed, len(rows))
    out = np.empty(len(rows))
    for s in range(0, len(rows), model.chunk_size):
        chunk = model.to_float32(rows[s : s + model.chunk_size])
        out[s : s + len(chunk)] = run(chunk)
    return out


def _finite(scores: Scores, model, kind: str, offset: int = 0) -> Scores:
    """Scores of validated images are finite unless the package is broken: a NaN would flag nothing."""
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ModelPackageError(
            f"{model.path}: the {kind} score of {len(rows)} image(s) is not finite (first at row "
            f"{int(rows[0]) + offset}); "
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
    recon = likelihood.bernoulli_nll(logits, x) if logits is not None else None  # logits: when at_mu
    kl = likelihood.kl_to_standard_normal(mu, logvar)
    out: dict[str, Scores] = {}
    needs_png = {"ic", "dose"} & wanted
    bits = png_bits(x, model.image_shape) if needs_png else None
    excess = recon - pixel_entropy(x) if recon is not None and wanted & {"excess", "dose"} else None
    # below, each kind finds what it needs computed above (the kinds in at_mu have logits and recon)
    if "recon" in kinds:
        assert recon is not None, "recon is in at_mu"
        out["recon"] = recon
    if "mse" in kinds:
        assert logits is not None, "mse is in at_mu"
        out["mse"] = np.sum((_sigmoid(logits) - x.astype(np.float64)) ** 2, axis=1)
    if "excess" in kinds:
        assert excess is not None, "excess is in at_mu"
        out["excess"] = excess
    if "nelbo" in kinds or "ic" in kinds:
        nelbo = likelihood.expected_nll(model.decode_logits, x, mu, logvar, samples, rng) + kl
        out["nelbo"] = nelbo
        if "ic" in kinds:
            assert bits is not None, "ic needs the PNG bits"
            out["ic"] = nelbo - math.log(2) * bits
    if "iwae" in kinds:
        out["iwae"] = likelihood.importance_weighted_nll(model.decode_logits, x, mu, logvar, iw_samples, rng)
    if "dose" in kinds:
        assert recon is not None and bits is not None and excess is not None, "dose is in at_mu and needs the bits"
        feats = dose_statistics(recon, kl, bits, excess)
        if reference is not None:
            out["dose"] = kde_score(feats, reference)
        else:
            out["_dose_statistics"] = feats  # calibration fits the reference from these
    return {k: v for k, v in out.items() if k in kinds or k.startswith("_")}


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
            f"--data SOURCE` (or vae_infer.anomaly.scores.calibrate) on held-out images of the training data, "
            f"or pass a threshold"
        )
    return cal


def _calibration_arrays(model) -> dict[str, NDArray]:
    from ..package.files import read_verified

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
    own statistics), and under "_dose_statistics" the statistics T(x) of each image. samples and iw_samples
    are at most MAX_SAMPLES, and images x (samples + iw_samples + 1) at most MAX_WORK (vae_infer.work_limits)."""
    kinds = tuple(check_kind(k) for k in kinds)
    k = check_at_most(as_count(samples, "samples"), MAX_SAMPLES, "samples", "draws of z per image")
    iw_k = check_at_most(as_count(iw_samples, "iw_samples"), MAX_SAMPLES, "iw_samples", "draws of z per image")
    rows = model.check_images(images)  # converted to float32 a chunk at a time: memory stays bounded
    if len(rows) < MIN_CALIBRATION_IMAGES:
        raise InputError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} images of the training distribution, got {len(rows)}"
        )
    per_image = 1 + (k if {"nelbo", "ic"} & set(kinds) else 0) + (iw_k if "iwae" in kinds else 0)
    check_work(len(rows), per_image, "1 + samples + iw_samples", "calibrate")
    rng = np.random.default_rng(as_seed(seed))
    parts = [_scores_chunk(model, model.to_float32(rows[s : s + model.chunk_size]), kinds, k, iw_k, rng)
             for s in range(0, len(rows), model.chunk_size)]
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
              default_kind: str = DEFAULT_KIND, samples: int | None = None, iw_samples: int | None = None,
              seed: int | None = 0, source: str | None = None, write: bool = True) -> dict[str, Any]:
    """Score held-out images of the training distribution and store thresholds in the model package.

    For every kind, the threshold is the `quantile` of its scores on `images` (0.99: about 1% of such images
    get flagged). The section written to model.json (and returned) holds the thresholds; calibration.npz
    holds every kind's calibration scores, so detect can use another quantile without calibrating again,
    and the statistics the dose score's density is fitted to. write=False computes without writing.
    After writing, model.manifest is the new manifest, so the same loaded model detects at once.

    samples: draws of z for nelbo and ic (default 1); iw_samples: k of iwae (default DEFAULT_IW_SAMPLES, 64).
    Each is at most MAX_SAMPLES (1024), refused when no calibrated kind uses it, and images x (1 + samples +
    iw_samples) is at most MAX_WORK (vae_infer.work_limits); all checked before any work."""
    q = _check_quantile(quantile)
    kinds = tuple(dict.fromkeys(check_kind(k) for k in kinds))
    default_kind = check_kind(default_kind)
    if default_kind not in kinds:
        raise InputError(f"default_kind {default_kind!r} is not among the calibrated kinds {', '.join(kinds)}")
    samples = resolve_samples("nelbo" if {"nelbo", "ic"} & set(kinds) else "recon", samples)
    if iw_samples is not None and "iwae" not in kinds:
        raise InputError(f"iw_samples={iw_samples} does nothing: iwae is not among the calibrated kinds "
                         f"{', '.join(kinds)}; leave iw_samples out")
    iw_samples = resolve_samples("iwae", iw_samples, "iw_samples")
    scores = calibration_scores(model, images, kinds, samples, iw_samples, seed)
    arrays = {f"scores_{k}": scores[k].astype(np.float64) for k in kinds}
    section: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "source": source or "images passed to vae_infer.anomaly.scores.calibrate",
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
        from ..package.files import update_package

        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)  # float64 scores
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


def detect_rule(model, kind: str | None = None, quantile: float | None = None, threshold: float | None = None,
                samples: int | None = None) -> tuple[str, float, int | None]:
    """(kind, threshold, samples) that detect applies, checked before any image is scored (see detect)."""
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
    if samples is None and kind in STOCHASTIC_KINDS:
        samples = int((cal or {}).get("samples", {}).get(kind, default_samples(kind)))
    resolve_samples(kind, samples)
    return kind, limit, samples


def detect(model, images: object, kind: str | None = None, quantile: float | None = None,
           threshold: float | None = None, samples: int | None = None,
           seed: int | None = 0) -> tuple[NDArray[np.bool_], Scores]:
    """(flags, scores): flags[i] is True where scores[i] is above the threshold.

    The threshold is, in order: `threshold` if given (then no calibration is needed, except for dose); the
    `quantile` of the stored calibration scores; the calibrated threshold. kind defaults to the
    calibration's default kind (dose). samples defaults to what the calibration used for that kind; it is at
    most MAX_SAMPLES (1024), refused for a deterministic kind (dose, recon, mse, excess) unless 1, and images x
    samples is at most MAX_WORK, as in score."""
    kind, limit, samples = detect_rule(model, kind, quantile, threshold, samples)
    scores = score(model, images, kind=kind, samples=samples, seed=seed)
    return scores > limit, scores


_threshold_for = threshold  # detect_rule's `threshold` argument shadows the function's name inside it


def denoise(model, images: object, steps: int = 1) -> NDArray[np.float32]:
    """Images mapped through the encoder mean and the decoder, x <- decode(mu(x)), `steps` times; (n, features)
    float32 in [0, 1]. One step is VAEModel.reconstruct; more steps pull further towards the model's images.

    steps is at most MAX_DENOISE_STEPS (100), images x steps at most MAX_WORK (2**24 decoder evaluations) and
    the output at most 2 GiB (vae_infer.inputs.MAX_OUTPUT_BYTES), all checked before any work."""
    steps = check_denoise_steps(steps)
    rows = model.check_images(images)  # converted to float32 a chunk at a time: memory stays bounded
    check_work(len(rows), steps, "steps", "denoise")
    check_output_rows(len(rows), model.manifest.features, "denoise")
    out = np.empty((len(rows), model.manifest.features), np.float32)
    for s in range(0, len(rows), model.chunk_size):
        out[s : s + model.chunk_size] = denoise_rows(model, model.to_float32(rows[s : s + model.chunk_size]), steps)
    return out


def check_denoise_steps(steps: object) -> int:
    return check_at_most(as_count(steps, "steps"), MAX_DENOISE_STEPS, "steps", "encode-decode rounds")


def denoise_rows(model, x: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
    """denoise for one chunk of validated float32 rows, with `steps` checked by the caller."""
    for _ in range(steps):
        mu, _ = model.encode_rows(x)
        x = model.decode_rows(mu)
    return x
