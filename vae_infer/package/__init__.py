"""The model package on disk: the manifest (model.json), its sections, verified reads and atomic writes."""

from .files import *  # noqa: F403  (the public names of vae_infer.package before it became a package)
