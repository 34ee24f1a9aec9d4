"""Per-example scores in nats, in numpy: the runtime's twin of train/loss.py (tests hold them equal), and the
Monte-Carlo and importance-weighted estimators, defined once. The estimators take the decoder as a function
from latent codes to logits, so this module knows nothing of sessions or models: VAEModel.score and the
anomaly scores both call them."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]
Scores = NDArray[np.float64]
DecodeLogits = Callable[[Array], Array]  # (n, latent) float32 codes -> (n, features) logits
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


def draw(mu: Array, std: Array, rng: np.random.Generator) -> Array:
    """One reparameterized draw z = mu + std * eps, eps ~ N(0, I) (Kingma & Welling 2014, section 2.4)."""
    return (mu + std * rng.standard_normal(mu.shape, dtype=np.float32)).astype(np.float32)


def expected_nll(decode_logits: DecodeLogits, x: Array, mu: Array, logvar: Array, k: int,
                 rng: np.random.Generator) -> Scores:
    """E_q[-log p(x|z)] per example, by k reparameterized draws of z (the reconstruction term of the ELBO)."""
    std = np.exp(0.5 * logvar)
    total = np.zeros(len(x))
    for _ in range(k):
        total += bernoulli_nll(decode_logits(draw(mu, std, rng)), x)
    return total / k


def importance_weighted_nll(decode_logits: DecodeLogits, x: Array, mu: Array, logvar: Array, k: int,
                            rng: np.random.Generator) -> Scores:
    """-log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x) (Burda et al. 2016, eq. 8): a bound on
    -log p(x) that tightens as k grows. Accumulated as a running logsumexp, one draw at a time."""
    std = np.exp(0.5 * logvar)
    zeros = np.zeros_like(mu)
    running = np.full(len(x), -np.inf)
    for _ in range(k):
        z = draw(mu, std, rng)
        log_w = -bernoulli_nll(decode_logits(z), x) + log_normal(z, zeros, zeros) - log_normal(z, mu, logvar)
        running = np.logaddexp(running, log_w)
    return -(running - math.log(k))
