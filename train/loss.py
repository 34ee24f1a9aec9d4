"""The per-example negative ELBO, the one training objective and test figure (nats per example).

The numpy twin used by the runtime is vae_infer/anomaly/likelihood.py; tests hold the two to the same values."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import VAE


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, closed form (Kingma & Welling 2014, Appendix B)."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)  # (n,)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) for Bernoulli pixels with means sigmoid(logits), summed over pixels, per example.
    binary_cross_entropy_with_logits is the stable form: it never takes log(0)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)  # (n,)


def negative_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(recon + beta * kl, recon, kl), each (n,). beta = 1 gives the true negative ELBO."""
    recon = bernoulli_nll(logits, x)
    kl = kl_to_standard_normal(mu, logvar)
    return recon + beta * kl, recon, kl


@torch.no_grad()
def importance_weighted_nll(
    model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """-log p(x) estimated with k importance samples from q(z|x) (Burda et al. 2016), per example.
    It is an upper bound on -log p(x) that tightens as k grows; k = 1 gives the negative ELBO in expectation."""
    mu, logvar = model.encoder(x)  # (n, d)
    std = torch.exp(0.5 * logvar)
    log_w = []
    for _ in range(k):
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + std * eps
        log_px_z = -bernoulli_nll(model.decoder(z), x)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(dim=1)
        log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(dim=1)
        log_w.append(log_px_z + log_pz - log_qz)
    return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k))  # (n,)
