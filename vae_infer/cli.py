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

from . import __version__, io
from .errors import VaeInferError
from .inputs import as_latents
from .model import VAEModel, load
from .sessions import DEVICES

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


def _model_options(fn: Callable) -> Callable:
    fn = click.option(
        "--threads", type=click.IntRange(min=1), default=None, metavar="N",
        help="onnxruntime intra-op threads.  [default: the cores this process may use]",
    )(fn)
    fn = click.option(
        "--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
        help="Where to run: cuda fails unless CUDA is really used; auto uses CUDA when available.",
    )(fn)
    return click.argument("model", type=click.Path(path_type=Path))(fn)


def _check_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse a bad output path while parsing, before any work is done."""
    return None if value is None else io.check_output(value)


def _check_png(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    return None if value is None else io.check_output(value, (".png",))


_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout (for scripts).")
_png_option = click.option(
    "--png", type=click.Path(path_type=Path), callback=_check_png, metavar="GRID.png",
    help=f"Also save a picture grid of the first {PNG_MAX} images (needs the viz extra: matplotlib).",
)


def _open(model: Path, device: str, threads: int | None) -> VAEModel:
    return load(model, device=device, threads=threads)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _status(text: str, quiet: bool = False) -> None:
    """A note on stderr for long work, only where a person is watching."""
    if not quiet and _stderr_is_terminal():
        click.echo(text, err=True)


def _in_chunks(model: VAEModel, fn: Callable, x: np.ndarray, label: str, quiet: bool = False) -> Any:
    """fn(x), run chunk by chunk with a progress bar on stderr when stderr is a terminal. The chunks are the
    model's own, so the results are identical to one fn(x) call."""
    step = model.chunk_size
    if quiet or len(x) <= step or not _stderr_is_terminal():
        return fn(x)
    parts = []
    with click.progressbar(length=len(x), label=label, file=sys.stderr) as bar:
        for start in range(0, len(x), step):
            parts.append(fn(x[start : start + step]))
            bar.update(min(step, len(x) - start))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return np.concatenate(parts)


def _grid(images: np.ndarray, model: VAEModel, path: Path, ncols: int | None = None, title: str | None = None) -> None:
    from .viz import save_image_grid

    save_image_grid(images, model.image_shape, path, ncols=ncols, title=title)


def _echo_json(obj: dict) -> None:
    click.echo(json.dumps(obj, indent=2))


def _shape(a: np.ndarray) -> str:
    return " x ".join(str(s) for s in a.shape)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return json.dumps(v)
    return str(v)


# -- commands ----------------------------------------------------------------------------------------


@main.command()
@_model_options
@_json_option
def info(model: Path, device: str, threads: int | None, as_json: bool) -> None:
    """Describe a model package and verify its files.

    Prints the name, image shape, latent size, likelihood, ONNX opset, the training figures recorded in
    model.json, the sha256 of every file (all verified while loading) and the device and onnxruntime
    providers in use."""
    m = _open(model, device, threads)
    man = m.manifest
    if as_json:
        _echo_json({
            "name": man.name, "path": str(model), "format_version": man.format_version,
            "image_shape": list(man.image_shape), "features": man.features, "latent_size": man.latent_size,
            "hidden_size": man.hidden_size, "likelihood": man.likelihood, "input_scale": man.input_scale,
            "opset": man.opset, "training": man.training, "tools": man.tools, "files": dict(sorted(man.files.items())),
            "device": m.device, "providers": m.providers,
        })
        return
    h, w = man.image_shape
    providers = "; ".join(f"{role}: {', '.join(p)}" for role, p in m.providers.items())
    rows = [
        ("name", man.name), ("path", str(model)), ("image shape", f"{h} x {w} ({man.features} features)"),
        ("latent size", man.latent_size), ("hidden size", man.hidden_size), ("likelihood", man.likelihood),
        ("opset", man.opset), ("device", f"{m.device} ({providers})"),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<13} {v}")
    click.echo("files (sha256, verified):")
    for name, digest in sorted(man.files.items()):
        click.echo(f"  {name}  {digest}")
    if man.training:
        click.echo("training:")
        for k, v in _flatten(man.training):
            click.echo(f"  {k}: {_fmt(v)}")


@main.command()
@_model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=_check_out, metavar="OUT.npz",
              help="Where to write: .npz gets arrays mu and logvar; .npy gets mu only.")
@_json_option
def encode(model: Path, input: Path, out: Path, device: str, threads: int | None, as_json: bool) -> None:
    """Encode images to latent codes: mu and logvar of q(z|x).

    Reads the images in INPUT and writes mu and logvar, each (n, latent size) float32, to --out."""
    m = _open(model, device, threads)
    x = m.as_images(io.read_images(input, m.image_shape))
    mu, logvar = _in_chunks(m, m.encode, x, "encoding", quiet=as_json)
    npz = out.suffix.lower() == ".npz"
    io.write_array(out, {"mu": mu, "logvar": logvar} if npz else mu)
    keys = ["mu", "logvar"] if npz else ["mu"]
    if as_json:
        _echo_json({"out": str(out), "arrays": keys, "n": len(mu), "latent_size": m.latent_size})
    else:
        click.echo(f"wrote {' and '.join(keys)} ({_shape(mu)}) to {out}")


@main.command()
@_model_options
@click.argument("latents", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=_check_out, metavar="OUT.npy",
              help="Where to write the images, (n, height*width) float32 in [0, 1] (.npy, or .npz key images).")
@_png_option
def decode(model: Path, latents: Path, out: Path, png: Path | None, device: str, threads: int | None) -> None:
    """Decode latent codes to images.

    Reads the codes in LATENTS ((n, latent size), .npy or .npz; FILE.npz:KEY picks one array) and writes
    the decoded images (the Bernoulli means) to --out."""
    m = _open(model, device, threads)
    z = as_latents(io.read_latents(latents), m.latent_size)
    images = _in_chunks(m, m.decode, z, "decoding")
    io.write_array(out, {"images": images})
    click.echo(f"wrote {len(images)} decoded images ({_shape(images)}) to {out}")
    if png is not None:
        _grid(images[:PNG_MAX], m, png)
        click.echo(f"wrote {png}")


@main.command()
@_model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=_check_out, metavar="OUT.npy",
              help="Where to write the reconstructions, (n, height*width) float32 in [0, 1] (.npy, or .npz key "
                   "images).")
@click.option("--png", type=click.Path(path_type=Path), callback=_check_png, metavar="GRID.png",
              help=f"Also save a picture: the first {PNG_PAIRS} originals above their reconstructions "
                   f"(needs the viz extra: matplotlib).")
def reconstruct(model: Path, input: Path, out: Path, png: Path | None, device: str, threads: int | None) -> None:
    """Reconstruct images: encode, then decode mu.

    Reads the images in INPUT and writes decode(mu), the deterministic reconstruction, to --out."""
    m = _open(model, device, threads)
    x = m.as_images(io.read_images(input, m.image_shape))
    recon = _in_chunks(m, m.reconstruct, x, "reconstructing")
    io.write_array(out, {"images": recon})
    click.echo(f"wrote {len(recon)} reconstructions ({_shape(recon)}) to {out}")
    if png is not None:
        k = min(len(x), PNG_PAIRS)
        _grid(np.concatenate([x[:k], recon[:k]]), m, png, ncols=k,
              title="originals (top) and reconstructions (bottom)")
        click.echo(f"wrote {png}")


@main.command()
@_model_options
@click.option("-n", "--count", "n", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many images to sample.")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="S",
              help="Random seed; the same seed gives the same images.  [default: fresh randomness]")
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=_check_out, metavar="OUT.npy",
              help="Where to write the samples, (n, height*width) float32 in [0, 1] (.npy, or .npz key images).")
@_png_option
def sample(model: Path, n: int, seed: int | None, out: Path, png: Path | None, device: str,
           threads: int | None) -> None:
    """Sample new images from the model.

    Decodes N codes z ~ N(0, I) and writes the images to --out; the same --seed gives the same images."""
    m = _open(model, device, threads)
    if n > m.chunk_size:
        _status(f"sampling {n} images...")
    images = m.sample(n, seed=seed)
    io.write_array(out, {"images": images})
    click.echo(f"wrote {n} samples ({_shape(images)}) to {out}")
    if png is not None:
        title = f"{m.manifest.name}: samples" + ("" if seed is None else f", seed {seed}")
        _grid(images[:PNG_MAX], m, png, title=title)
        click.echo(f"wrote {png}")


@main.command()
@_model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Draws of z per image in the estimate.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S",
              help="Random seed of the draws.")
@click.option("--out", type=click.Path(path_type=Path), default=None, callback=_check_out, metavar="OUT.npy",
              help="Also write the per-image figures, (n,) float64 (.npy, or .npz key nelbo).")
@_json_option
def score(model: Path, input: Path, samples: int, seed: int, out: Path | None, device: str, threads: int | None,
          as_json: bool) -> None:
    """Score images: the negative ELBO of each, in nats.

    Estimates -ELBO (nats, lower is better) for every image in INPUT with K draws of z per image, and
    prints n, mean, min and max; --out also writes the per-image figures."""
    m = _open(model, device, threads)
    x = m.as_images(io.read_images(input, m.image_shape))
    if len(x) > m.chunk_size:
        _status(f"scoring {len(x)} images ({samples} draw(s) each)...", quiet=as_json)
    nelbo = m.score(x, samples=samples, seed=seed)
    if out is not None:
        io.write_array(out, {"nelbo": nelbo})
    summary = {"n": len(nelbo), "mean": float(nelbo.mean()), "min": float(nelbo.min()), "max": float(nelbo.max())}
    if as_json:
        _echo_json({**summary, "unit": "nats", "samples": samples, "seed": seed, "out": out and str(out)})
        return
    click.echo(f"negative ELBO of {summary['n']} images, nats ({samples} draw(s) of z each, seed {seed}):")
    for k in ("mean", "min", "max"):
        click.echo(f"  {k + ':':<5} {summary[k]:.4f}")
    if out is not None:
        click.echo(f"wrote per-image figures to {out}")


if __name__ == "__main__":
    main()
