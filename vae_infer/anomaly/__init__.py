"""Anomaly scores and the likelihood they come from; calibration, detection, denoising."""

from .scores import *  # noqa: F403  (the public names of vae_infer.anomaly before it became a package)
