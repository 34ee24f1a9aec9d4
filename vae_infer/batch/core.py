"""The engine-independent core of a batch job: a block of stored rows in, output columns out, through one
loaded model. Engines (vae_infer.batch.local, vae_infer.ray) only move blocks to it and columns away.

Deterministic outputs (mu, logvar, the scores recon, mse, excess, dose) are the model's public API on the
same rows, so they equal `model.encode` / `model.score` whatever the blocks are. Sampled scores (nelbo, iwae,
ic) use the same estimators as vae_infer.anomaly.scores with noise keyed by (job seed, source, row)
(vae_infer.batch.noise), so they too are the same however the job is split."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ..anomaly import likelihood
from ..anomaly import scores as anomaly
from ..errors import ModelPackageError
from .noise import row_normals, source_key
from .options import BatchOptions

Columns = dict[str, np.ndarray]


def check_model_for(manifest, package, options: BatchOptions) -> None:
    """Refuse before any work what the model cannot compute: flag and the dose score need a calibrated model
    (an actor that fails in its constructor would be restarted by Ray again and again)."""
    needs = [what for what, needed in (("the flag output", "flag" in options.outputs),
                                       ("the dose score", "score" in options.outputs and options.kind == "dose"))
             if needed]
    if needs and not manifest.calibration:
        raise ModelPackageError(f"{package} is not calibrated, so {' and '.join(needs)} cannot be computed: run "
                                f"`vae-infer calibrate {package} --data SOURCE` first, or leave them out")


class ChunkComputer:
    """Output columns of one block of rows; holds the model and what the options ask for, nothing else."""

    def __init__(self, model, options: BatchOptions) -> None:
        self.model = model
        self.options = options
        self.flag: tuple[str, float, int] | None = None
        if "flag" in options.outputs:
            kind, limit = anomaly.threshold(model)  # the calibrated default kind and threshold, as detect uses
            samples = (model.manifest.calibration or {}).get("samples", {}).get(
                kind, anomaly.default_samples(kind))
            self.flag = (kind, limit, int(samples))

    def columns(self, block: np.ndarray, source: str, start: int | NDArray[np.integer]) -> Columns:
        """{"row", and each of the options' outputs} for rows [start, start + len(block)) of `source`, or for
        the given row indices when `start` is an array of them (sampled scores key their noise by these).
        Raises InputError for rows the model does not accept (wrong shape or dtype, NaN, out of range)."""
        x = self.model.as_images(block)  # (n, features) float32
        rows = (np.arange(int(start), int(start) + len(x), dtype=np.int64) if np.ndim(start) == 0
                else np.asarray(start, dtype=np.int64))
        mu, logvar = self.model.encode_rows(x)  # the narrow interface for validated rows
        out: Columns = {"row": rows}
        wanted = self.options.outputs
        if "mu" in wanted:
            out["mu"] = mu
        if "logvar" in wanted:
            out["logvar"] = logvar
        cache: dict[tuple[str, int], NDArray[np.float64]] = {}

        def scores(kind: str, samples: int) -> NDArray[np.float64]:
            if (kind, samples) not in cache:
                cache[kind, samples] = self._scores(kind, samples, x, mu, logvar, source, rows)
            return cache[kind, samples]

        if "score" in wanted:
            assert self.options.samples is not None, "BatchOptions fills samples when it is made"
            out["score"] = scores(self.options.kind, self.options.samples)
        if self.flag is not None:
            kind, limit, samples = self.flag
            out["flag"] = scores(kind, samples) > limit
        return out

    def _scores(self, kind: str, k: int, x, mu, logvar, source: str, rows) -> NDArray[np.float64]:
        if kind not in anomaly.STOCHASTIC_KINDS:
            return self.model.score(x, kind=kind)
        eps = row_normals(source_key(self.options.seed, source), rows, k, mu.shape[1])  # (n, k, latent)
        std = np.exp(0.5 * logvar)
        if kind == "iwae":  # Burda et al. 2016; the running logsumexp of vae_infer.anomaly.scores
            zeros = np.zeros_like(mu)
            running = np.full(len(x), -np.inf)
            for j in range(k):
                z = (mu + std * eps[:, j]).astype(np.float32)
                log_w = (-likelihood.bernoulli_nll(self.model.decode_logits(z), x)
                         + likelihood.log_normal(z, zeros, zeros) - likelihood.log_normal(z, mu, logvar))
                running = np.logaddexp(running, log_w)
            return -(running - math.log(k))
        recon = np.zeros(len(x))
        for j in range(k):
            z = (mu + std * eps[:, j]).astype(np.float32)
            recon += likelihood.bernoulli_nll(self.model.decode_logits(z), x)
        nelbo = recon / k + likelihood.kl_to_standard_normal(mu, logvar)
        if kind == "ic":  # Serra et al. 2020: -ELBO minus the PNG code length in nats
            return nelbo - math.log(2) * anomaly.png_bits(x, self.model.image_shape)
        return nelbo
