"""The batch command: stream files of any size through encode and score into a folder of result parts."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..anomaly.scores import SCORE_KINDS
from ..batch import ENGINES, FORMATS, OUTPUTS, BatchOptions, parse_outputs, run_batch
from ..batch.options import CHUNK_ROWS, PART_ROWS
from ..batch.parts import RAY_LOG
from ..batch.ray_uris import is_uri, run_uris
from ..errors import InputError
from .base import echo, echo_json, json_option, main, stderr_is_terminal


def _outputs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    outputs = parse_outputs(value)
    unknown = [o for o in outputs if o not in OUTPUTS]
    if not outputs or unknown:
        raise click.BadParameter(f"expected a comma-separated selection of {', '.join(OUTPUTS)}, got {value!r}")
    return outputs


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option("--out", required=True, metavar="DIR",
              help="Folder of result parts, _job.json and _failures.jsonl; a re-run with the same job resumes.")
@click.option("--outputs", default="mu,logvar", show_default=True, callback=_outputs, metavar="LIST",
              help=f"Columns besides source and row, from {','.join(OUTPUTS)} (flag needs a calibrated model).")
@click.option("--kind", type=click.Choice(SCORE_KINDS), default="nelbo", show_default=True,
              help="The kind of the score column (as `vae-infer score --kind`).")
@click.option("--samples", type=click.IntRange(min=1), default=None, metavar="K",
              help="Draws of z per row for nelbo and ic, k for iwae.  [default: 64 for iwae, else 1]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S",
              help="The job's seed: sampled scores draw their noise from (seed, source, row).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: this machine's processes; ray: Ray Data (needs the ray extra).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Local worker processes (each with cores/N threads); with --engine ray, the actors.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="onnxruntime threads per worker.  [default: cores/workers]")
@click.option("--address", default=None, metavar="ADDR",
              help="An existing Ray cluster (auto, ray://HOST:10001, HOST:6379); inputs must be readable on every "
                   "node. Without it a local Ray is started and stopped.")
@click.option("--num-cpus", type=click.FloatRange(min=0.01), default=None, metavar="C",
              help="CPUs Ray reserves per actor (fractions allowed).  [default: 1, or less when the actors would "
                   "take every CPU]")
@click.option("--skip-bad", is_flag=True, help="Record bad inputs in _failures.jsonl and go on, instead of stopping.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="parquet", show_default=True,
              help="Parts as Parquet (needs pyarrow: the parquet extra) or .npz (small jobs).")
@click.option("--part-rows", type=click.IntRange(min=1), default=PART_ROWS, show_default=True, metavar="N",
              help="Rows per output part.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=CHUNK_ROWS, show_default=True, metavar="N",
              help="Rows per task (one model call); does not change the results.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="With --engine ray: give up when the job has not finished by then.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True,
              help="With --engine ray: show Ray's own log lines (else they go to DIR/_ray.log).")
@json_option
def batch(model: Path, inputs: tuple[str, ...], out: str | Path, outputs: tuple[str, ...], kind: str,
          samples: int | None, seed: int, engine: str, workers: int, threads: int | None, address: str | None,
          num_cpus: float | None, skip_bad: bool, fmt: str, part_rows: int, chunk_rows: int, timeout_s: float | None,
          quiet: bool, verbose: bool, as_json: bool) -> None:
    """Run MODEL over INPUTS (files or quoted globs: .npy, FILE.npz[:KEY], IDX, FILE.parquet:COLUMN, PNG folders)
    and write one row per input row (source, row, and --outputs) into Parquet parts in --out.

    With --engine ray, INPUTS may instead be URIs Ray Data reads (s3://.../x.npy, FILE.parquet:COLUMN): the
    workers read and write them (deterministic outputs only, no resume).

    Inputs are read by row ranges and never loaded whole, so any size streams through in bounded memory.
    The results do not depend on --engine, --workers or --chunk-rows."""
    if address and engine != "ray":
        raise InputError("--address names a Ray cluster: add --engine ray")
    options = BatchOptions(outputs=outputs, kind=kind, samples=samples, seed=seed, format=fmt, part_rows=part_rows)
    if any(is_uri(i) for i in inputs):
        if engine != "ray" or not all(is_uri(i) for i in inputs):
            raise InputError("URIs (s3://, gs://, file://) are read by Ray Data on the workers: pass --engine ray, "
                             "and only URIs")
        result = run_uris(model, inputs, str(out), options, address=address, concurrency=workers, num_cpus=num_cpus,
                          threads=threads, timeout_s=timeout_s, log=None if verbose else os.devnull)
        if as_json:
            echo_json(result)
        else:
            echo(f"wrote Ray Data's Parquet files to {out} in {result['seconds']:.1f} s (no _job.json: "
                       f"a job over URIs does not resume)")
        return
    out = Path(out)
    ray_options = {"address": address, "concurrency": workers, "num_cpus": num_cpus, "threads": threads,
                   "timeout_s": timeout_s, "log": None if verbose else out / RAY_LOG}
    summary = run_batch(model, list(inputs), out, options, engine=engine, workers=workers, threads=threads,
                        chunk_rows=chunk_rows, skip_bad=skip_bad, progress=not quiet and not as_json and
                        stderr_is_terminal(), ray_options=ray_options if engine == "ray" else None)
    if as_json:
        echo_json(summary.to_dict())
        return
    reused = f", {summary.parts_reused} reused from an earlier run" if summary.parts_reused else ""
    echo(f"{summary.rows} rows in {out}: {summary.parts_written} part(s) written{reused}, "
               f"{summary.rows_computed} rows computed in {summary.seconds:.1f} s")
    if summary.failures:
        echo(f"{len(summary.failures)} input(s) or range(s) skipped: see {out / '_failures.jsonl'}", err=True)
