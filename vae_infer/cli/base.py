"""vae-infer: the command line of the runtime. Parsing and printing only; the work is vae_infer's API."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from .. import __version__
from ..data import arrays
from ..errors import VaeInferError
from ..model import VAEModel, load
from ..sessions import DEVICES
from ..text import terminal_lines, terminal_text

PNG_MAX = 64  # images shown in a --png grid of samples or decoded codes
PNG_PAIRS = 16  # originals shown (above their reconstructions) in a reconstruct --png grid


TRACEBACK_ENV = "VAE_INFER_TRACEBACK"  # set to 1 to see the Python traceback of an unexpected error
MESSAGE_LIMIT = 600  # characters of an error message shown on the one line


# The mixin's super() is a click.Command in every class that uses it: the type checker is told so.
if TYPE_CHECKING:
    _MixinBase = click.Command
else:
    _MixinBase = object


class _OneLineErrors(_MixinBase):
    """Turns anything unexpected raised while a command or group runs into the one-line error of
    _as_click_error (click's own exceptions pass through)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as e:  # click's own (a bad option value, no such command)
            raise _escaped(e) from None
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # raised by the work, while parsing (option callbacks), or by a plain command
            raise _as_click_error(e, ctx) from e

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.ClickException as e:  # parsing the command line, which may quote it
            raise _escaped(e) from None


def _escaped(e: click.exceptions.ClickException) -> click.exceptions.ClickException:
    """click's own errors quote what the user typed (a path, an option value): shown with controls escaped."""
    e.message = terminal_text(e.message)  # type: ignore[misc]  # click marks it final; set once, here
    return e


class _Command(_OneLineErrors, click.Command):
    """A command whose unexpected errors name the paths the user gave it (its parameters are known here)."""


class _Group(_OneLineErrors, click.Group):
    """The one place where errors become a one-line `Error: ...` and a non-zero exit, for any input: the
    library's named errors as they are, file system errors naming the file, anything unexpected (a
    ValueError, MemoryError, RecursionError) as its kind and message with the paths the command was given.
    No traceback, unless VAE_INFER_TRACEBACK=1."""

    command_class = _Command
    group_class = type  # subgroups (`index`) are _Groups, so their commands are _Commands too


def _as_click_error(e: Exception, ctx: click.Context) -> Exception:
    if isinstance(e, OSError) and e.errno == errno.EPIPE:
        return e  # click handles a closed stdout (| head) itself
    if os.environ.get(TRACEBACK_ENV) == "1" and not isinstance(e, VaeInferError):
        return e
    if isinstance(e, VaeInferError):
        text = str(e)
    elif isinstance(e, OSError):
        name = e.filename or _user_paths(ctx)
        reason = e.strerror or str(e) or type(e).__name__
        text = f"{name}: {reason}" if name else reason
    elif isinstance(e, MemoryError):
        text = (f"out of memory{_while(ctx)}: the input or the request is too large for this machine; "
                f"use fewer rows (or `vae-infer batch` for large jobs)")
    else:
        text = (f"unexpected {type(e).__name__}{_while(ctx)}: {e or 'no message'}; the input is damaged or "
                f"not what the command expects (rerun with {TRACEBACK_ENV}=1 to see where)")
    return click.ClickException(_one_line(text))


def _user_paths(ctx: click.Context | None) -> str:
    """The files and folders the user named on the command line (its path arguments and options)."""
    found: list[str] = []
    while ctx is not None:
        for param in ctx.command.params:
            if isinstance(param.type, click.Choice) or param.name not in ctx.params:
                continue  # a choice such as --split train is not a path, even where ./train exists
            value = ctx.params[param.name]
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, Path) or (isinstance(v, str) and v and os.path.exists(v.rsplit(":", 1)[0])):
                    found.append(str(v))
        ctx = ctx.parent
    return ", ".join(dict.fromkeys(found))


def _while(ctx: click.Context) -> str:
    paths = _user_paths(ctx)
    name = ctx.command_path.removeprefix("vae-infer ").strip() or ctx.info_name or "vae-infer"
    return f" in `{name}`" + (f" on {paths}" if paths else "")


def _one_line(text: str) -> str:
    """The message on one line, terminal-safe (a package's names and the user's paths are in messages)."""
    line = "; ".join(part.strip() for part in text.strip().splitlines() if part.strip()) or "failed"
    line = line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 3] + "..."
    return terminal_text(line)


@click.group(cls=_Group, name="vae-infer", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vae-infer")
def main() -> None:
    """Run a variational autoencoder model package (model.json + ONNX graphs) without torch:
    show it, encode images to latent codes, decode codes, reconstruct, sample and score images.

    Images are .npy/.npz arrays shaped (n, height, width) or (n, height*width) for a gray model,
    (n, height, width, 3) or (n, height*width*3) for an RGB one (channels last), uint8 0..255 or
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
    """A picture's path, refused while parsing (before any work or any other output is written) when it is
    not a writable .png or when the viz extra that draws it is not installed."""
    if value is None:
        return None
    from ..viz import _require_matplotlib

    _require_matplotlib(f"{param.opts[0]} {value}")  # raises MissingExtraError with the install command
    return arrays.check_output(value, (".png",))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout (for scripts).")
png_option = click.option(
    "--png", type=click.Path(path_type=Path), callback=check_png, metavar="GRID.png",
    help=f"Also save a picture grid of the first {PNG_MAX} images (needs the viz extra: matplotlib).",
)


def open_model(model: Path, device: str, threads: int | None) -> VAEModel:
    return load(model, device=device, threads=threads)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def echo(text: Any = "", err: bool = False, nl: bool = True, lines: bool = False) -> None:
    """Print a line (stdout, or stderr with err=True) of text that may hold a package's names, paths or input:
    every character a terminal could obey (escapes, bidi overrides, zero-width characters, newlines) is shown
    as an escape (vae_infer.text.terminal_text). lines=True keeps the newlines of text this program laid out."""
    text = str(text)
    click.echo(terminal_lines(text) if lines else terminal_text(text), err=err, nl=nl)


def status_note(text: str, quiet: bool = False) -> None:
    """A note on stderr for long work, only where a person is watching."""
    if not quiet and stderr_is_terminal():
        echo(text, err=True)


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
    """Print one JSON object. JSON has no NaN or infinity: such numbers are printed as null (so the output
    is always valid JSON); numpy scalars and arrays are printed as numbers and lists. Strings are ASCII with
    \\uNNNN escapes (DEL too), so no control, bidi or zero-width character reaches the terminal."""
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False, ensure_ascii=True)
    click.echo(text.replace("\x7f", "\\u007f"))  # DEL is ASCII, so ensure_ascii keeps it; only in strings


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return _json_safe(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


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


