"""The Ray engine (vae_infer.ray, run_batch(engine="ray")) on a real two-node Ray cluster on this machine: output
equal to the local engine and to the model's API, the package passed by value to both nodes, an actor killed in
the middle of a job. One cluster for the module; every Ray job has a timeout."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_module, needs_real_data
from vae_infer import load
from vae_infer.batch import BatchOptions, read_results, run_batch
from vae_infer.data.sources import open_source
from vae_infer.errors import ModelPackageError

pytestmark = [needs_module("ray", "ray"), needs_module("pyarrow", "parquet"), needs_real_data]
JOB_TIMEOUT_S = 120  # a Ray job that cannot be scheduled waits silently: every job here has a deadline
SLOT = "vae_test_slot"  # one per node: actors that ask for one land on different nodes


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each, in this machine; the test process is their driver."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {SLOT: 1},
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, resources={SLOT: 1})
    ray.init(address=c.address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return open_source("fashion-mnist", split="test").read(0, 4000)


def _within(fn, timeout_s: float = JOB_TIMEOUT_S):
    """fn() in a daemon thread, or a test failure after timeout_s (the stuck thread is left behind, not joined)."""
    box: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: box.put(_attempt(fn)), daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        pytest.fail(f"the Ray job did not finish within {timeout_s} s")
    if not ok:
        raise value
    return value


def _attempt(fn) -> tuple[bool, object]:
    try:
        return True, fn()
    except BaseException as e:
        return False, e


def test_ray_engine_equals_local_engine_and_the_model(cluster, tiny_package, images, tmp_path):
    np.save(tmp_path / "a.npy", images[:2500])
    np.save(tmp_path / "b.npy", (images[2500:] / 255.0).astype(np.float32))
    inputs = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    opts = BatchOptions(outputs=("mu", "logvar", "score"), kind="nelbo", samples=2, part_rows=1000)
    local = run_batch(tiny_package, inputs, tmp_path / "local", opts, chunk_rows=300)
    remote = run_batch(tiny_package, inputs, tmp_path / "ray", opts, engine="ray", chunk_rows=700,
                       ray_options={"concurrency": 2, "timeout_s": JOB_TIMEOUT_S})
    assert local.rows == remote.rows == len(images) and remote.parts_written == 5
    a, b = read_results(tmp_path / "local"), read_results(tmp_path / "ray")
    pairs = list(zip(b["source"].tolist(), b["row"].tolist(), strict=True))
    assert len(set(pairs)) == len(pairs) == len(images)
    np.testing.assert_array_equal(a["source"], b["source"])
    np.testing.assert_array_equal(a["row"], b["row"])
    for k in ("mu", "logvar", "score"):
        assert np.abs(a[k] - b[k]).max() <= 1e-6 * max(1.0, np.abs(a[k]).max()), k
    mu, logvar = load(tiny_package, threads=1).encode(images)
    assert np.abs(b["mu"] - mu).max() <= 1e-6 and np.abs(b["logvar"] - logvar).max() <= 1e-6


def test_map_model_runs_on_both_nodes_with_the_package_passed_by_value(cluster, tiny_package, images, tmp_path):
    import ray

    import vae_infer.ray as vray

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    ds = ray.data.from_numpy(np.array_split(images, 40))  # images in the "data" column, 40 blocks of 100
    out = vray.map_model(ds, package, outputs=["mu", "logvar"], concurrency=2, num_cpus=0.5, batch_size=50,
                         with_node=True, resources={SLOT: 1})
    shutil.rmtree(package)  # the actors start after this: they can only have the bytes sent through Ray
    rows = _within(lambda: out.take_all())
    nodes = {r["node_id"] for r in rows}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]} and len(nodes) == 2
    mu = np.stack([r["mu"] for r in rows])
    ref, _ = load(tiny_package, threads=1).encode(images)
    assert mu.shape == ref.shape
    assert np.abs(np.sort(mu, axis=0) - np.sort(ref, axis=0)).max() <= 1e-6  # map_batches may reorder blocks


def test_the_worker_refuses_a_package_that_changed_on_the_way(cluster, tiny_package):
    from vae_infer.batch.options import BatchOptions as Options
    from vae_infer.ray import ModelMapper, package_payload

    files, digest = package_payload(tiny_package)
    assert digest == hashlib.sha256((tiny_package / "model.json").read_bytes()).hexdigest()
    damaged = {**files, "model.json": files["model.json"].replace(b'"latent_size"', b'"latent_size" ')}
    with pytest.raises(ModelPackageError, match="damaged on the way"):
        ModelMapper([damaged], digest, Options().to_dict(), 1, "data")


def test_sampled_scores_on_ray_are_keyed_by_the_row_column_not_the_batch_position(cluster, tiny_package, images):
    """The same rows, in a batch of their own or after other rows, get the same sampled scores: the noise is
    keyed by (seed, source, row) from the `row` column, as in the batch engine."""
    from vae_infer.batch.options import BatchOptions as Options
    from vae_infer.ray import ModelMapper, package_payload

    files, digest = package_payload(tiny_package)
    mapper = ModelMapper([files], digest, Options(outputs=("score",), kind="nelbo").to_dict(), 1, "data")
    x = images[:6]
    whole = mapper({"data": x, "source": np.full(6, "a.npy"), "row": np.arange(6)})
    tail = mapper({"data": x[3:], "source": np.full(3, "a.npy"), "row": np.arange(3, 6)})
    np.testing.assert_array_equal(tail["row"], [3, 4, 5])
    np.testing.assert_array_equal(tail["score"], whole["score"][3:])


def _map_workers() -> list[int]:
    """Pids of the Ray Data actors this test process's cluster runs for map_model (its descendants only)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "MapBatches(ModelMapper)" in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def test_a_killed_actor_does_not_lose_or_repeat_rows(cluster, tiny_package, images, tmp_path):
    data = tmp_path / "big.npy"
    np.save(data, np.concatenate([images] * 6))  # 24k rows, 24 parts of iwae: several seconds of work
    opts = BatchOptions(outputs=("mu", "score"), kind="iwae", samples=8, part_rows=1000)
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
            time.sleep(0.02)
        pids = _map_workers()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            killed.append(len(list(out.glob("part-*.parquet"))))

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    summary = run_batch(tiny_package, [str(data)], out, opts, engine="ray", chunk_rows=500,
                        ray_options={"concurrency": 2, "timeout_s": JOB_TIMEOUT_S})
    killer.join()
    assert len(killed) == 2 and killed[1] < 24, f"no actor was killed in the middle of the job: {killed}"
    assert summary.rows == summary.rows_computed == 24_000 and summary.parts_written == 24
    r = read_results(out)
    np.testing.assert_array_equal(r["row"], np.arange(24_000))  # each row exactly once, in order
    local = run_batch(tiny_package, [str(data)], tmp_path / "local", opts, chunk_rows=4000, threads=1)
    assert local.rows == 24_000
    np.testing.assert_allclose(read_results(tmp_path / "local")["score"], r["score"], rtol=1e-9)


def test_bad_rows_on_ray_stop_the_job_or_are_recorded(cluster, tiny_package, images, tmp_path):
    from vae_infer.errors import DataError

    np.save(tmp_path / "good.npy", images[:900])
    nan = (images[:900] / 255.0).astype(np.float32)
    nan[650, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inputs = [str(tmp_path / "good.npy"), str(tmp_path / "nan.npy")]
    opts = BatchOptions(outputs=("mu",), part_rows=300)
    ray_options = {"concurrency": 2, "timeout_s": JOB_TIMEOUT_S}
    with pytest.raises(DataError, match=r"nan.npy: .*NaN.*\(rows 600\.\.700; parts already written"):
        run_batch(tiny_package, inputs, tmp_path / "stop", opts, engine="ray", chunk_rows=100, ray_options=ray_options)
    summary = run_batch(tiny_package, inputs, tmp_path / "skip", opts, engine="ray", chunk_rows=100, skip_bad=True,
                        ray_options=ray_options)
    assert [(f["start"], f["stop"]) for f in summary.failures] == [(600, 700)]
    r = read_results(tmp_path / "skip")
    assert summary.rows == len(r["row"]) == 900 + 600  # nan.npy's third part (rows 600..900) is left out whole



def test_cli_reads_uris_with_ray_data(cluster, tiny_package, images, tmp_path):
    import pyarrow.dataset as pds
    from click.testing import CliRunner

    from tests.conftest import fails, ok
    from vae_infer.cli import main

    np.save(tmp_path / "a.npy", images[:1500])
    np.save(tmp_path / "b.npy", images[1500:2500])
    uris = [f"file://{tmp_path / 'a.npy'}", f"file://{tmp_path / 'b.npy'}"]
    runner = CliRunner()
    ok(runner.invoke(main, ["batch", str(tiny_package), *uris, "--out", str(tmp_path / "out"), "--engine", "ray",
                            "--outputs", "mu,score", "--kind", "recon", "--timeout", str(JOB_TIMEOUT_S)]))
    table = pds.dataset(tmp_path / "out", format="parquet").to_table()
    mu = table.column("mu").combine_chunks().to_numpy_ndarray()
    sources = np.array(table.column("source").to_pylist())
    model = load(tiny_package, threads=1)
    for uri, x in zip(uris, (images[:1500], images[1500:2500]), strict=True):
        got = mu[np.char.endswith(sources.astype(str), uri.split("/")[-1])]
        assert got.shape == (len(x), 2)
        ref, _ = model.encode(x)
        assert np.abs(np.sort(got, axis=0) - np.sort(ref, axis=0)).max() <= 1e-6  # Ray Data may reorder rows
    fails(runner.invoke(main, ["batch", str(tiny_package), uris[0], "--out", str(tmp_path / "o2"), "--engine", "ray",
                               "--outputs", "mu,score"]), "keys its noise by each row's index")
    fails(runner.invoke(main, ["batch", str(tiny_package), uris[0], "--out", str(tmp_path / "o3")]),
          "pass --engine ray")


_DEFAULTS_ON_TWO_CPUS = """
import sys
import numpy as np
import ray
import vae_infer.ray as vray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a new cluster of its own
ray.data.DataContext.get_current().enable_progress_bars = False
out = vray.map_model(ray.data.read_numpy(sys.argv[1]), sys.argv[2])  # every default: the documented path
print("rows", out.count(), "cpus per actor", vray.default_num_cpus(2))
"""


@pytest.mark.slow
def test_map_model_with_its_defaults_completes_on_a_two_cpu_cluster(tiny_package, images, tmp_path):
    """Actors sized by default leave a whole CPU for read_numpy's tasks (which ask for one each): the job ends."""
    import subprocess
    import sys

    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"s{i}.npy", images[i * 1000 : (i + 1) * 1000])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        run = subprocess.run([sys.executable, "-c", _DEFAULTS_ON_TWO_CPUS, str(folder), str(tiny_package)], env=env,
                             capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        pytest.fail("map_model with its defaults made no progress on a 2-CPU Ray cluster")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rows 4000 cpus per actor 0.5" in run.stdout, run.stdout


def test_map_model_with_its_defaults_completes_on_the_two_node_cluster(cluster, tiny_package, images, tmp_path):
    import ray

    import vae_infer.ray as vray

    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"s{i}.npy", images[i * 500 : (i + 1) * 500])
    out = vray.map_model(ray.data.read_numpy(str(folder)), tiny_package)
    table = _within(lambda: out.to_pandas())
    assert len(table) == 1500 and {"mu", "logvar"} <= set(table.columns)
    mu = np.stack(table["mu"].to_numpy())
    ref, _ = load(tiny_package, threads=1).encode(images[:1500])
    assert np.abs(np.sort(mu, axis=0) - np.sort(ref, axis=0)).max() <= 1e-6


def test_ray_data_reads_the_output_folder_as_it_is(cluster, tiny_package, images, tmp_path):
    import ray

    np.save(tmp_path / "a.npy", images[:800])
    (tmp_path / "bad.npy").write_bytes(b"junk")
    out = tmp_path / "out"
    run_batch(tiny_package, [str(tmp_path / "a.npy"), str(tmp_path / "bad.npy")], out,
              BatchOptions(outputs=("mu",), part_rows=300), skip_bad=True)
    assert (out / "_failures.jsonl").read_text() and (out / "_job.json").is_file() and (out / "_lock").is_file()
    df = _within(lambda: ray.data.read_parquet(str(out)).to_pandas())
    assert sorted(df["row"].tolist()) == list(range(800))


@pytest.mark.slow
def test_the_ray_engine_keeps_ray_log_lines_out_of_the_output(tiny_package, images, tmp_path):
    """`vae-infer batch --engine ray` prints its own summary only: Ray's log lines (INFO, WARNING, and the E-level
    line of its C++ core) go to OUT/_ray.log; --verbose shows them."""
    import re
    import subprocess
    import sys

    np.save(tmp_path / "a.npy", images[:1000])
    # RAY_ADDRESS=local: a cluster of its own, not the module's (which ray.init would otherwise find and join)
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "vae_infer", "batch", str(tiny_package), str(tmp_path / "a.npy"),
                          "--out", str(tmp_path / "out"), "--engine", "ray", "--outputs", "mu", "--timeout",
                          str(JOB_TIMEOUT_S)], env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("1000 rows in ") and len(run.stdout.strip().splitlines()) == 1, run.stdout
    assert run.stderr == "", run.stderr[-2000:]
    log = (tmp_path / "out" / "_ray.log").read_text()
    assert re.search(r"(INFO|WARNING) \S+\.py:\d+ --", log), log[-2000:]
