"""The latent graph and interpolation: linear, slerp and graph paths, the index, its search, refinement, realism."""

from .paths import *  # noqa: F403  (the public names of vae_infer.interpolation before it became a package)
