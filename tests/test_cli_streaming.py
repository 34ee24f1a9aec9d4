"""The command line streams: images go through the model a chunk at a time, outputs are written as they are made,
and the results equal the in-memory Python API's. The large tests measure a real `python -m vae_infer` process's
peak resident memory on a few hundred MB of real Fashion-MNIST rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import vae_infer
import vae_infer.cli.anomaly_commands  # noqa: F401  (registers detect and denoise on main)
from tests.conftest import FIXTURES, fails, needs_real_data, ok
from vae_infer import cli
from vae_infer.anomaly import scores as anomaly
from vae_infer.cli import anomaly_commands, model_commands
from vae_infer.cli.streams import write_rows
from vae_infer.errors import InputError

MODEL = FIXTURES / "tiny-model"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"
CHUNK = 10  # rows per chunk in the small tests: 32 images make four chunks, the last one short


def run(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture
def small(monkeypatch, tiny_copy, tiny_images):
    """The commands' model with chunks of CHUNK rows (calibrated, for detect), and the same model for the API."""
    model = vae_infer.load(tiny_copy, threads=1, chunk_size=CHUNK)
    anomaly.calibrate(model, tiny_images, iw_samples=4)
    for module in (model_commands, anomaly_commands):
        monkeypatch.setattr(module, "open_model", lambda path, device, threads: model)
    return model


@pytest.fixture
def images_npy(tmp_path, tiny_images) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, tiny_images)
    return path


# -- results equal the API's, chunk by chunk ----------------------------------------------------------------------


def test_image_commands_equal_the_api_across_chunks(small, tiny_images, images_npy, tmp_path):
    x = tiny_images
    ok(run("encode", MODEL, images_npy, "--out", tmp_path / "mu.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "mu.npy"), small.encode(x)[0])
    ok(run("encode", MODEL, images_npy, "--out", tmp_path / "codes.npz"))
    with np.load(tmp_path / "codes.npz") as z:
        np.testing.assert_array_equal(z["mu"], small.encode(x)[0])
        np.testing.assert_array_equal(z["logvar"], small.encode(x)[1])
    for suffix in (".npy", ".npz"):  # a one-array .npz is streamed too
        out = tmp_path / f"r{suffix}"
        assert "wrote 32 reconstructions (32 x 784)" in ok(run("reconstruct", MODEL, images_npy, "--out", out)).output
        got = _read(out, "images")
        assert got.dtype == np.float32 and got.shape == (32, 784)
        np.testing.assert_array_equal(got, small.reconstruct(x))
    ok(run("denoise", MODEL, images_npy, "--out", tmp_path / "d.npy", "--steps", 3))
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), small.denoise(x, steps=3))
    z = np.random.default_rng(0).standard_normal((25, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    ok(run("decode", MODEL, tmp_path / "z.npy", "--out", tmp_path / "x.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), small.decode(z))


def _read(path: Path, key: str) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    with np.load(path) as f:
        assert f.files == [key]
        return f[key]


def test_scores_and_flags_equal_the_api_across_chunks(small, tiny_images, images_npy, tmp_path):
    x = tiny_images
    ok(run("score", MODEL, images_npy, "--samples", 3, "--seed", 5, "--out", tmp_path / "s.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), small.score(x, samples=3, seed=5))
    ok(run("score", MODEL, images_npy, "--kind", "iwae", "--out", tmp_path / "iw.npy"))  # k = 64 draws a chunk
    np.testing.assert_array_equal(np.load(tmp_path / "iw.npy"), small.score(x, kind="iwae"))
    ok(run("detect", MODEL, images_npy, "--out", tmp_path / "flags.npz"))
    flags, scores = small.detect(x)
    with np.load(tmp_path / "flags.npz") as f:
        np.testing.assert_array_equal(f["flags"], flags)
        np.testing.assert_array_equal(f["scores"], scores)


def test_stored_npz_streams_and_compressed_npz_is_read_whole(small, tiny_images, tmp_path):
    np.savez(tmp_path / "stored.npz", images=tiny_images, other=np.zeros(3))
    np.savez_compressed(tmp_path / "packed.npz", images=tiny_images)
    expect = small.encode(tiny_images)[0]
    for name in ("stored.npz:images", "packed.npz"):
        ok(run("encode", MODEL, tmp_path / name, "--out", tmp_path / "mu.npy"))
        np.testing.assert_array_equal(np.load(tmp_path / "mu.npy"), expect)


# -- errors name the row of the whole input, and no half-written file is left -----------------------------------


def test_a_bad_row_in_a_later_chunk_is_named_and_leaves_no_file(small, tiny_images, tmp_path):
    x = tiny_images.astype(np.float32) / 255
    x[25, 3, 3] = np.nan  # in the third chunk
    np.save(tmp_path / "nan.npy", x)
    out = tmp_path / "r.npy"
    np.save(out, np.arange(4))
    for command in ("reconstruct", "denoise"):
        fails(run(command, MODEL, tmp_path / "nan.npy", "--out", out), "NaN or inf in 1 row(s), first at row 25")
    x[25, 3, 3] = 1.5
    np.save(tmp_path / "big.npy", x)
    fails(run("score", MODEL, tmp_path / "big.npy"), "found values in [0, 1.5] from row 20 on")
    np.testing.assert_array_equal(np.load(out), np.arange(4))  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file


@pytest.mark.slow
def test_a_fifo_named_like_an_array_file_is_refused_without_blocking(tmp_path):
    for name in ("in.npz", "in.npy"):
        os.mkfifo(tmp_path / name)  # opening it to read would wait for a writer that never comes
        result = subprocess.run([sys.executable, "-m", "vae_infer", "encode", MODEL, tmp_path / name, "--out",
                                 tmp_path / "o.npy"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "is not a regular file (a device, FIFO or socket)" in result.stderr


def test_write_rows_is_atomic_and_counts_its_rows(tmp_path):
    out = tmp_path / "a.npy"
    blocks = [np.full((3, 4), i, np.float32) for i in range(3)]
    write_rows(out, "a", (9, 4), np.float32, iter(blocks))
    np.testing.assert_array_equal(np.load(out), np.concatenate(blocks))
    write_rows(tmp_path / "a.npz", "images", (9, 4), np.float32, iter(blocks))
    with np.load(tmp_path / "a.npz") as f:
        assert f.files == ["images"]
        np.testing.assert_array_equal(f["images"], np.concatenate(blocks))

    def failing():
        yield blocks[0]
        raise InputError("the second chunk is bad")

    with pytest.raises(InputError, match="the second chunk is bad"):
        write_rows(out, "a", (9, 4), np.float32, failing())
    with pytest.raises(InputError, match="6 rows were made for an array of 9"):
        write_rows(out, "a", (9, 4), np.float32, iter(blocks[:2]))
    with pytest.raises(InputError, match=r"a block of rows shaped \(3, 5\) does not fit an array \(9, 4\)"):
        write_rows(out, "a", (9, 4), np.float32, iter([np.zeros((3, 5))]))
    np.testing.assert_array_equal(np.load(out), np.concatenate(blocks))  # every failure kept the complete file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.npz"]


# -- peak memory of a real process on a large input ----------------------------------------------------------------

LARGE_ROWS = 500_000  # 392 MB of uint8 28 x 28 images: the size the issue measured
GROWTH_BOUND = 96 << 20  # what the peak may grow from a one-chunk input to LARGE_ROWS, besides the codes kept
PEAK_BOUND = 300 << 20  # the whole process's peak, besides the output it keeps in memory


# Runs the command as `python -m vae_infer` does, then writes the process's /proc/self/status to a file: VmHWM there
# is the peak resident memory of this program alone (a child's ru_maxrss would also count the parent's pages it
# shared between fork and exec).
RUN_AND_REPORT = """
import runpy, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
try:
    runpy.run_module("vae_infer", run_name="__main__", alter_sys=True)
finally:
    report.write_text(Path("/proc/self/status").read_text())
"""


def _peak_rss(args: list[object], tmp_path: Path) -> int:
    """Run `python -m vae_infer ARGS` and return its peak resident set size in bytes (VmHWM: the file pages it
    maps count too)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    report = tmp_path / "status"
    result = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, str(report), *map(str, args), "--threads", "2"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    line = next(line for line in report.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


@pytest.fixture(scope="module")
def large_input(tmp_path_factory):
    from vae_infer.data.sources import open_source

    folder = tmp_path_factory.mktemp("large")
    train = open_source("fashion-mnist", split="train").read_all().reshape(-1, 784)  # real rows, repeated
    np.save(folder / "large.npy", np.resize(train, (LARGE_ROWS, 784)))
    np.save(folder / "one-chunk.npy", train[:4096])
    del train
    yield folder
    for path in folder.iterdir():  # a few GB: not kept for later runs to look at
        path.unlink()


@pytest.mark.slow
@needs_real_data
@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_peak_memory_does_not_grow_with_the_input(large_input, tmp_path, command):
    model = vae_infer.load(SHIPPED, threads=2)
    big, one = large_input / "large.npy", large_input / "one-chunk.npy"
    assert big.stat().st_size > 390e6
    out = tmp_path / f"{command}.npy"
    base = _peak_rss([command, SHIPPED, one, "--out", out], tmp_path)
    peak = _peak_rss([command, SHIPPED, big, "--out", out], tmp_path)
    kept = LARGE_ROWS * 2 * model.latent_size * 4 if command == "encode" else 0  # encode keeps mu and logvar
    print(f"{command}: peak {peak / 2**20:.0f} MiB on {big.stat().st_size / 2**20:.0f} MiB of input "
          f"({base / 2**20:.0f} MiB on one chunk)")
    assert peak - base < GROWTH_BOUND + kept, (peak, base)
    assert peak < PEAK_BOUND + kept, peak
    # what was written equals the in-memory API, at both ends of the file
    got = np.load(out, mmap_mode="r")
    x = np.load(big, mmap_mode="r")
    assert got.shape == ((LARGE_ROWS, model.latent_size) if command == "encode" else (LARGE_ROWS, 784))
    for rows in (slice(0, 4096), slice(LARGE_ROWS - 5000, LARGE_ROWS)):
        expect = model.encode(x[rows])[0] if command == "encode" else model.reconstruct(x[rows])
        np.testing.assert_allclose(got[rows], expect, rtol=1e-5, atol=1e-5)
    del got, x
    out.unlink()
