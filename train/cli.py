"""python -m train: fit a VAE and export it as a model package; export a finished run again."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

import click

import vae_infer
from vae_infer.data.preprocessing import ALPHAS, FILTERS, FITS
from vae_infer.errors import VaeInferError

from .config import SCHEDULES, ModelConfig, TrainConfig

DEFAULTS = TrainConfig()
MODEL_DEFAULTS = ModelConfig()
DROP_HELP = ("Replace an existing package at --out even though its variants, calibration and latent index "
             "(made from the old weights) are lost. Without it, export refuses and lists them.")


def _errors_as_one_line(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VaeInferError, ValueError, OSError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def quiet_libraries(verbose: bool) -> None:
    """Third-party output is for those who ask (-v): the root logger at DEBUG shows everything (and tells the
    quantizer not to hush itself, see variants._quantizer_quiet); otherwise only errors, and no warnings."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format=fmt, force=True)
        warnings.resetwarnings()
        return
    logging.basicConfig(level=logging.ERROR, format=fmt)  # a handler of ours, so logging adds no WARNING default
    if not sys.warnoptions:  # an explicit -W or PYTHONWARNINGS wins
        warnings.simplefilter("ignore")


def _set_verbosity(ctx: click.Context, param: click.Parameter, verbose: bool) -> None:
    if verbose or ctx.parent is None:  # the group sets the default; `fit -v` turns it up
        quiet_libraries(verbose)


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbosity,
    help="Show the log lines and warnings of the libraries underneath (torch, onnx, onnxruntime's quantizer); "
         "without it only this program's own output appears.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@verbose_option
def main() -> None:
    """Train the course's VAE and export it as an ONNX model package for vae_infer."""


@main.command()
@click.option("--dataset", default=DEFAULTS.dataset, show_default=True, metavar="SOURCE",
              help="fashion-mnist, mnist, a folder of IDX files, a .npy / .npz file, or a folder of PNG / JPEG "
                   "images (class subfolders are labels; train/ and test/ folders are splits, else 10% is held "
                   "out for testing).")
@click.option("--image-size", default=DEFAULTS.image_size, metavar="H,W",
              help="Image files: resize every image to H x W.  [default: all must have the first image's size]")
@click.option("--resize-filter", type=click.Choice(FILTERS), default=DEFAULTS.resize_filter, show_default=True)
@click.option("--image-fit", type=click.Choice(FITS), default=DEFAULTS.image_fit, show_default=True,
              help="Resize by stretching, or crop the centre to H:W first.")
@click.option("--alpha", type=click.Choice(ALPHAS), default=DEFAULTS.alpha, show_default=True,
              help="Image files with transparent pixels: refuse them, or composite over black or white.")
@click.option("--to-gray", is_flag=True,
              help="Convert colour images to gray (luma); without it colour images make a colour (RGB) model.")
@click.option("--exif-orientation/--no-exif-orientation", default=DEFAULTS.exif_orientation, show_default=True,
              help="Turn photos upright as their EXIF tag says.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding named datasets (else VAE_DATA_DIR).")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Adam's rate (the peak for onecycle).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule, show_default=True)
@click.option("--kl-warmup-epochs", type=int, default=DEFAULTS.kl_warmup_epochs, show_default=True)
@click.option("--beta", type=float, default=DEFAULTS.beta, show_default=True, help="Weight on the KL term.")
@click.option("--validation-size", type=int, default=DEFAULTS.validation_size, show_default=True)
@click.option("--train-limit", type=int, default=DEFAULTS.train_limit, show_default=True,
              help="Use only the first N training images (0: all).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--iw-samples", type=int, default=DEFAULTS.iw_samples, show_default=True,
              help="k for the final importance-weighted bound on the test set.")
@click.option("--threads", type=int, default=DEFAULTS.threads, show_default=True, help="0: the cores available.")
@click.option("--noise", default=DEFAULTS.noise, metavar="SPEC",
              help="Train a denoising VAE: corrupt each input batch (gaussian:SIGMA, salt-pepper:P, ranges LO-HI, "
                   "several joined by commas); the loss scores the clean images.")
@click.option("--hidden-size", type=int, default=MODEL_DEFAULTS.hidden_size, show_default=True)
@click.option("--latent-size", type=int, default=MODEL_DEFAULTS.latent_size, show_default=True)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoints, history and pictures. [default: runs/<name of --out>]")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The model package folder to write.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@click.option("--pictures/--no-pictures", default=True, show_default=True, help="Write pictures (matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--drop-extras", is_flag=True, help=DROP_HELP)
@verbose_option
@_errors_as_one_line
def fit(data_dir, hidden_size, latent_size, run_dir, out, resume, pictures, quiet, drop_extras, **options) -> None:
    """Train a VAE, export it to --out, and report its test figures (nats per example)."""
    from .export import check_replaceable, export_package
    from .fit import fit as run_fit
    from .fit import to_tensor

    config = TrainConfig(**options)
    check_replaceable(out, drop_extras)  # before training, not after it
    run_dir = run_dir or Path("runs") / out.name
    model_config = ModelConfig(hidden_size=hidden_size, latent_size=latent_size)
    result = run_fit(config, model_config, run_dir=run_dir, resume=resume, data_dir=data_dir, progress=not quiet)
    # The command that reproduces this model: a resumed run ends where an uninterrupted one does.
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    command = "python -m train " + shlex.join(argv) if argv[:1] == ["fit"] else None
    record = result.record(command)
    export_package(result.model, out, to_tensor(result.dataset.test_images), training=record,
                   drop_extras=drop_extras, preprocessing=result.dataset.preprocessing)
    _finish(result, out, run_dir, pictures)


@main.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Model package to write (when SOURCE is a run folder).")
@click.option("--quantize", type=click.Choice(["int8"]), help="Add an int8-weight variant (about 4x smaller).")
@click.option("--fp16", is_flag=True, help="Add an fp16 variant (for GPUs).")
@click.option("--ort-format", is_flag=True, help="Add an ORT-format variant (for onnxruntime's minimal builds).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Folder holding named datasets (else VAE_DATA_DIR).")
@click.option("--pictures/--no-pictures", default=False, show_default=True, help="Write the pictures again.")
@click.option("--drop-extras", is_flag=True, help=DROP_HELP)
@verbose_option
@_errors_as_one_line
def export(source, out, quantize, fp16, ort_format, data_dir, pictures, drop_extras) -> None:
    """Export a model package, or add variants to one.

    SOURCE is a finished run folder (its best checkpoint is exported to --out) or a model package (the
    variants asked for are added to it in place). Each variant's test -ELBO change is measured and
    written to model.json. A package already at --out is replaced only when nothing in it would be lost
    (variants not asked for again, calibration, latent index), or with --drop-extras."""
    from vae_infer.package.manifest import MANIFEST_NAME

    from .data import load_dataset
    from .variants import add_variants

    kinds = [k for k, wanted in (("int8", quantize == "int8"), ("fp16", fp16), ("ort", ort_format)) if wanted]
    if (source / MANIFEST_NAME).is_file():
        if out is not None or not kinds:
            raise click.UsageError("SOURCE is a model package: name variants to add (--quantize int8, --fp16, "
                                   "--ort-format) and no --out")
        training = vae_infer.load(source, threads=1).manifest.training
        recorded = TrainConfig.from_dict(training["config"]) if isinstance(training.get("config"), dict) else DEFAULTS
        dataset = load_dataset(recorded.dataset, data_dir=data_dir, preprocessing=recorded.preprocessing())
        _report_variants(add_variants(source, kinds, dataset.test_images))
        return
    if out is None:
        raise click.UsageError("SOURCE is a run folder: --out names the model package to write")
    from .export import check_replaceable, export_package
    from .fit import load_run, to_tensor

    check_replaceable(out, drop_extras, rebuilt_variants=tuple(kinds))  # the variants asked for are made again
    result = load_run(source, data_dir)
    old = _old_record(out)
    export_package(result.model, out, to_tensor(result.dataset.test_images),
                   training=result.record(old.get("command")), drop_extras=True,  # checked just above
                   preprocessing=result.dataset.preprocessing)
    if kinds:
        _report_variants(add_variants(out, kinds, result.dataset.test_images))
    _finish(result, out, source, pictures)


def _report_variants(variants: dict) -> None:
    for kind, v in variants.items():
        click.echo(f"variant {kind}: {v['bytes'] / 1e6:.2f} MB (fp32 {v['fp32_bytes'] / 1e6:.2f} MB), test -ELBO "
                   f"{v['test_nelbo']:.2f} ({v['test_nelbo_change']:+.3f} nats vs fp32), mean abs diff "
                   f"{_fmt_diffs(v['mean_abs_diff_vs_fp32'])} (max {_fmt_diffs(v['max_abs_diff_vs_fp32'])})")


def _fmt_diffs(diffs: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())


def _old_record(out: Path) -> dict:
    try:
        return json.loads((out / "model.json").read_text()).get("training", {})
    except (OSError, ValueError):
        return {}


def _finish(result, out: Path, run_dir: Path, pictures: bool) -> None:
    t = result.test
    click.echo(f"test -ELBO {t['nelbo']:.2f} nats/example (recon {t['recon']:.2f}, KL {t['kl']:.2f}); "
               f"importance-weighted (k={t['iw_samples']}) {t['iw_nll']:.2f}; best epoch {result.best_epoch}")
    click.echo(f"model package: {out}")
    if pictures:
        try:
            from .plots import make_all
        except ImportError as e:
            click.echo(f"pictures skipped: {e} (pip install matplotlib)", err=True)
            return
        paths = make_all(vae_infer.load(out), result.dataset, result.history, run_dir,
                         class_names=result.dataset.class_names or _class_names(result.dataset.name))
        click.echo(f"pictures: {', '.join(str(p) for p in paths)}")
    click.echo(f"run folder (checkpoint, history, pictures): {run_dir}")


def _class_names(name: str):
    from .data import CLASS_NAMES

    return CLASS_NAMES.get(name)
