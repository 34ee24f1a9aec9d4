"""The negative ELBO: closed-form KL against Monte Carlo, torch against the runtime's numpy twin,
and the importance-weighted bound's ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.config import ModelConfig  # noqa: E402
from train.loss import bernoulli_nll, importance_weighted_nll, kl_to_standard_normal, negative_elbo  # noqa: E402
from train.model import VAE  # noqa: E402
from vae_infer.anomaly import likelihood  # noqa: E402


def test_closed_form_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.0, 0.0], [1.5, -0.5], [0.3, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 0.0], [-1.0, 0.5], [1.2, -2.0]], dtype=torch.float64)
    n = 400_000
    eps = torch.randn((n, *mu.shape), generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = -0.5 * (eps**2 + logvar + math.log(2 * math.pi)).sum(-1)
    log_p = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
    mc = (log_q - log_p).mean(0)
    closed = kl_to_standard_normal(mu, logvar)
    assert closed[0].item() == 0.0
    np.testing.assert_allclose(closed.numpy(), mc.numpy(), atol=0.01)


def test_loss_is_per_example_and_matches_the_textbook_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 784) * 3
    x = torch.rand(5, 784)
    mu, logvar = torch.randn(5, 2), torch.randn(5, 2)
    total, recon, kl = negative_elbo(logits, x, mu, logvar)
    assert total.shape == recon.shape == kl.shape == (5,)
    p = torch.sigmoid(logits.double())
    textbook = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)
    np.testing.assert_allclose(recon.numpy(), textbook.numpy(), rtol=1e-5)
    np.testing.assert_allclose(total.numpy(), (recon + kl).numpy(), rtol=1e-6)
    beta_total, _, _ = negative_elbo(logits, x, mu, logvar, beta=0.5)
    np.testing.assert_allclose(beta_total.numpy(), (recon + 0.5 * kl).numpy(), rtol=1e-6)


def test_torch_and_numpy_twins_agree():
    torch.manual_seed(1)
    logits = torch.randn(7, 784) * 20  # well into saturation
    x = torch.rand(7, 784)
    mu, logvar = torch.randn(7, 2), torch.randn(7, 2)
    np.testing.assert_allclose(
        bernoulli_nll(logits, x).numpy(), likelihood.bernoulli_nll(logits.numpy(), x.numpy()), rtol=1e-5
    )
    np.testing.assert_allclose(
        kl_to_standard_normal(mu, logvar).numpy(), likelihood.kl_to_standard_normal(mu.numpy(), logvar.numpy()),
        rtol=1e-5,
    )


@pytest.mark.slow
def test_importance_weighted_bound_is_tighter_than_elbo_and_tightens_with_k(tiny_images):
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden_size=32)).eval()
    x = torch.from_numpy(tiny_images.reshape(32, 784).astype(np.float32) / 255)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        elbo_runs = []
        for _ in range(20):
            logits, mu, logvar = model(x, g)
            elbo_runs.append(negative_elbo(logits, x, mu, logvar)[0].mean().item())
        nelbo = float(np.mean(elbo_runs))
        iw = {k: importance_weighted_nll(model, x, k, torch.Generator().manual_seed(1)).mean().item()
              for k in (1, 10, 100)}
    assert iw[1] == pytest.approx(nelbo, rel=0.01)
    assert iw[100] < iw[10] < nelbo
