"""The native command: export-c (the model package as a dependency-free C99 library)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import echo_json, json_option, main


@main.command("export-c")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="Folder for vae.h, vae.c, main.c and Makefile (created if missing; those files are replaced).")
@click.option("--weights", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Weight storage: fp32 (exact), fp16 (half the size), int8 (a quarter: per-row and per-input "
                   "scales, inputs quantized to uint8 per row, integer dot products).")
@click.option("--prefix", default="vae", show_default=True, metavar="NAME",
              help="Name of the files and the C functions (NAME_encode, NAME_decode, NAME.h).")
@click.option("--block", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
              help="Outputs per weight block: 64 for SIMD CPUs; 1 gives plain dot products, best for scalar "
                   "microcontrollers.")
@click.option("--rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Default rows per tile (VAE_ROWS).  [default: 6 with AVX-512, else 1]")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Also compile with -std=c99 -Wall -Wextra -Werror -pedantic (gcc, and clang when present), run "
                   "the example program and compare with numpy (same weights) and onnxruntime.")
@json_option
def export_c(model: Path, out_dir: Path, weights: str, prefix: str, block: int, rows: int | None, check: bool,
             as_json: bool) -> None:
    """Export a model package as plain C99: vae.h, vae.c (the weights as const arrays), an example main.c
    and a Makefile.

    The code is generated from the ONNX graphs themselves: no dynamic allocation, no global mutable state
    (reentrant), only libm. int vae_encode(const float *x, float *mu, float *logvar, int n) and
    vae_decode(const float *z, float *x_hat, float *logits, int n) return 0 or a negative error code.
    Build with `make` in DIR; `make ARCH="-march=native -mprefer-vector-width=512"` for this CPU."""
    from ..native import export_c as export

    result = export(model, out_dir, weights=weights, prefix=prefix, block=block, rows=rows)
    report = None
    if check:
        from ..native.check import check_export

        report = check_export(model, out_dir, weights=weights, prefix=prefix)
    if as_json:
        echo_json({"out": str(out_dir), "files": [str(f) for f in result.files], "weights": weights,
                   "weight_bytes": result.weight_bytes, "functions": result.functions, "sha256": result.digests,
                   "check": report})
        return
    click.echo(f"wrote {', '.join(f.name for f in result.files)} to {out_dir} "
               f"({weights} weights, {result.weight_bytes:,} bytes of tables)")
    for signature in result.functions.values():
        click.echo(f"  {signature};")
    if report is not None:
        ref = ", ".join(f"{k} {v:.2g}" for k, v in report["vs_reference"].items())
        ort = ", ".join(f"{k} {v:.2g}" for k, v in report["vs_onnxruntime"].items())
        click.echo(f"checked with {' and '.join(report['compilers'])} (-std=c99 -Wall -Wextra -Werror -pedantic), "
                   f"example program on {report['rows']} random images:")
        click.echo(f"  vs numpy with the same {weights} weights (relative): {ref}")
        click.echo(f"  vs onnxruntime (logits relative): {ort}")
    click.echo(f"build: make -C {out_dir}")
