"""Noise for training a denoising VAE: the model sees a corrupted input and is scored on the clean image.

The noise spec is the runtime's (vae_infer.anomaly.corruptions.parse_noise), so training and the benchmarks name
noise the same way: `gaussian:0.2`, `salt-pepper:0.1`, ranges `gaussian:0-0.3`, and several kinds joined
by commas (each example gets one of them at random). The draws come from the training loop's seeded
generator, so a run with noise is as reproducible and resumable as one without.
"""

from __future__ import annotations

import torch

from vae_infer.anomaly.corruptions import NOISE_KINDS, NoiseItem, parse_noise

__all__ = ["NOISE_KINDS", "NoiseItem", "parse_noise", "add_noise"]


def add_noise(x: torch.Tensor, noise: str | tuple[NoiseItem, ...], generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """A corrupted copy of the batch x (n, features) in [0, 1]: per example, one of the spec's kinds at random,
    its level uniform in the kind's range. Gaussian: x + level * N(0, 1), clipped to [0, 1]. Salt-and-pepper:
    each pixel, with probability level, set to 0 or 1 (even odds)."""
    items = parse_noise(noise) if isinstance(noise, str) else noise
    n = x.shape[0]
    if len(items) > 1:
        which = torch.randint(len(items), (n,), generator=generator)
    else:
        which = torch.zeros(n, dtype=torch.long)
    out = x.clone()
    for i, item in enumerate(items):
        rows = torch.nonzero(which == i)[:, 0]
        if rows.numel() == 0:
            continue
        xb = x[rows]
        level = item.low + (item.high - item.low) * torch.rand((len(rows), 1), generator=generator, dtype=x.dtype)
        if item.kind == "gaussian":
            noisy = (xb + level * torch.randn(xb.shape, generator=generator, dtype=x.dtype)).clamp(0.0, 1.0)
        else:
            hit = torch.rand(xb.shape, generator=generator, dtype=x.dtype) < level
            salt = (torch.rand(xb.shape, generator=generator, dtype=x.dtype) < 0.5).to(x.dtype)
            noisy = torch.where(hit, salt, xb)
        out[rows] = noisy
    return out
