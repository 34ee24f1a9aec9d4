"""The course's VAE in torch: encoder x -> (mu, logvar), reparameterization, decoder z -> logits."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class Encoder(nn.Module):
    """q(z|x): one hidden ReLU layer, then two linear heads for the mean and the log-variance."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden = nn.Linear(config.input_size, config.hidden_size)
        self.mu = nn.Linear(config.hidden_size, config.latent_size)
        self.logvar = nn.Linear(config.hidden_size, config.latent_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.hidden(x))  # (n, hidden)
        return self.mu(h), self.logvar(h)  # (n, latent) each


class DecoderLogits(nn.Module):
    """p(x|z) as Bernoulli logits: training computes the loss from logits, which is stable where
    sigmoid saturates."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden = nn.Linear(config.latent_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.input_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(z)))  # (n, input)


class Decoder(nn.Module):
    """The exported decoder: z -> (x_hat, logits). x_hat = sigmoid(logits) is the image; the logits
    let the runtime score likelihoods without log(0)."""

    def __init__(self, logits: DecoderLogits) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(z)
        return torch.sigmoid(logits), logits


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = DecoderLogits(config)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (decoder logits, mu, logvar) for x (n, input) with one reparameterized sample."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, generator)
        return self.decoder(z), mu, logvar


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): the sample is differentiable in mu and logvar (Kingma & Welling, 2014)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps
