"""Batch jobs that never mix, lose or blow up (the local engine, real files, real processes): the output folder
read as one table by every Parquet reader, one writer per folder, inputs pinned against changes in the middle
of a run and between a kill and a resume, truncation as a clear error, decompression bombs within the stated
memory bound, hostile Parquet columns, and a user's folder that looks like a leftover."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_module, needs_real_data
from vae_infer import load
from vae_infer.batch import BatchOptions, read_results, run_batch
from vae_infer.data.sources import open_source
from vae_infer.errors import DataError, InputError

pytestmark = [needs_real_data, needs_module("pyarrow", "parquet")]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
JOB_RSS_ANON_BOUND_KIB = 256 << 10  # docs/batch.md: a local job (1 worker, default chunk rows) stays under this
WAIT_S = 120.0


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return open_source("fashion-mnist", split="test").read(0, 4000)


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vae_infer", "batch", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _slow_job(package: Path, data: Path, out: Path) -> subprocess.Popen:
    """A job that takes several seconds (iwae with many samples, small parts), so that something can happen to it."""
    return _cli(str(package), str(data), "--out", str(out), "--outputs", "mu,score", "--kind", "iwae", "--samples",
                "256", "--part-rows", "1024", "--chunk-rows", "256", "--quiet")


def _wait_for(what, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the job")
        time.sleep(0.02)


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, err


def _only_rows_of(out: Path, x: np.ndarray, package: Path) -> int:
    """Every result row's mu is the model's mu of that row of `x` (one version of the input): the row count."""
    r = read_results(out)
    mu, _ = load(package, threads=1).encode(x[r["row"]])
    assert np.abs(r["mu"] - mu).max() <= 1e-5
    return len(r["row"])


def test_the_output_folder_reads_as_one_table_with_every_reader(tiny_package, images, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    import pandas as pd
    import pyarrow.dataset as ds

    np.save(tmp_path / "a.npy", images[:700])
    np.save(tmp_path / "b.npy", images[700:1000])
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    out = tmp_path / "out"
    run_batch(tiny_package, [str(tmp_path / n) for n in ("a.npy", "b.npy", "bad.npy")], out,
              BatchOptions(outputs=("mu", "score"), kind="recon", part_rows=256), skip_bad=True)
    side = sorted(p.name for p in out.iterdir() if not p.name.startswith("part-"))
    assert side == ["_failures.jsonl", "_job.json", "_lock"]  # every side file starts with _
    assert json.loads((out / "_failures.jsonl").read_text().splitlines()[0])["source"].endswith("bad.npy")
    want = sorted((str(tmp_path / "a.npy"), i) for i in range(700)) + sorted(
        (str(tmp_path / "b.npy"), i) for i in range(300))
    tables = {
        "pyarrow.dataset": ds.dataset(out, format="parquet").to_table().to_pandas(),
        "pandas": pd.read_parquet(out),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{out}/*.parquet')").df(),
        # Polars 2.1 reads a folder only when every file in it is Parquet, `_` names included: the glob, as DuckDB
        "polars": pl.read_parquet(f"{out}/*.parquet").to_pandas(),
    }
    for reader, df in tables.items():
        assert sorted(zip(df["source"].astype(str), df["row"].astype(int), strict=True)) == sorted(want), reader
        assert np.isfinite(df["score"].to_numpy(float)).all() and len(df["mu"].iloc[0]) == 2, reader


@pytest.mark.slow
def test_a_second_job_on_the_same_folder_fails_at_once_naming_the_first(tiny_package, images, tmp_path):
    np.save(tmp_path / "in1.npy", images[:3000])
    np.save(tmp_path / "in2.npy", images[3000:])
    out = tmp_path / "out"
    first = _slow_job(tiny_package, tmp_path / "in1.npy", out)
    _wait_for(lambda: (out / "_lock").is_file() and (out / "_lock").read_text().strip() == str(first.pid))
    t0 = time.monotonic()
    second = _cli(str(tiny_package), str(tmp_path / "in2.npy"), "--out", str(out), "--outputs", "mu")
    code, err = _finish(second)
    assert code == 1 and f"PID {first.pid}" in err and "another batch job" in err, err
    assert time.monotonic() - t0 < WAIT_S and first.poll() is None  # refused at once, while the first runs
    first.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed holder
    first.wait()
    third = run_batch(tiny_package, [str(tmp_path / "in1.npy")], out,
                      BatchOptions(outputs=("mu", "score"), kind="iwae", samples=256, part_rows=1024),
                      chunk_rows=256)
    assert third.resumed and third.rows == 3000
    assert set(read_results(out)["source"].tolist()) == {str(tmp_path / "in1.npy")}


@pytest.mark.slow
def test_an_input_rewritten_mid_run_stops_the_job_and_nothing_mixes(tiny_package, images, tmp_path):
    data, out = tmp_path / "in.npy", tmp_path / "out"
    old = images[:3000]
    np.save(data, old)
    job = _slow_job(tiny_package, data, out)
    _wait_for(lambda: len(_parts(out)) >= 1)
    np.save(data, old[::-1])  # same shape, other contents, while the job runs
    code, err = _finish(job)
    assert code == 1 and str(data) in err and "while the job ran" in err, err
    assert 1024 <= _only_rows_of(out, old, tiny_package) < 3000  # parts of the old contents only
    with pytest.raises(InputError, match=rf"input {data} changed \(.*content sha256"):
        run_batch(tiny_package, [str(data)], out, BatchOptions(outputs=("mu", "score"), kind="iwae", samples=256,
                                                              part_rows=1024))


@pytest.mark.slow
def test_an_input_rewritten_between_a_kill_and_the_resume_is_refused(tiny_package, images, tmp_path):
    data, out = tmp_path / "in.npy", tmp_path / "out"
    old = images[:3000]
    np.save(data, old)
    job = _slow_job(tiny_package, data, out)
    _wait_for(lambda: len(_parts(out)) >= 1)
    job.send_signal(signal.SIGKILL)
    job.wait()
    st = data.stat()
    np.save(data, old[::-1])  # same size...
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the modification time put back
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    code, err = _finish(_slow_job(tiny_package, data, out))
    assert code == 1 and f"input {data} changed (content sha256" in err, err
    assert _only_rows_of(out, old, tiny_package) >= 1024


@pytest.mark.slow
def test_a_file_truncated_mid_run_is_a_clear_error_not_sigbus(tiny_package, images, tmp_path):
    data, out = tmp_path / "in.npy", tmp_path / "out"
    np.save(data, images[:3000])
    job = _slow_job(tiny_package, data, out)
    _wait_for(lambda: len(_parts(out)) >= 1)
    os.truncate(data, data.stat().st_size // 2)
    code, err = _finish(job)
    assert code == 1, (code, err)  # not -7 (SIGBUS)
    assert str(data) in err and "truncated" in err and len(err.strip().splitlines()) == 1, err
    assert _only_rows_of(out, images[:3000], tiny_package) >= 1024


# -- decompression bombs: the job's peak RssAnon, measured in its own process ---------------------------------

_MEASURE = """
import json, sys, threading, time
peak = [0]
def sample():
    while True:
        with open("/proc/self/status") as f:
            peak[0] = max(peak[0], next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")))
        time.sleep(0.002)
if __name__ == "__main__":
    threading.Thread(target=sample, daemon=True).start()
    from vae_infer.batch import BatchOptions, run_batch
    try:
        result = run_batch(sys.argv[1], [sys.argv[2]], sys.argv[3], BatchOptions(outputs=("mu",))).rows
    except Exception as e:
        result = f"{type(e).__name__}: {e}"
    time.sleep(0.05)
    print(json.dumps({"peak_kib": peak[0], "result": result}))
"""
BOMB_ROWS = 300_000  # 235 MB of zeros from a few hundred kB (the measured 1.9 MB ones: docs/batch.md)
PIECE_ROWS = 4096


def _npy_head(rows: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (rows, 28, 28)})
    return buf.getvalue()


def _bomb(kind: str, d: Path) -> str:
    zeros = bytes(784 * PIECE_ROWS)
    if kind == "npz":
        with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w",
                                                                                        force_zip64=True) as f:
            f.write(_npy_head(BOMB_ROWS))
            for s in range(0, BOMB_ROWS, PIECE_ROWS):
                f.write(zeros[: 784 * min(PIECE_ROWS, BOMB_ROWS - s)])
        return str(d / "bomb.npz")
    if kind == "idx.gz":
        with gzip.open(d / "bomb-idx.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (BOMB_ROWS, 28, 28)))
            for s in range(0, BOMB_ROWS, PIECE_ROWS):
                g.write(zeros[: 784 * min(PIECE_ROWS, BOMB_ROWS - s)])
        return str(d / "bomb-idx.gz")
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunk = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(784 * PIECE_ROWS, np.uint8)), 784)
    column = pa.chunked_array([chunk] * (BOMB_ROWS // PIECE_ROWS))  # one buffer, many times: no big array here
    pq.write_table(pa.table({"img": column}), d / "bomb.parquet", compression="zstd", row_group_size=BOMB_ROWS)
    assert pq.read_metadata(d / "bomb.parquet").num_row_groups == 1
    return f"{d / 'bomb.parquet'}:img"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "idx.gz", "parquet"])
def test_a_decompression_bomb_stays_within_the_stated_memory_bound(tiny_package, tmp_path, kind):
    spec = _bomb(kind, tmp_path)
    assert Path(spec.split(":")[0] if kind == "parquet" else spec).stat().st_size < 1 << 20
    (tmp_path / "measure.py").write_text(_MEASURE)
    run = subprocess.run([sys.executable, str(tmp_path / "measure.py"), str(tiny_package), spec,
                          str(tmp_path / "out")], env=ENV, capture_output=True, text=True, timeout=600)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    rows = BOMB_ROWS - BOMB_ROWS % PIECE_ROWS if kind == "parquet" else BOMB_ROWS
    assert report["result"] == rows, report
    assert 0 < report["peak_kib"] < JOB_RSS_ANON_BOUND_KIB, report


def test_a_npz_member_whose_declared_size_disagrees_with_its_shape_is_refused_before_decompressing(tmp_path):
    with zipfile.ZipFile(tmp_path / "lie.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy_head(10**9) + bytes(784 * 10))  # the header claims a billion images
    from vae_infer.batch.readers import open_rows

    with pytest.raises(DataError, match=r"lie.npz:x: the archive declares \d+ bytes for this member but its header"):
        open_rows(str(tmp_path / "lie.npz"))


# -- hostile Parquet columns ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parquet_nulls_wrong_types_and_widths_are_refused_naming_column_and_row(tiny_package, images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = images[:50].reshape(50, -1)
    rows = [r.tobytes() for r in x]
    values = [list(map(int, r)) for r in x]
    cases = {
        "null_row": (pa.array(rows[:17] + [None] + rows[18:], pa.binary()), "row 17 is null"),
        "null_pixel": (pa.array(values[:9] + [values[9][:5] + [None] + values[9][6:]] + values[10:],
                                pa.list_(pa.uint8())), "row 9 holds a null value"),
        "short_row": (pa.array(rows[:30] + [rows[30][:700]] + rows[31:], pa.binary()),
                      "row 30 holds 700 values, expected 784"),
        "text": (pa.array(["x"] * 50), "expected a column of fixed-size lists"),
    }
    pq.write_table(pa.table({k: v for k, (v, _) in cases.items()}), tmp_path / "t.parquet", row_group_size=20)
    for column, (_, fragment) in cases.items():
        with pytest.raises(DataError, match=rf"t.parquet:{column}: .*{fragment}"):
            run_batch(tiny_package, [f"{tmp_path / 't.parquet'}:{column}"], tmp_path / f"o-{column}",
                      BatchOptions(outputs=("mu",)))


def test_options_a_kind_ignores_or_past_the_maxima_are_refused():
    from vae_infer.work_limits import MAX_SAMPLES

    with pytest.raises(InputError, match=r"samples=8 is ignored here \(the 'recon' score does not sample\)"):
        BatchOptions(outputs=("score",), kind="recon", samples=8)
    with pytest.raises(InputError, match=r"samples=8 is ignored here \(there is no score output\)"):
        BatchOptions(outputs=("mu",), samples=8)
    with pytest.raises(InputError, match=rf"samples must be at most {MAX_SAMPLES}"):
        BatchOptions(outputs=("score",), kind="iwae", samples=MAX_SAMPLES + 1)
    opts = BatchOptions(outputs=("score",), kind="iwae", samples=MAX_SAMPLES)
    assert BatchOptions.from_dict(opts.to_dict()) == opts
    plain = BatchOptions(outputs=("mu", "score"), kind="recon")
    assert BatchOptions.from_dict(plain.to_dict()) == plain


# -- a user's folder that looks like a leftover -----------------------------------------------------------------


@pytest.mark.slow
def test_a_users_old_backup_folder_survives_every_writer(tiny_copy, images, tmp_path):
    """A 2-hour-old `.NAME.old-backup` (and `.NAME.new-1`) beside a package and beside every file written:
    calibrate, index build and export-c rewrite the package or write files, encode writes an array, batch writes
    parts; none of them touches it."""
    from click.testing import CliRunner

    from vae_infer.cli import main

    np.save(tmp_path / "x.npy", images[:600])
    targets = [tiny_copy, tmp_path / "codes.npz", tmp_path / "c-out" / "vae.c", tmp_path / "out" / "_job.json"]
    keep = []
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        for tail in ("old-backup", "new-1"):
            folder = target.parent / f".{target.name}.{tail}"
            folder.mkdir()
            (folder / "mine.txt").write_text("do not delete")
            os.utime(folder, (time.time() - 7200,) * 2)
            keep.append(folder)
    runner = CliRunner()
    for args in (["calibrate", str(tiny_copy), "--data", str(tmp_path / "x.npy")],
                 ["index", "build", str(tiny_copy), "--data", str(tmp_path / "x.npy")],
                 ["export-c", str(tiny_copy), "--out", str(tmp_path / "c-out")],
                 ["encode", str(tiny_copy), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npz")],
                 ["batch", str(tiny_copy), str(tmp_path / "x.npy"), "--out", str(tmp_path / "out")]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert all((f / "mine.txt").read_text() == "do not delete" for f in keep)


def test_a_folder_written_by_the_earlier_version_is_refused_with_what_to_do(tiny_package, images, tmp_path):
    """Folders of the version before side files were named _* (failures.jsonl, a version-1 _job.json)."""
    np.save(tmp_path / "a.npy", images[:100])
    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({"version": 1, "model": {"sha256": "0" * 64, "path": "m"},
                                               "options": {}, "inputs": []}))
    (out / "failures.jsonl").write_text("")
    with pytest.raises(InputError, match=r"written by another version of vae-infer \(record version 1, this one "
                                         r"writes 2\)\); use a new --out folder, or delete"):
        run_batch(tiny_package, [str(tmp_path / "a.npy")], out, BatchOptions(outputs=("mu",)))
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "_lock", "failures.jsonl"]  # nothing written


@pytest.mark.slow
def test_a_parquet_page_larger_than_the_readers_limit_is_refused_not_allocated_here(tiny_package, tmp_path,
                                                                                     monkeypatch):
    """One honest 250 MB page (its footer agrees): pyarrow allocates a page whole, so the bound is the reader
    process's memory limit, enforced by the kernel; here set to 160 MiB to keep the test small."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import vae_infer.data.parquet as ps

    rows = 320_000
    chunk = pa.array([bytes(784)] * PIECE_ROWS, pa.binary(784))
    table = pa.table({"img": pa.chunked_array([chunk] * (rows // PIECE_ROWS))})
    pq.write_table(table, tmp_path / "page.parquet", compression="zstd", use_dictionary=False,
                   data_page_size=1 << 30, row_group_size=rows)
    del table, chunk
    assert (tmp_path / "page.parquet").stat().st_size < 1 << 20
    monkeypatch.setattr(ps, "READER_MEMORY", 160 << 20)
    with pytest.raises(DataError, match=r"page.parquet:img: decoding needs more than the reader's 160 MiB"):
        run_batch(tiny_package, [f"{tmp_path / 'page.parquet'}:img"], tmp_path / "out", BatchOptions(outputs=("mu",)))
