"""Batch jobs (vae_infer.batch, vae-infer batch): results equal to the model's API on real Fashion-MNIST images,
every (source, row) exactly once, resume after a kill, refusal of another job's folder, bad shards, bounded
memory. The local engine only; tests/test_ray.py covers Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import fails, needs_module, needs_real_data, ok
from vae_infer import load
from vae_infer.anomaly import scores as anomaly
from vae_infer.batch import BatchOptions, read_results, run_batch
from vae_infer.batch.noise import row_normals, source_key
from vae_infer.batch.progress import Progress
from vae_infer.data.sources import open_source
from vae_infer.errors import DataError, InputError

pytestmark = [needs_real_data, needs_module("pyarrow", "parquet")]
ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 3000


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Real Fashion-MNIST test images, uint8 (n, 28, 28)."""
    return open_source("fashion-mnist", split="test").read(0, N_IMAGES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, images) -> dict[str, np.ndarray]:
    """The same images as four kinds of input: .npy uint8, .npz float32 rows, Parquet binary and float lists.
    Returns {spec: the images that input holds, as float32 rows in [0, 1]}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("shards")
    flat = images.reshape(len(images), -1)
    a, b, c = flat[:1300], flat[1300:2100], flat[2100:]
    np.save(d / "a.npy", images[:1300])
    np.savez(d / "b.npz", pixels=(b / 255.0).astype(np.float32), other=np.zeros(3))
    table = pa.table({"id": pa.array(np.arange(len(c))), "img": pa.array([r.tobytes() for r in c], pa.binary()),
                      "lst": pa.FixedSizeListArray.from_arrays(pa.array((c / 255.0).astype(np.float32).ravel()),
                                                               c.shape[1])})
    pq.write_table(table, d / "c.parquet", row_group_size=250)
    return {str(d / "a.npy"): a / 255.0, f"{d / 'b.npz'}:pixels": (b / 255.0).astype(np.float32),
            f"{d / 'c.parquet'}:img": c / 255.0}


def _by_source(results: dict, spec: str) -> np.ndarray:
    sel = results["source"] == spec
    return np.nonzero(sel)[0][np.argsort(results["row"][sel])]


def _exactly_once(results: dict, shards: dict) -> None:
    pairs = list(zip(results["source"].tolist(), results["row"].tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) == sum(len(v) for v in shards.values())
    for spec, x in shards.items():
        rows = np.sort(results["row"][results["source"] == spec])
        np.testing.assert_array_equal(rows, np.arange(len(x)))


@pytest.mark.slow
def test_local_engine_equals_the_model(tiny_package, shards, tmp_path):
    model = load(tiny_package, threads=1)
    opts = BatchOptions(outputs=("mu", "logvar", "score"), kind="recon", part_rows=600)
    summary = run_batch(tiny_package, list(shards), tmp_path / "out", opts, chunk_rows=250)
    assert (summary.rows, summary.parts_written, summary.parts_reused) == (N_IMAGES, 7, 0)
    r = read_results(tmp_path / "out")
    _exactly_once(r, shards)
    for spec, x in shards.items():
        idx = _by_source(r, spec)
        mu, logvar = model.encode(x)
        assert np.abs(r["mu"][idx] - mu).max() <= 1e-6
        assert np.abs(r["logvar"][idx] - logvar).max() <= 1e-6
        assert np.abs(r["score"][idx] - model.score(x, kind="recon")).max() <= 1e-6
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert record["model"]["sha256"] == __import__("hashlib").sha256((tiny_package / "model.json").read_bytes()
                                                                     ).hexdigest()
    assert [i["rows"] for i in record["inputs"]] == [len(x) for x in shards.values()]
    assert all(i["size"] > 0 and i["mtime_ns"] > 0 for i in record["inputs"])
    assert (tmp_path / "out" / "_failures.jsonl").read_text() == ""


@pytest.mark.slow
def test_sampled_scores_do_not_depend_on_the_split(tiny_package, shards, tmp_path):
    """nelbo and iwae with noise keyed by (seed, source, row): same numbers with other tasks, parts, workers;
    another seed gives other numbers with the same mean as score()."""
    specs = list(shards)[:2]
    runs = []
    for i, (part_rows, chunk_rows, workers, seed) in enumerate([(5000, 97, 1, 3), (700, 512, 2, 3), (5000, 400, 1, 4)]):
        opts = BatchOptions(outputs=("score",), kind="nelbo", samples=2, seed=seed, part_rows=part_rows)
        run_batch(tiny_package, specs, tmp_path / f"o{i}", opts, chunk_rows=chunk_rows, workers=workers, threads=1)
        r = read_results(tmp_path / f"o{i}")
        runs.append(r["score"][np.lexsort((r["row"], r["source"]))])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-9)  # the same draws; only float rounding may differ
    assert np.abs(runs[0] - runs[2]).max() > 0.01
    model = load(tiny_package, threads=1)
    x = np.concatenate([shards[s] for s in sorted(specs)])
    reference = model.score(x, kind="nelbo", samples=2, seed=3)
    assert abs(runs[0].mean() - reference.mean()) < 0.02 * reference.mean()
    opts = BatchOptions(outputs=("score",), kind="iwae", samples=4, part_rows=5000)
    run_batch(tiny_package, specs[:1], tmp_path / "iw", opts, chunk_rows=300)
    iw = read_results(tmp_path / "iw")["score"]
    x0 = shards[specs[0]]
    assert abs(iw.mean() - model.score(x0, kind="iwae", samples=4).mean()) < 0.02 * iw.mean()


def test_row_noise_is_a_function_of_its_coordinates():
    key = source_key(7, "data/a.npy")
    whole = row_normals(key, np.arange(0, 1000), 3, 2)
    np.testing.assert_array_equal(row_normals(key, np.arange(400, 410), 3, 2), whole[400:410])
    assert not np.array_equal(row_normals(source_key(7, "data/b.npy"), np.arange(0, 1000), 3, 2), whole)
    assert abs(whole.mean()) < 0.1 and abs(whole.std() - 1) < 0.1


@pytest.mark.slow
def test_flag_is_detect_and_npz_output_equals_parquet(tiny_copy, shards, tmp_path):
    model = load(tiny_copy, threads=1)
    calib = np.concatenate(list(shards.values()))[:500]
    anomaly.calibrate(model, calib, kinds=("recon", "dose"), default_kind="dose")
    spec = list(shards)[0]
    outs = {}
    for fmt in ("parquet", "npz"):
        opts = BatchOptions(outputs=("mu", "flag"), format=fmt, part_rows=500)
        run_batch(tiny_copy, [spec], tmp_path / fmt, opts, chunk_rows=300)
        outs[fmt] = read_results(tmp_path / fmt)
    assert sorted(p.suffix for p in (tmp_path / "npz").glob("part-*")) == [".npz"] * 3
    flags, _ = model.detect(shards[spec])
    np.testing.assert_array_equal(outs["parquet"]["flag"], flags)
    assert 0 < flags.sum() < len(flags)
    for k in ("row", "mu", "flag", "source"):
        np.testing.assert_array_equal(outs["parquet"][k], outs["npz"][k])


@pytest.mark.slow
def test_parquet_schema(tiny_package, shards, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    opts = BatchOptions(outputs=("mu", "logvar", "score"))
    run_batch(tiny_package, list(shards)[2:], tmp_path / "o", opts)
    (part,) = sorted((tmp_path / "o").glob("part-*.parquet"))
    table = pq.read_table(part)
    assert table.column_names == ["source", "row", "mu", "logvar", "score"]
    mu = table.schema.field("mu").type
    assert pa.types.is_fixed_size_list(mu) and mu.list_size == 2 and mu.value_type == pa.float32()
    assert table.schema.field("row").type == pa.int64() and table.schema.field("score").type == pa.float64()
    assert table.column("source").to_pylist()[:1] == [list(shards)[2]]


_KILLED_JOB = """
import sys
from vae_infer.batch import BatchOptions, run_batch
run_batch(sys.argv[1], [sys.argv[2]], sys.argv[3], BatchOptions(outputs=("mu", "score"), kind="iwae", samples=8,
          part_rows=1000), chunk_rows=250, threads=1)
"""


@pytest.mark.slow
def test_resume_after_sigkill_reuses_finished_parts(tiny_package, images, tmp_path):
    data = tmp_path / "big.npy"
    np.save(data, np.concatenate([images] * 10))  # 30k rows, 30 parts: a few seconds of iwae
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(tiny_package), str(data), str(out)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(before) < 30, "the job must be killed in the middle"
    summary = run_batch(tiny_package, [str(data)], out, BatchOptions(outputs=("mu", "score"), kind="iwae", samples=8,
                        part_rows=1000), chunk_rows=500, threads=1)
    assert summary.resumed and summary.parts_reused == len(before) and summary.parts_written == 30 - len(before)
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())
    assert not list(out.glob(".*.tmp"))  # no half-written part is left visible or hidden
    r = read_results(out)
    np.testing.assert_array_equal(r["row"], np.arange(30_000))
    fresh = run_batch(tiny_package, [str(data)], tmp_path / "fresh", BatchOptions(outputs=("mu", "score"), kind="iwae",
                      samples=8, part_rows=1000), chunk_rows=1000, workers=2, threads=1)
    assert fresh.rows == 30_000
    f = read_results(tmp_path / "fresh")
    np.testing.assert_array_equal(r["score"], f["score"])
    np.testing.assert_array_equal(r["mu"], f["mu"])


def test_another_job_in_the_same_folder_is_refused(tiny_package, shards, tmp_path):
    specs = list(shards)[:1]
    out = tmp_path / "out"
    run_batch(tiny_package, specs, out, BatchOptions(outputs=("mu",)))
    with pytest.raises(InputError, match=r"option kind changed \('nelbo' -> 'recon'\)"):
        run_batch(tiny_package, specs, out, BatchOptions(outputs=("mu",), kind="recon"))
    with pytest.raises(InputError, match=r"option outputs changed"):
        run_batch(tiny_package, specs, out, BatchOptions(outputs=("mu", "logvar")))
    data = Path(specs[0])
    x = np.load(data)
    np.save(tmp_path / "copy.npy", x)
    os.replace(tmp_path / "copy.npy", data)  # same content, a new modification time
    with pytest.raises(InputError, match=rf"input {data} changed \(mtime_ns .*\); use a new --out folder"):
        run_batch(tiny_package, specs, out, BatchOptions(outputs=("mu",)))
    same = run_batch(tiny_package, specs, tmp_path / "other", BatchOptions(outputs=("mu",)), workers=1)
    again = run_batch(tiny_package, specs, tmp_path / "other", BatchOptions(outputs=("mu",)), chunk_rows=64)
    assert (same.parts_written, again.parts_reused, again.parts_written) == (1, 1, 0)  # chunking is not the job


def _bad_shards(d: Path, images: np.ndarray) -> dict[str, str]:
    """{file: a fragment of the message that names its problem}."""
    np.save(d / "good.npy", images[:500])
    np.save(d / "truncated.npy", images[:500])
    with open(d / "truncated.npy", "r+b") as f:
        f.truncate(60_000)
    np.save(d / "shape.npy", images[:10, :20, :20])
    np.save(d / "dtype.npy", images[:10].astype(np.int32))
    nan = (images[:500] / 255.0).astype(np.float32)
    nan[420, 3, 3] = np.nan
    np.save(d / "nan.npy", nan)
    return {"truncated.npy": "truncated", "shape.npy": "expected images shaped (28, 28)",
            "dtype.npy": "found dtype int32", "nan.npy": "NaN", "missing.npy": "no such file"}


def test_bad_shards_stop_the_job_or_are_recorded(tiny_package, images, tmp_path):
    problems = _bad_shards(tmp_path, images)
    opts = BatchOptions(outputs=("mu",), part_rows=200)
    for name, fragment in problems.items():
        out = tmp_path / f"out-{name}"
        with pytest.raises(DataError) as e:
            run_batch(tiny_package, [str(tmp_path / "good.npy"), str(tmp_path / name)], out, opts, chunk_rows=100)
        assert name in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)
        if name == "nan.npy":  # found while computing: the good input's parts are written and kept
            assert "rows 400..500" in str(e.value)
            assert len(list(out.glob("part-00000-*.parquet"))) == 3 and len(list(out.glob("part-00001-*"))) == 2
    out = tmp_path / "skip"
    inputs = [str(tmp_path / n) for n in ["good.npy", *problems]]
    summary = run_batch(tiny_package, inputs, out, opts, chunk_rows=100, skip_bad=True)
    failures = [json.loads(line) for line in (out / "_failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["source"]).name for f in failures) == sorted(problems)
    assert [(f["start"], f["stop"]) for f in failures if f["source"].endswith("nan.npy")] == [(400, 500)]
    r = read_results(out)
    assert summary.rows == len(r["row"]) == 500 + 400  # good.npy, and nan.npy's parts before the bad rows
    assert set(r["source"]) == {str(tmp_path / "good.npy"), str(tmp_path / "nan.npy")}


@pytest.mark.slow
def test_cli_batch(tiny_package, shards, images, tmp_path):
    from vae_infer.cli import main

    runner = CliRunner()
    spec = list(shards)[0]
    out = tmp_path / "out"
    res = ok(runner.invoke(main, ["batch", str(tiny_package), spec, "--out", str(out), "--outputs", "mu,score",
                                  "--kind", "mse", "--json"]))
    summary = json.loads(res.stdout)
    assert summary["rows"] == len(shards[spec]) and summary["parts_written"] == 1
    assert "rows/s" not in res.stderr  # no progress bar when stderr is not a terminal
    r = read_results(out)
    assert np.abs(r["score"] - load(tiny_package).score(shards[spec], kind="mse")).max() < 1e-6
    res = ok(runner.invoke(main, ["batch", str(tiny_package), spec, "--out", str(out), "--outputs", "mu,score",
                                  "--kind", "mse"]))
    assert "1 reused from an earlier run" in res.stdout
    fails(runner.invoke(main, ["batch", str(tiny_package), spec, "--out", str(out), "--outputs", "mu"]),
          "option outputs changed", "use a new --out folder")
    _bad_shards(tmp_path, images)
    fails(runner.invoke(main, ["batch", str(tiny_package), str(tmp_path / "*.npy"), "--out", str(tmp_path / "o2")]),
          "dtype.npy", "found dtype int32")
    fails(runner.invoke(main, ["batch", str(tiny_package), str(tmp_path / "nothing-*.npy"), "--out",
                               str(tmp_path / "o3")]), "no file matches")
    res = ok(runner.invoke(main, ["batch", str(tiny_package), str(tmp_path / "*.npy"), "--out", str(tmp_path / "o4"),
                                  "--skip-bad", "--workers", "2"]))
    assert "skipped: see" in res.stderr
    assert len((tmp_path / "o4" / "_failures.jsonl").read_text().splitlines()) == 4
    res = runner.invoke(main, ["batch", str(tiny_package), spec, "--out", str(tmp_path / "o5"), "--outputs", "mu,z"])
    assert res.exit_code == 2 and "expected a comma-separated selection" in res.output


def test_progress_line():
    import io

    stream = io.StringIO()
    bar = Progress(1000, done=100, enabled=True, stream=stream)
    bar.t0 -= 2.0  # as if two seconds had passed
    bar.update(400)
    text = stream.getvalue()
    assert "500/1,000 rows" in text and "rows/s" in text and "ETA 0:00:0" in text
    quiet = Progress(1000, stream=io.StringIO())  # a StringIO is not a terminal
    quiet.update(10)
    assert not quiet.enabled and quiet.stream.getvalue() == ""


_MEMORY_JOB = """
import sys, threading, time
from vae_infer.batch import BatchOptions, run_batch
peak, done = [0], [False]
def watch():
    while not done[0]:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
t = threading.Thread(target=watch); t.start()
s = run_batch(sys.argv[1], [sys.argv[2]], sys.argv[3], BatchOptions(outputs=("mu",)), threads=1, progress=False)
done[0] = True; t.join()
print(peak[0], s.rows)
"""


@pytest.mark.slow
def test_memory_stays_flat_from_small_to_large_inputs(tiny_package, tmp_path):
    """Peak RssAnon of a job over a 0.2 GB and a 2 GB input (sparse files of black images, memory-mapped)."""
    peaks = {}
    for gb in (0.2, 2.0):
        rows = int(gb * 1e9) // 784
        data = tmp_path / f"sparse-{gb}.npy"
        np.lib.format.open_memmap(data, mode="w+", dtype=np.uint8, shape=(rows, 28, 28)).flush()
        assert os.stat(data).st_blocks * 512 < 1e6  # sparse: nothing written
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEMORY_JOB), str(tiny_package), str(data),
                              str(tmp_path / f"out-{gb}")], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        peak_kb, done = map(int, res.stdout.split())
        assert done == rows
        peaks[gb] = peak_kb
        data.unlink()
    assert peaks[2.0] <= 1.2 * peaks[0.2], peaks


@pytest.mark.slow
def test_parquet_source_reads_ranges_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(0).integers(0, 256, (1000, 784), dtype=np.uint8)
    table = pa.table({"fsl": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 784),
                      "bin": pa.array([r.tobytes() for r in x], pa.binary()),
                      "fixed": pa.array([r.tobytes() for r in x], pa.binary(784)),
                      "floats": pa.array(list((x / 255.0).astype(np.float32)), pa.list_(pa.float32())),
                      "ragged": pa.array([[1, 2]] * 999 + [[1]], pa.list_(pa.uint8())),
                      "text": pa.array(["a"] * 1000)})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=300)
    for column, want in [("fsl", x), ("bin", x), ("fixed", x), ("floats", (x / 255.0).astype(np.float32))]:
        source = open_source(f"{tmp_path / 't.parquet'}:{column}")
        assert (len(source), source.row_shape, source.dtype) == (1000, (784,), want.dtype)
        for start, stop in [(0, 1000), (250, 650), (299, 301), (900, 1000), (5, 5)]:
            np.testing.assert_array_equal(source.read(start, stop), want[start:stop])
    for spec, fragment in [("t.parquet", "name the image column"), ("t.parquet:nope", "no column named 'nope'"),
                           ("t.parquet:text", "expected a column of fixed-size lists"),
                           ("t.parquet:ragged", "every image must have the same size")]:
        with pytest.raises(DataError, match=fragment):
            open_source(tmp_path / spec.split(":")[0] if ":" not in spec else f"{tmp_path}/{spec}").read(0, 1000)
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "t.parquet").read_bytes()[:5000])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        open_source(f"{tmp_path / 'cut.parquet'}:fsl")


def test_flag_on_an_uncalibrated_model_is_refused_before_any_work(tiny_package, shards, tmp_path):
    from vae_infer.errors import ModelPackageError

    with pytest.raises(ModelPackageError, match="is not calibrated, so the flag output cannot be computed"):
        run_batch(tiny_package, list(shards)[0], tmp_path / "out", BatchOptions(outputs=("mu", "flag")))
    assert not (tmp_path / "out").exists()


def test_a_missing_extra_names_its_install_command(tiny_package, shards, tmp_path, monkeypatch):
    from vae_infer.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "ray", None)
    spec = list(shards)[0]
    with pytest.raises(MissingExtraError, match=r"pip install 'vae-infer\[parquet\]', or pass --format npz"):
        run_batch(tiny_package, [spec], tmp_path / "out", BatchOptions(outputs=("mu",)))
    with pytest.raises(MissingExtraError, match=r"pip install 'vae-infer\[parquet\]'"):
        open_source(f"{list(shards)[2].split(':')[0]}:img")
    with pytest.raises(MissingExtraError, match=r"pip install 'vae-infer\[ray\]'"):
        run_batch(tiny_package, [spec], tmp_path / "npz", BatchOptions(outputs=("mu",), format="npz"), engine="ray")
    summary = run_batch(tiny_package, [spec], tmp_path / "npz2", BatchOptions(outputs=("mu",), format="npz"))
    assert summary.rows == len(shards[spec])  # the npz format needs neither
