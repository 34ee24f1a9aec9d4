"""The native command: export-c (the model package as a dependency-free C99 library for a target)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import echo, echo_json, json_option, main

CHECK_IMAGES = 50  # images --check runs the example program on
TARGET_NAMES = ("x86_64", "aarch64-linux", "armv7-linux", "cortex-m4")  # vae_infer.native.targets.TARGETS


@main.command("export-c")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="Folder for vae.h, vae.c, main.c, Makefile and memory.py (cortex-m4: also startup.c and "
                   "link.ld.in); created if missing, those files are replaced.")
@click.option("--target", default="x86_64", show_default=True, metavar="TARGET",
              help=f"The machine the code is for: {', '.join(TARGET_NAMES)}.")
@click.option("--weights", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="Weight storage: fp32 (exact), fp16 (half the size), int8 (a quarter: per-row and per-input "
                   "scales, inputs quantized to uint8 per row, integer dot products).")
@click.option("--flash", default=None, metavar="BYTES",
              help="cortex-m4: flash available (e.g. 1M); a model that does not fit is refused.  [default: the "
                   "board's 4M]")
@click.option("--ram", default=None, metavar="BYTES",
              help="cortex-m4: RAM available (e.g. 64K); `make` fails when the build needs more.  [default: 4M]")
@click.option("--prefix", default="vae", show_default=True, metavar="NAME",
              help="Name of the files and the C functions (NAME_encode, NAME_decode, NAME.h).")
@click.option("--block", type=click.IntRange(min=1), default=None, metavar="N",
              help="Outputs per weight block: 64 for SIMD CPUs; 1 gives plain dot products, best for scalar "
                   "microcontrollers.  [default: the target's]")
@click.option("--rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Default rows per tile (VAE_ROWS).  [default: the target's; x86_64: 6 with AVX-512, else 1]")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Also build with -std=c99 -Wall -Wextra -Werror -pedantic, run the example program (under qemu "
                   "for the Arm targets) on 50 images (those the package carries, or --check-data) and compare "
                   "with numpy (same weights) and onnxruntime; prints a verdict with its tolerances.")
@click.option("--check-data", default=None, metavar="SOURCE",
              help="With --check: the images to check with (a source spec; its test split).  [default: the "
                   "images the package carries (stored by vae-infer calibrate), else Fashion-MNIST test images for "
                   "a 28x28 model when installed, else random images of the model's size]")
@json_option
def export_c(model: Path, out_dir: Path, target: str, weights: str, flash: str | None, ram: str | None, prefix: str,
             block: int | None, rows: int | None, check: bool, check_data: str | None, as_json: bool) -> None:
    """Export a model package as plain C99 for a target: vae.h, vae.c (the weights as const arrays), an
    example main.c, a Makefile (the target's compiler and flags) and memory.py.

    The code is generated from the ONNX graphs themselves: no dynamic allocation, no global mutable state
    (reentrant), only libm. int vae_encode(const float *x, float *mu, float *logvar, int n) and
    vae_decode(const float *z, float *x_hat, float *logits, int n) return 0 or a negative error code.
    `make -C DIR` builds the example (vae_example, or vae_example.elf for cortex-m4) and memory.json;
    `make -C DIR check` runs it against onnxruntime."""
    from ..native.export import export_c as export

    result = export(model, out_dir, weights=weights, prefix=prefix, block=block, rows=rows, target=target,
                    flash=flash, ram=ram)
    report, what = None, ""
    if check:
        from ..native.check import check_export, check_images, format_report
        from ..package.files import read_manifest

        images, what = check_images(CHECK_IMAGES, read_manifest(model).image_shape, check_data, package=model)
        report = check_export(model, out_dir, weights=weights, prefix=prefix, images=images, n=CHECK_IMAGES,
                              target=target)
    if as_json:
        echo_json({"out": str(out_dir), "target": result.target, "files": [str(f) for f in result.files],
                   "weights": weights, "weight_bytes": result.weight_bytes, "functions": result.functions,
                   "sha256": result.digests, "flash_bytes": result.flash_bytes, "ram_bytes": result.ram_bytes,
                   "check": report})
        return
    echo(f"wrote {', '.join(f.name for f in result.files)} to {out_dir} for {result.target} "
               f"({weights} weights, {result.weight_bytes:,} bytes of tables)")
    for signature in result.functions.values():
        echo(f"  {signature};")
    if report is not None:
        echo(format_report(report, what), lines=True)
    echo(f"build: make -C {out_dir}")
