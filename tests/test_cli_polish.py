"""The command lines' rough edges: -h on every command of both CLIs, --resume extending --epochs, errors that
name the thing at fault (a busy port), extras checked before any work (--png without matplotlib), a short
`info`, and training output free of third-party noise (-v/--verbose shows it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import TINY_PACKAGE, fails, needs_real_data, ok
from vae_infer.cli import main as vae_cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _train_cli() -> click.Group:
    from train.cli import main  # imports no torch: the commands import it when they run

    return main


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every group and command under `group`, as the words that reach it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def _cli(name: str) -> click.Group:
    return vae_cli if name == "vae-infer" else _train_cli()


def _run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=timeout,
                          **kwargs)


# -- -h everywhere ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cli", ["vae-infer", "train"])
def test_every_group_and_command_takes_h_and_help(cli):
    group = _cli(cli)
    paths = _command_paths(group)
    # the walk found the commands, those of subgroups too
    assert {("index", "build"), ("serve",), ("info",)} <= set(paths) if cli == "vae-infer" else \
        {(), ("fit",), ("export",)} == set(paths), paths
    for path in paths:
        short = CliRunner().invoke(group, [*path, "-h"])
        long = CliRunner().invoke(group, [*path, "--help"])
        assert short.exit_code == 0 and long.exit_code == 0, (path, short.output)
        assert short.output == long.output and short.output.startswith("Usage: "), path
        assert "-h, --help" in short.output, path


def test_python_m_train_h_in_a_real_process():
    r = _run(["-m", "train", "-h"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: python -m train") and "-v, --verbose" in r.stdout and "fit" in r.stdout


# -- errors name the thing at fault ---------------------------------------------------------------------------


def test_a_busy_port_is_named_with_its_host_and_the_option_that_fixes_it():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = _run(["-m", "vae_infer", "serve", str(TINY_PACKAGE), "--port", str(port), "--examples", "none"],
                 timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"Error: cannot listen on 127.0.0.1:{port}: the address is already in use")
    assert "--port" in lines[0] and str(TINY_PACKAGE) not in lines[0]


# -- extras checked before any work ---------------------------------------------------------------------------

# An interpreter without a package: a finder placed first on the meta path refuses the name, as a missing
# package would, and the CLI then runs as `python -m vae_infer`.
WITHOUT = """
import runpy, sys
class Without:
    def find_spec(self, name, path=None, target=None):
        if name == "MODULE" or name.startswith("MODULE."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Without())
sys.argv = ["vae-infer", *sys.argv[1:]]
runpy.run_module("vae_infer", run_name="__main__", alter_sys=True)
"""
WITHOUT_MATPLOTLIB = WITHOUT.replace("MODULE", "matplotlib")


def test_the_interpreter_without_matplotlib_really_lacks_it():
    r = _run(["-c", WITHOUT_MATPLOTLIB.replace('runpy.run_module("vae_infer"', 'import matplotlib  #'), "x"])
    assert r.returncode == 1 and "ModuleNotFoundError: No module named 'matplotlib'" in r.stderr


@pytest.mark.parametrize("command", [
    ["sample", "-n", "4", "--out", "{out}"],
    ["decode", "{codes}", "--out", "{out}"],
    ["reconstruct", str(ROOT / "tests" / "fixtures" / "tiny-images.npz"), "--out", "{out}"],
])
def test_png_without_matplotlib_is_refused_before_any_file_is_written(tmp_path, command):
    codes = tmp_path / "codes.npy"
    np.save(codes, np.zeros((3, 2), np.float32))
    out = tmp_path / "out.npy"
    args = [a.format(out=out, codes=codes) for a in command]
    r = _run(["-c", WITHOUT_MATPLOTLIB, args[0], str(TINY_PACKAGE), *args[1:], "--png", str(tmp_path / "g.png")],
             cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --png {tmp_path / 'g.png'} needs matplotlib"), r.stderr
    assert "pip install 'vae-infer[viz]'" in lines[0]
    assert "save_image_grid" not in lines[0] and "Traceback" not in r.stderr  # no internal name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy"]  # nothing written, not even the .npy


def test_an_image_folder_without_pillow_is_refused_before_the_batch_folder_is_made(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as z:
        images = z["images"][:3].reshape(-1, 28, 28)
    for i, image in enumerate(images):
        Image.fromarray((image * 255).astype(np.uint8) if image.dtype != np.uint8 else image).save(folder / f"{i}.png")
    r = _run(["-c", WITHOUT.replace("MODULE", "PIL"), "batch", str(TINY_PACKAGE), str(folder), "--out",
              str(tmp_path / "out"), "--format", "npz"])
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == ["Error: reading PNG or JPEG files needs Pillow, which is not installed; "
                                             "install it with: pip install 'vae-infer[images]'"]
    assert not (tmp_path / "out").exists()  # no folder, no lock: nothing was started


# -- info: short by default, --full for the rest -------------------------------------------------------------


def test_info_is_short_by_default_and_full_on_request():
    import vae_infer

    man = vae_infer.load(SHIPPED, threads=1).manifest
    short = ok(CliRunner().invoke(vae_cli, ["info", str(SHIPPED)])).output
    full = ok(CliRunner().invoke(vae_cli, ["info", str(SHIPPED), "--full"])).output
    assert len(short.splitlines()) <= 15 < 40 < len(full.splitlines()), (short, full)
    assert short.startswith("name:         fashion-mnist\n")
    assert "format:       model package v1: ONNX encoder and decoder, bernoulli likelihood" in short
    assert "image shape:  28 x 28 (784 features)" in short and "latent size:  2" in short
    total = sum((SHIPPED / n).stat().st_size for n in man.files)
    assert f"files:        {len(man.files)}, {total / 1e6:.2f} MB in all, sha256 verified:" in short
    for name in man.files:  # every file with its size, in MB
        assert f"{name} {(SHIPPED / name).stat().st_size / 1e6:.2f} MB" in short, name
    t = man.training
    assert (f"test figures: -ELBO {t['test_nelbo']:.2f} nats/example; importance-weighted (k={t['iw_samples']}) "
            f"{t['test_iw_nll']:.2f};") in short
    assert "sections:     variants (int8, fp16, ort), calibration, latent index, latent map" in short
    assert "--full" in short
    for left_out in ("config.", "command:", "opset:", "CPUExecutionProvider", man.files["encoder.onnx"]):
        assert left_out not in short and left_out in full, left_out
    assert all(len(line) <= 100 for line in short.splitlines()), short
    info = json.loads(ok(CliRunner().invoke(vae_cli, ["info", str(SHIPPED), "--json"])).output)
    assert info["training"] == t and info["files"] == man.files and info["opset"] == man.opset  # whole, as before


def test_info_of_a_package_without_training_figures_or_sections():
    short = ok(CliRunner().invoke(vae_cli, ["info", str(TINY_PACKAGE)])).output
    assert "sections:     none" in short and "files:        2, " in short and "encoder.onnx 0." in short


# -- train: --resume --epochs, quiet by default --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    """700 real Fashion-MNIST training rows and 200 test rows: seconds per epoch."""
    from vae_infer.data.sources import load_images

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    (train, _), (test, _) = load_images("fashion-mnist", split="train"), load_images("fashion-mnist", split="test")
    np.savez(path, x_train=train[:700], x_test=test[:200])
    return path


def _fit_args(data: Path, run: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--dataset", str(data), "--validation-size", "100", "--iw-samples", "2", "--threads", "1",
            "--no-pictures", "--run-dir", str(run), "--out", str(out), *extra]


@needs_real_data
@pytest.mark.slow
def test_resume_extends_epochs_with_the_constant_schedule_only(tiny_npz, tmp_path):
    cli = _train_cli()
    run, out = tmp_path / "run", tmp_path / "model"
    ok(CliRunner().invoke(cli, _fit_args(tiny_npz, run, out, "--epochs", "1")))
    r = ok(CliRunner().invoke(cli, _fit_args(tiny_npz, run, out, "--epochs", "2", "--resume")))
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "epoch 2: train" in r.stderr and "epoch 1: train" not in r.stderr  # only the new epoch ran
    training = json.loads((out / "model.json").read_text())["training"]
    assert training["epochs_run"] == 2 and training["config"]["epochs"] == 2

    err = fails(CliRunner().invoke(cli, _fit_args(tiny_npz, run, out, "--epochs", "2", "--resume", "--lr", "0.002")))
    assert "--lr 0.001 -> 0.002" in err and "different configuration" in err
    assert "batch_size" not in err and "'dataset'" not in err  # the change, not the whole configuration
    fails(CliRunner().invoke(cli, _fit_args(tiny_npz, run, out, "--epochs", "1", "--resume")),
          "--resume --epochs 1", "already trained 2 epochs")

    cycle = tmp_path / "cycle"
    ok(CliRunner().invoke(cli, _fit_args(tiny_npz, cycle, tmp_path / "m2", "--epochs", "1", "--schedule", "onecycle")))
    fails(CliRunner().invoke(cli, _fit_args(tiny_npz, cycle, tmp_path / "m2", "--epochs", "2", "--schedule",
                                            "onecycle", "--resume")),
          "planned for 1 epochs with the onecycle schedule", "depends on the total number of epochs",
          "cannot be extended")
    assert len(json.loads((cycle / "history.json").read_text())) == 1  # refused before any training


NOISE = ("WARNING", "Warning", "warn(", "INFO", "DEBUG", "Please consider", "onnxruntime", "torch")


@needs_real_data
@pytest.mark.slow
def test_train_output_is_free_of_third_party_noise_and_verbose_shows_it(tiny_npz, tmp_path):
    run, out = tmp_path / "run", tmp_path / "model"
    fit = _run(["-m", "train", *_fit_args(tiny_npz, run, out, "--epochs", "1")], timeout=300)
    assert fit.returncode == 0, fit.stderr
    quantize_copy = tmp_path / "again"
    quantize_copy.mkdir()
    for f in out.iterdir():
        (quantize_copy / f.name).write_bytes(f.read_bytes())
    export = _run(["-m", "train", "export", str(out), "--quantize", "int8"], timeout=300)
    assert export.returncode == 0, export.stderr
    lines = (fit.stdout + fit.stderr + export.stdout + export.stderr).splitlines()
    ours = ("epoch 1: train ", "test -ELBO ", "model package: ", "run folder ", "variant int8: ")
    assert lines and all(line.startswith(ours) for line in lines), lines
    assert not [line for line in lines if any(n in line for n in NOISE)], lines

    verbose = _run(["-m", "train", "export", str(quantize_copy), "--quantize", "int8", "-v"], timeout=300)
    assert verbose.returncode == 0, verbose.stderr
    assert "Please consider to run pre-processing before quantization" in verbose.stderr
    assert "variant int8: " in verbose.stdout
