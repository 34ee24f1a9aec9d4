"""vae-infer, the command line of the runtime: one click group, commands in one file per feature."""

from . import (  # noqa: F401  (registers the commands on main)
    anomaly_commands,
    batch_commands,
    bench_commands,
    interpolate_commands,
    model_commands,
    native_commands,
    serve_commands,
)
from .base import main

__all__ = ["main"]
