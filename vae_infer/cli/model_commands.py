"""The model commands: info, encode, decode, reconstruct, sample, score."""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from ..anomaly.scores import DEFAULT_IW_SAMPLES, SCORE_KINDS, STOCHASTIC_KINDS, ChunkScorer, resolve_samples
from ..data import arrays, model_sources
from ..inputs import as_latents
from ..work_limits import MAX_SAMPLES
from .base import (
    PNG_MAX,
    PNG_PAIRS,
    check_out,
    check_png,
    echo,
    echo_json,
    flatten,
    fmt,
    json_option,
    main,
    model_options,
    open_model,
    png_option,
    save_grid,
    shape_text,
    status_note,
)
from .streams import chunks, first_rows, open_images, progress, write_rows

SHORT_WIDTH = 86  # columns of a short `info` value: with its 14-column label, lines fit a 100-column terminal


def given(*names: str) -> list[str]:
    """Which of these parameters the user typed on the command line, as their option names."""
    ctx = click.get_current_context()
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]


def refuse_ignored(options: list[str], ignored: bool, why: str) -> None:
    """An option the command would ignore is refused, not silently dropped."""
    if options and ignored:
        them = "it" if len(options) == 1 else "them"
        raise click.UsageError(f"{', '.join(options)} would be ignored: {why}; leave {them} out")


@main.command()
@model_options
@json_option
@click.option("--full", is_flag=True,
              help="Also the likelihood, opset, device and providers, the sha256 of every file and the whole "
                   "training record (configuration and command).")
def info(model: Path, device: str, threads: int | None, as_json: bool, full: bool) -> None:
    """Describe a model package and verify its files.

    Prints the name, format, image shape, latent size, the files and their sizes (every sha256 verified while
    loading), the headline test figures and the optional sections the package carries (variants, to load with
    variant=NAME; calibration, for detect; the latent index, for graph interpolation; the latent map).
    --full adds the rest: likelihood, opset, how image files are read, the device and onnxruntime providers,
    every file's sha256 and the whole training record. --json prints everything as one object."""
    m = open_model(model, device, threads)
    man = m.manifest
    sections = package_sections(man)
    if as_json:
        echo_json({
            "name": man.name, "path": str(model), "format_version": man.format_version,
            "image_shape": list(man.image_shape), "channels": man.channels, "features": man.features,
            "latent_size": man.latent_size,
            "hidden_size": man.hidden_size, "likelihood": man.likelihood, "input_scale": man.input_scale,
            "opset": man.opset, "training": man.training, "tools": man.tools, "files": dict(sorted(man.files.items())),
            "device": m.device, "providers": m.providers, "preprocessing": man.preprocessing, **sections,
        })
        return
    if not full:
        for k, v in short_info(m, sections):
            for i, line in enumerate(_wrap(v) if k in ("files", "test figures") else [v]):  # the long rows
                echo(f"{k + ':' if i == 0 else '':<13} {line}")
        echo("(more with --full: training configuration, sha256 of every file, device)")
        return
    providers = "; ".join(f"{role}: {', '.join(p)}" for role, p in m.providers.items())
    rows: list[tuple[str, object]] = [
        ("name", man.name), ("path", str(model)), ("image shape", image_shape_text(man)),
        ("image files", model_sources.preprocessing_of(man).describe(man.pixel_shape)),
        ("latent size", man.latent_size), ("hidden size", man.hidden_size), ("likelihood", man.likelihood),
        ("opset", man.opset), ("device", f"{m.device} ({providers})"),
    ]
    for field, value in rows:
        echo(f"{field + ':':<13} {value}")
    for label, text in section_lines(sections):
        echo(f"{label + ':':<13} {text}")
    echo("files (sha256, verified):")
    for name, digest in sorted(man.files.items()):
        echo(f"  {name}  {digest}")
    if man.training:
        echo("training:")
        for k, v in flatten(man.training):
            echo(f"  {k}: {fmt(v)}")


def image_shape_text(man) -> str:
    h, w = man.image_shape
    colour = " x 3 (RGB, channels last)" if man.channels == 3 else ""
    return f"{h} x {w}{colour} ({man.features} features)"


def short_info(m, sections: dict) -> list[tuple[str, str]]:
    """The few lines a person reads first: what the package is, what it holds, how good it is."""
    man = m.manifest
    sizes = {name: (m.path / name).stat().st_size for name in sorted(man.files)}
    listed = ", ".join(f"{name} {_mb(n)}" for name, n in sizes.items())
    rows = [
        ("name", man.name),
        ("format", f"model package v{man.format_version}: ONNX encoder and decoder, {man.likelihood} likelihood"),
        ("image shape", image_shape_text(man)),
        *([("image files", model_sources.preprocessing_of(man).describe(man.pixel_shape))] if man.preprocessing
          else []),  # a package trained on image files says how files become its pixels
        ("latent size", str(man.latent_size)),
        ("files", f"{len(sizes)}, {_mb(sum(sizes.values()))} in all, sha256 verified: {listed}"),
    ]
    figures = headline_figures(man.training)
    if figures:
        rows.append(("test figures", figures))
    present = [name.replace("_", " ") for name in ("variants", "calibration", "latent_index", "latent_map")
               if sections[name]]
    if sections["variants"]:
        present[0] = f"variants ({', '.join(sections['variants'])})"
    rows.append(("sections", ", ".join(present) or "none"))
    return rows


def headline_figures(training: dict) -> str:
    """The training record's test figures in one line (nats per example), or '' when it has none."""
    t = training or {}
    parts = []
    if _is_number(t.get("test_nelbo")):
        parts.append(f"-ELBO {t['test_nelbo']:.2f} nats/example")
    if _is_number(t.get("test_iw_nll")):
        k = t.get("iw_samples")
        parts.append(f"importance-weighted{f' (k={k})' if _is_number(k) else ''} {t['test_iw_nll']:.2f}")
    if parts and t.get("dataset") is not None:
        epochs = f", {t['epochs_run']} epochs" if _is_number(t.get("epochs_run")) else ""
        parts.append(f"trained on {t['dataset']}{epochs}")
    return "; ".join(parts)


def _wrap(text: str) -> list[str]:
    """Lines of at most SHORT_WIDTH columns, broken only after "; " or ", " (so "0.40 MB" stays together)."""
    lines = [""]
    for part in re.split(r"(?<=[;,]) ", text):
        if lines[-1] and len(lines[-1]) + 1 + len(part) > SHORT_WIDTH:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} {part}" if lines[-1] else part
    return lines


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} bytes"


def package_sections(man) -> dict:
    """The optional sections a package carries, as info reports them (JSON-ready)."""
    cal = man.calibration
    return {
        "variants": {name: {k: body.get(k) for k in ("encoder_file", "decoder_file", "bytes", "test_nelbo_change")
                            if k in body} for name, body in man.variants.items()},
        "calibration": None if not cal else {
            "default_kind": cal.get("default_kind"), "quantile": cal.get("quantile"),
            "kinds": sorted(cal.get("thresholds", {})), "examples": cal.get("examples")},
        "latent_index": None if not man.latent_index else {
            k: man.latent_index.get(k) for k in ("file", "n_nodes", "n_edges", "k", "metric") if k in man.latent_index},
        "latent_map": None if not man.latent_map else {
            k: man.latent_map.get(k) for k in ("file", "points", "source") if k in man.latent_map},
    }


def section_lines(sections: dict) -> list[tuple[str, str]]:
    variants = sections["variants"]
    cal, index, lmap = sections["calibration"], sections["latent_index"], sections["latent_map"]
    return [
        ("variants", ", ".join(f"{n} (variant={n!r})" for n in variants) if variants else
         "none (make them with: python -m train export PKG --quantize int8)"),
        ("calibration", f"{len(cal['kinds'])} kinds, default {cal['default_kind']}, quantile {cal['quantile']} "
         f"({cal['examples']} images)" if cal else "none (vae-infer calibrate PKG --data ...; needed by detect)"),
        ("latent index", ", ".join(f"{k} {v}" for k, v in index.items()) if index else
         "none (vae-infer index build PKG --data ...; needed by graph interpolation)"),
        ("latent map", ", ".join(f"{k} {v}" for k, v in lmap.items()) if lmap else "none"),
    ]


@main.command()
@model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=check_out, metavar="OUT.npz",
              help="Where to write: .npz gets arrays mu and logvar; .npy gets mu only.")
@json_option
def encode(model: Path, input: Path, out: Path, device: str, threads: int | None, as_json: bool) -> None:
    """Encode images to latent codes: mu and logvar of q(z|x).

    Reads the images in INPUT and writes mu and logvar, each (n, latent size) float32, to --out. The images
    go through the model a chunk at a time: memory holds one chunk and the codes, whatever INPUT's size."""
    m = open_model(model, device, threads)
    source = open_images(input, m)
    mu = np.empty((len(source), m.latent_size), np.float32)
    logvar = np.empty_like(mu)
    for start, x in chunks(m, source, "encoding", quiet=as_json):
        mu[start : start + len(x)], logvar[start : start + len(x)] = m.encode_rows(x)
    npz = out.suffix.lower() == ".npz"
    arrays.write_array(out, {"mu": mu, "logvar": logvar} if npz else mu)
    keys = ["mu", "logvar"] if npz else ["mu"]
    if as_json:
        echo_json({"out": str(out), "arrays": keys, "n": len(mu), "latent_size": m.latent_size})
    else:
        echo(f"wrote {' and '.join(keys)} ({shape_text(mu)}) to {out}")


@main.command()
@model_options
@click.argument("latents", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=check_out, metavar="OUT.npy",
              help="Where to write the images, (n, h*w*channels) float32 in [0, 1] (.npy, or .npz key images).")
@png_option
def decode(model: Path, latents: Path, out: Path, png: Path | None, device: str, threads: int | None) -> None:
    """Decode latent codes to images.

    Reads the codes in LATENTS ((n, latent size), .npy or .npz; FILE.npz:KEY picks one array) and writes
    the decoded images (the Bernoulli means) to --out."""
    m = open_model(model, device, threads)
    z = as_latents(arrays.read_latents(latents), m.latent_size)
    shown: list[np.ndarray] = []
    step = m.chunk_size
    blocks = progress((m.decode_rows(z[s : s + step]) for s in range(0, len(z), step)), len(z), "decoding")
    write_rows(out, "images", (len(z), m.manifest.features), np.float32, first_rows(blocks, shown, PNG_MAX))
    echo(f"wrote {len(z)} decoded images ({len(z)} x {m.manifest.features}) to {out}")
    if png is not None:
        save_grid(np.concatenate(shown), m, png)
        echo(f"wrote {png}")


@main.command()
@model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=check_out, metavar="OUT.npy",
              help="Where to write the reconstructions, (n, h*w*channels) float32 in [0, 1] (.npy, or .npz key "
                   "images).")
@click.option("--png", type=click.Path(path_type=Path), callback=check_png, metavar="GRID.png",
              help=f"Also save a picture: the first {PNG_PAIRS} originals above their reconstructions "
                   f"(needs the viz extra: matplotlib).")
def reconstruct(model: Path, input: Path, out: Path, png: Path | None, device: str, threads: int | None) -> None:
    """Reconstruct images: encode, then decode mu.

    Reads the images in INPUT and writes decode(mu), the deterministic reconstruction, to --out, a chunk of
    images at a time: memory does not grow with INPUT's size."""
    m = open_model(model, device, threads)
    source = open_images(input, m)
    originals: list[np.ndarray] = []
    shown: list[np.ndarray] = []
    images = first_rows((x for _, x in chunks(m, source, "reconstructing")), originals, PNG_PAIRS)
    blocks = (m.decode_rows(m.encode_rows(x)[0]) for x in images)
    n, features = len(source), m.manifest.features
    write_rows(out, "images", (n, features), np.float32, first_rows(blocks, shown, PNG_PAIRS))
    echo(f"wrote {n} reconstructions ({n} x {features}) to {out}")
    if png is not None:
        k = min(n, PNG_PAIRS)
        save_grid(np.concatenate(originals + shown), m, png, ncols=k,
                  title="originals (top) and reconstructions (bottom)")
        echo(f"wrote {png}")


@main.command()
@model_options
@click.option("-n", "--count", "n", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many images to sample.")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="S",
              help="Random seed; the same seed gives the same images.  [default: fresh randomness]")
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=check_out, metavar="OUT.npy",
              help="Where to write the samples, (n, h*w*channels) float32 in [0, 1] (.npy, or .npz key images).")
@png_option
def sample(model: Path, n: int, seed: int | None, out: Path, png: Path | None, device: str,
           threads: int | None) -> None:
    """Sample new images from the model.

    Decodes N codes z ~ N(0, I) and writes the images to --out; the same --seed gives the same images."""
    m = open_model(model, device, threads)
    if n > m.chunk_size:
        status_note(f"sampling {n} images...")
    images = m.sample(n, seed=seed)
    arrays.write_array(out, {"images": images})
    echo(f"wrote {n} samples ({shape_text(images)}) to {out}")
    if png is not None:
        title = f"{m.manifest.name}: samples" + ("" if seed is None else f", seed {seed}")
        save_grid(images[:PNG_MAX], m, png, title=title)
        echo(f"wrote {png}")


@main.command()
@model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(SCORE_KINDS), default="nelbo", show_default=True,
              help="nelbo, recon (BCE), mse, iwae (k = --samples), excess, ic, dose (needs calibrate); "
                   "formulas in the README.")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=None, metavar="K",
              help=f"Draws of z per image (nelbo, ic; k of iwae), at most {MAX_SAMPLES}; the other kinds take "
                   f"none.  [default: {DEFAULT_IW_SAMPLES} for iwae, else 1]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S",
              help="Random seed of the draws.")
@click.option("--out", type=click.Path(path_type=Path), default=None, callback=check_out, metavar="OUT.npy",
              help="Also write the per-image scores, (n,) float64 (.npy, or .npz under the kind's name).")
@json_option
def score(model: Path, input: Path, kind: str, samples: int | None, seed: int, out: Path | None, device: str,
          threads: int | None, as_json: bool) -> None:
    """Score images: the negative ELBO of each in nats, or another anomaly score (--kind).

    Higher is less likely under the model. Prints n, mean, min and max; --out also writes the per-image
    scores."""
    resolve_samples(kind, samples, "--samples")  # before the model is even loaded
    refuse_ignored(given("seed"), kind not in STOCHASTIC_KINDS, f"kind {kind} draws no z")
    m = open_model(model, device, threads)
    source = open_images(input, m)
    scorer = ChunkScorer(m, kind, samples, seed, rows=len(source))  # checks images x samples before any work
    samples = scorer.samples
    if len(source) > m.chunk_size:
        status_note(f"scoring {len(source)} images ({samples} draw(s) each)...", quiet=as_json)
    values = np.empty(len(source))
    for start, x in chunks(m, source, "scoring", quiet=True):
        values[start : start + len(x)] = scorer(x)
    if out is not None:
        arrays.write_array(out, {kind: values})
    summary = {"n": len(values), "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    unit = "nats" if kind not in ("mse", "dose") else "score"
    if as_json:
        echo_json({**summary, "kind": kind, "unit": unit, "samples": samples, "seed": seed,
                   "out": out and str(out)})
        return
    label = "negative ELBO" if kind == "nelbo" else f"{kind} score"
    echo(f"{label} of {summary['n']} images, {unit} ({samples} draw(s) of z each, seed {seed}):")
    for k in ("mean", "min", "max"):
        echo(f"  {k + ':':<5} {summary[k]:.4f}")
    if out is not None:
        echo(f"wrote per-image scores to {out}")

