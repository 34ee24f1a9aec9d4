"""vae-infer: the command line of the runtime. Parsing and printing only; the work is vae_infer's API."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from .. import __version__, arrays
from ..errors import VaeInferError
from ..model import VAEModel, load
from ..sessions import DEVICES

PNG_MAX = 64  # images shown in a --png grid of samples or decoded codes
PNG_PAIRS = 16  # originals shown (above their reconstructions) in a reconstruct --png grid


class _Group(click.Group):
    """The one place where the library's errors become a one-line `Error: ...` and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VaeInferError as e:
            raise click.ClickException(_one_line(str(e))) from e
        except OSError as e:
            if e.errno == errno.EPIPE:  # click handles a closed stdout (| head) itself
                raise
            text = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
            raise click.ClickException(_one_line(text)) from e


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or "failed"


@click.group(cls=_Group, name="vae-infer", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vae-infer")
def main() -> None:
    """Run a variational autoencoder model package (model.json + ONNX graphs) without torch:
    show it, encode images to latent codes, decode codes, reconstruct, sample and score images.

    Images are .npy/.npz arrays shaped (n, height, width) or (n, height*width), uint8 0..255 or
    floats in [0, 1], or one .png image; FILE.npz:KEY picks one array of an .npz file."""


# -- shared options and helpers ----------------------------------------------------------------------


def model_options(fn: Callable) -> Callable:
    fn = click.option(
        "--threads", type=click.IntRange(min=1), default=None, metavar="N",
        help="onnxruntime intra-op threads.  [default: the cores this process may use]",
    )(fn)
    fn = click.option(
        "--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
        help="Where to run: cuda fails unless CUDA is really used; auto uses CUDA when available.",
    )(fn)
    return click.argument("model", type=click.Path(path_type=Path))(fn)


def check_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse a bad output path while parsing, before any work is done."""
    return None if value is None else arrays.check_output(value)


def check_png(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    return None if value is None else arrays.check_output(value, (".png",))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout (for scripts).")
png_option = click.option(
    "--png", type=click.Path(path_type=Path), callback=check_png, metavar="GRID.png",
    help=f"Also save a picture grid of the first {PNG_MAX} images (needs the viz extra: matplotlib).",
)


def open_model(model: Path, device: str, threads: int | None) -> VAEModel:
    return load(model, device=device, threads=threads)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def status_note(text: str, quiet: bool = False) -> None:
    """A note on stderr for long work, only where a person is watching."""
    if not quiet and stderr_is_terminal():
        click.echo(text, err=True)


def in_chunks(model: VAEModel, fn: Callable, x: np.ndarray, label: str, quiet: bool = False) -> Any:
    """fn(x), run chunk by chunk with a progress bar on stderr when stderr is a terminal. The chunks are the
    model's own, so the results are identical to one fn(x) call."""
    step = model.chunk_size
    if quiet or len(x) <= step or not stderr_is_terminal():
        return fn(x)
    parts = []
    with click.progressbar(length=len(x), label=label, file=sys.stderr) as bar:
        for start in range(0, len(x), step):
            parts.append(fn(x[start : start + step]))
            bar.update(min(step, len(x) - start))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return np.concatenate(parts)


def save_grid(images: np.ndarray, model: VAEModel, path: Path, ncols: int | None = None,
              title: str | None = None) -> None:
    from ..viz import save_image_grid

    save_image_grid(images, model.image_shape, path, ncols=ncols, title=title)


def echo_json(obj: dict) -> None:
    click.echo(json.dumps(obj, indent=2))


def shape_text(a: np.ndarray) -> str:
    return " x ".join(str(s) for s in a.shape)


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return str(v)


# -- commands ----------------------------------------------------------------------------------------


