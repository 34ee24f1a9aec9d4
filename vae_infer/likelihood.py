"""Per-example scores in nats, in numpy: the runtime's twin of train/loss.py (tests hold them equal)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]
LOG_2PI = math.log(2 * math.pi)


def bernoulli_nll(logits: Array, x: Array) -> NDArray[np.float64]:
    """-log p(x|z) summed over pixels, per example, from logits: max(l, 0) - l*x + log(1 + exp(-|l|)),
    the form that never takes log(0) where sigmoid saturates."""
    logits = logits.astype(np.float64)
    per_pixel = np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))  # (n, features)
    return per_pixel.sum(axis=1)  # (n,)


def kl_to_standard_normal(mu: Array, logvar: Array) -> NDArray[np.float64]:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, closed form (Kingma & Welling 2014, Appendix B)."""
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * np.sum(mu**2 + np.exp(logvar) - 1.0 - logvar, axis=1)  # (n,)


def log_normal(z: NDArray, mu: NDArray, logvar: NDArray) -> NDArray[np.float64]:
    """log N(z; mu, diag(exp(logvar))) summed over latent dimensions, per example."""
    return -0.5 * np.sum((z - mu) ** 2 / np.exp(logvar) + logvar + LOG_2PI, axis=-1)


def logmeanexp(a: NDArray, axis: int = 0) -> NDArray[np.float64]:
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.mean(np.exp(a - m), axis=axis))
