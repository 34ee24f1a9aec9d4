"""The anomaly commands: calibrate, detect, denoise."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..anomaly import scores as anomaly
from ..data import arrays, model_sources, sources
from ..data.model_sources import calibration_images
from ..package.check_images import (
    CHECK_IMAGES_FILE,
    DEFAULT_CHECK_IMAGES,
    choose_check_images,
    drop_check_images,
    save_check_images,
)
from ..work_limits import MAX_DENOISE_STEPS, MAX_SAMPLES, check_work
from .base import (
    PNG_PAIRS,
    check_out,
    check_png,
    echo,
    echo_json,
    json_option,
    main,
    model_options,
    open_model,
    save_grid,
    status_note,
)
from .model_commands import given, refuse_ignored
from .streams import chunks, first_rows, open_images, write_rows

FLAGGED_SHOWN = 20  # indices of flagged images printed by detect (all are in --json and --out)


# -- commands -----------------------------------------------------------------------------------------------


@main.command()
@model_options
@click.option("--data", required=True, metavar="SOURCE",
              help="Held-out images of the training distribution: " + sources.SPEC_HELP + ".")
@click.option("--split", type=click.Choice(model_sources.CALIBRATION_SPLITS), default=None,
              help="For a source with splits: which images. validation (the default) re-creates the split that "
                   "training held out, from model.json; train and test take the whole set.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding named datasets (looked in before VAE_DATA_DIR and the usual places).")
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=anomaly.DEFAULT_QUANTILE, show_default=True,
              help="Each threshold is this quantile of the calibration images' scores.")
@click.option("--kind", "kinds", type=click.Choice(anomaly.SCORE_KINDS), multiple=True,
              help="Score kinds to calibrate (repeat the option).  [default: all]")
@click.option("--default-kind", type=click.Choice(anomaly.SCORE_KINDS), default=anomaly.DEFAULT_KIND,
              show_default=True, help="The kind detect uses when none is given.")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=None, metavar="K",
              help=f"Draws of z for nelbo and ic, at most {MAX_SAMPLES}.  [default: 1]")
@click.option("--iw-samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=None, metavar="K",
              help=f"Importance samples k of the iwae score, at most {MAX_SAMPLES}.  "
                   f"[default: {anomaly.DEFAULT_IW_SAMPLES}]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Use only the first N images.")
@click.option("--check-images/--no-check-images", "keep_check_images", default=True, show_default=True,
              help=f"Also store {DEFAULT_CHECK_IMAGES} of the images in the package (check_images.npy) for its "
                   f"self-checks (export-c --check). Packages are shared: --no-check-images stores none and drops "
                   f"those stored before.")
@json_option
def calibrate(model: Path, data: str, split: str | None, data_dir: Path | None, quantile: float, kinds: tuple,
              default_kind: str, samples: int | None, iw_samples: int | None, seed: int, limit: int | None,
              keep_check_images: bool, device: str, threads: int | None, as_json: bool) -> None:
    """Calibrate anomaly thresholds on held-out images and store them in the model package.

    Scores the images with every kind, keeps each kind's --quantile as its threshold in model.json (section
    calibration) and the scores and the density-of-states reference in calibration.npz. The package is
    rewritten atomically; every file is verified first. detect then works without options. Unless
    --no-check-images, a seeded sample of the images is stored too (check_images.npy) for export-c --check."""
    refuse_ignored(given("seed"), not set(kinds or anomaly.SCORE_KINDS) & set(anomaly.STOCHASTIC_KINDS),
                   "no calibrated kind draws z")
    m = open_model(model, device, threads)
    images, about = calibration_images(m, data, split, data_dir)
    if limit is not None:
        images = images[:limit]
        about += f", first {len(images)}"
    kinds = kinds or anomaly.SCORE_KINDS
    status_note(f"calibrating on {len(images)} images...", quiet=as_json)
    section = anomaly.calibrate(m, images, quantile=quantile, kinds=kinds, default_kind=default_kind,
                                samples=samples, iw_samples=iw_samples, seed=seed, source=about)
    if keep_check_images:
        rows = choose_check_images(m, images, DEFAULT_CHECK_IMAGES, seed=seed)
        save_check_images(model, rows, about)
        stored = f"stored {len(rows)} of the images as {CHECK_IMAGES_FILE} (for export-c --check)"
    else:
        had = bool(m.manifest.check_images)
        drop_check_images(model)
        stored = "dropped the package's check images" if had else "stored no check images"
    if as_json:
        echo_json({"model": str(model), **{k: section[k] for k in ("source", "examples", "quantile", "default_kind",
                                                                   "samples", "thresholds", "reference_file")},
                   "check_images": len(rows) if keep_check_images else 0})
        return
    echo(f"calibrated {model} on {about}")
    echo(f"thresholds (quantile {quantile:g} of {section['examples']} images; detect's default: "
               f"{section['default_kind']}):")
    for k, t in section["thresholds"].items():
        echo(f"  {k:<7} {t:.6g}")
    echo(stored)


@main.command()
@model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(anomaly.SCORE_KINDS), default=None,
              help="The score to threshold.  [default: the calibration's default kind, dose]")
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Threshold at this quantile of the calibration scores.  [default: the calibrated quantile]")
@click.option("--threshold", type=float, default=None,
              help="Flag scores above this number (no calibration needed, except for dose).")
@click.option("--samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=None, metavar="K",
              help=f"Draws of z (k for iwae), at most {MAX_SAMPLES}; dose, recon, mse and excess take none.  "
                   f"[default: as calibrated]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S")
@click.option("--out", type=click.Path(path_type=Path), default=None, callback=check_out, metavar="OUT.npz",
              help="Also write arrays flags (bool) and scores (float64) (.npz; .npy gets the scores).")
@json_option
def detect(model: Path, input: Path, kind: str | None, quantile: float | None, threshold: float | None,
           samples: int | None, seed: int, out: Path | None, device: str, threads: int | None,
           as_json: bool) -> None:
    """Flag anomalous images: those whose score is above the calibrated threshold.

    Prints how many images of INPUT were flagged and which; --json prints every image's flag and score."""
    if threshold is not None and quantile is not None:
        raise click.UsageError("pass either --threshold or --quantile, not both")
    m = open_model(model, device, threads)
    kind, limit, samples = anomaly.detect_rule(m, kind, quantile, threshold, samples)
    refuse_ignored(given("seed"), kind not in anomaly.STOCHASTIC_KINDS, f"kind {kind} draws no z")
    calibration = m.manifest.calibration or {}  # detect_rule refused an uncalibrated package without --threshold
    where = "--threshold" if threshold is not None else (
        f"the {quantile or calibration['quantile']:g} quantile of the calibration scores")
    source = open_images(input, m)
    scorer = anomaly.ChunkScorer(m, kind, samples, seed, rows=len(source))  # images x samples, before any work
    if len(source) > m.chunk_size:
        status_note(f"scoring {len(source)} images ({kind})...", quiet=as_json)
    scores = np.empty(len(source))
    for start, x in chunks(m, source, "scoring", quiet=True):
        scores[start : start + len(x)] = scorer(x)
    flags = scores > limit
    if out is not None:
        arrays.write_array(out, {"flags": flags, "scores": scores} if out.suffix.lower() == ".npz" else {"s": scores})
    flagged = np.nonzero(flags)[0]
    if as_json:
        echo_json({"n": len(flags), "flagged": len(flagged), "kind": kind, "threshold": limit,
                   "flags": flags.tolist(), "scores": scores.tolist(), "out": out and str(out)})
        return
    echo(f"flagged {len(flagged)} of {len(flags)} images: {kind} score above {limit:.6g} ({where})")
    if len(flagged):
        shown = ", ".join(str(i) for i in flagged[:FLAGGED_SHOWN])
        more = f", ... ({len(flagged) - FLAGGED_SHOWN} more)" if len(flagged) > FLAGGED_SHOWN else ""
        echo(f"  flagged images (0-based): {shown}{more}")
    if out is not None:
        echo(f"wrote flags and scores to {out}")


@main.command()
@model_options
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=check_out, metavar="OUT.npy",
              help="Where to write the denoised images, (n, h*w*channels) float32 in [0, 1] (.npy, or .npz key "
                   "images).")
@click.option("--steps", type=click.IntRange(min=1, max=MAX_DENOISE_STEPS), default=1, show_default=True, metavar="N",
              help=f"Times through the encoder mean and the decoder, at most {MAX_DENOISE_STEPS}.")
@click.option("--png", type=click.Path(path_type=Path), callback=check_png, metavar="GRID.png",
              help=f"Also save a picture: the first {PNG_PAIRS} inputs above their denoised versions "
                   f"(needs the viz extra: matplotlib).")
def denoise(model: Path, input: Path, out: Path, steps: int, png: Path | None, device: str,
            threads: int | None) -> None:
    """Denoise images: map them through the encoder mean and the decoder.

    Writes decode(mu(x)) for every image of INPUT to --out, repeated --steps times, a chunk of images at a
    time: memory does not grow with INPUT's size. Images x --steps is at most MAX_WORK decoder evaluations."""
    m = open_model(model, device, threads)
    source = open_images(input, m)
    n, features = len(source), m.manifest.features
    check_work(n, steps, "--steps", "denoise")
    inputs: list[np.ndarray] = []
    shown: list[np.ndarray] = []
    images = first_rows((x for _, x in chunks(m, source, "denoising")), inputs, PNG_PAIRS)
    blocks = (anomaly.denoise_rows(m, x, steps) for x in images)
    write_rows(out, "images", (n, features), np.float32, first_rows(blocks, shown, PNG_PAIRS))
    echo(f"wrote {n} denoised images ({n} x {features}, {steps} step(s)) to {out}")
    if png is not None:
        k = min(n, PNG_PAIRS)
        save_grid(np.concatenate(inputs + shown), m, png, ncols=k, title="inputs (top) and denoised (bottom)")
        echo(f"wrote {png}")
