"""Batch jobs: stream files of any size through encode and score into a folder of result parts.

The engine-independent core (vae_infer.batch.core) turns a block of rows into output columns; the local
engine (vae_infer.batch.local) and Ray Data (vae_infer.ray) only move blocks. See docs/batch.md."""

from .options import FORMATS, OUTPUTS, BatchOptions, parse_outputs
from .parts import iter_results, read_results
from .run import ENGINES, BatchSummary, run_batch

__all__ = ["run_batch", "BatchOptions", "BatchSummary", "read_results", "iter_results", "OUTPUTS", "FORMATS",
           "ENGINES", "parse_outputs"]
