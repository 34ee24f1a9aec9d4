"""vae-infer bench: throughput and latency of a model package on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import bench
from ..atomic import atomic_write_bytes
from ..data import arrays
from ..errors import InputError
from ..sessions import DEVICES
from .base import check_png, echo, main, status_note


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,64,256, got {value!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return values


def _suffix(*suffixes: str):
    def check(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        return None if value is None else arrays.check_output(value, suffixes)

    return check


def _names(allowed: tuple[str, ...]):
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise click.BadParameter(f"expected some of {', '.join(allowed)}, got {value!r}")
        return names

    return parse


@main.command(name="bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,64,256,4096", show_default=True, callback=_int_list,
              help="Comma-separated batch sizes.")
@click.option("--threads", default="1", show_default=True, callback=_int_list,
              help="Comma-separated intra-op thread counts, each benchmarked in turn.")
@click.option("--device", "devices", default="cpu", show_default=True, callback=_names(DEVICES),
              help="Comma-separated devices (cpu, cuda, auto).")
@click.option("--variant", "variants", default="fp32", show_default=True,
              help="Comma-separated variants: fp32 and those the package lists (int8, fp16, ort).")
@click.option("--operations", default=",".join(bench.OPERATIONS), show_default=True,
              callback=_names(bench.OPERATIONS), help="Comma-separated operations.")
@click.option("--seconds", type=click.FloatRange(min=0.0), default=bench.MIN_SECONDS, show_default=True,
              help="Minimum timed seconds per operation and batch size.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), callback=_suffix(".json"), metavar="OUT.json",
              help="Write the full report (results and environment) as JSON.")
@click.option("--markdown", type=click.Path(path_type=Path), callback=_suffix(".md"), metavar="OUT.md",
              help="Write the table as markdown.")
@click.option("--plot", type=click.Path(path_type=Path), callback=check_png, metavar="OUT.png",
              help="Draw throughput against batch size (needs the viz extra).")
def bench_command(model, batch_sizes, threads, devices, variants, operations, seconds, json_out, markdown,
                  plot) -> None:
    """Measure throughput (examples/s) and latency (p50, p90, p99) of encode, decode and reconstruct.

    Every combination of --device, --variant and --threads is loaded (load time recorded apart) and timed
    at each batch size after warm-up. Prints a markdown table; the machine and library versions go into
    the JSON report beside the numbers."""
    names = [None if v == "fp32" else v for v in (s.strip() for s in variants.split(",")) if v]
    if not names:
        raise InputError(f"--variant: expected fp32 or variant names, got {variants!r}")
    report = bench.run_benchmark(model, batch_sizes, threads, devices, names, operations, seconds,
                                 progress=lambda text: status_note(f"benchmarking {text}"))
    table = bench.to_markdown(report)
    echo(table, nl=False, lines=True)
    if json_out:
        atomic_write_bytes(json_out, (json.dumps(report, indent=1) + "\n").encode())
    if markdown:
        atomic_write_bytes(markdown, table.encode())
    if plot:
        bench.plot(report, plot)

