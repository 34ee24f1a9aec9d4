"""Batch jobs benchmark: files -> Parquet through the local engine and Ray Data, against the in-memory ceiling.

    python benchmarks/batch.py --json benchmarks/batch.json --markdown benchmarks/batch.md

Side by side in one run, on --rows rows (default 2,048,000) built from the 70,000 real Fashion-MNIST images
(train then test, repeated) written as one memory-mapped .npy input (uint8, 28x28):
  1. ceiling: model.encode on the same rows already in memory, in slices of --chunk rows, no files;
  2. local engine, 1 worker (all cores' threads) and 2 workers (cores/2 threads each): the file to Parquet;
  3. Ray Data on this machine (a local cluster, 2 actors, fractional CPUs), its start-up (ray.init) timed apart;
  4. peak anonymous memory (RssAnon) of the local engine at three input sizes, each in a fresh process.
Outputs mu,logvar (the encoder, what the ceiling measures). rows/s are end to end (start to the last part
written); per-row overhead = 1/rate - 1/ceiling. Targets: local >= 0.85 x ceiling; Ray (start-up excluded)
>= 0.7 x local; peak RssAnon within 20% across sizes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import common
import numpy as np
from common import ROOT, SHIPPED_MODEL

from vae_infer import load
from vae_infer.batch import BatchOptions, run_batch
from vae_infer.machine import available_cores
from vae_infer.sources import open_source

OUTPUTS = ("mu", "logvar")
MEMORY_GB = (0.5, 1.0, 2.0)  # input sizes of the memory runs, GB
TARGETS = {"local_vs_ceiling": 0.85, "ray_vs_local": 0.7, "memory_spread": 0.2}

_MEMORY_JOB = """
import json, sys, threading, time
from vae_infer.batch import BatchOptions, run_batch
peak, done = [0], [False]
def watch():
    while not done[0]:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
t = threading.Thread(target=watch, daemon=True); t.start()
t0 = time.perf_counter()
s = run_batch(sys.argv[1], [sys.argv[2]], sys.argv[3], BatchOptions(outputs=("mu", "logvar")), progress=False)
seconds = time.perf_counter() - t0
done[0] = True; t.join()
print(json.dumps({"peak_rss_anon_mb": peak[0] / 1024, "rows": s.rows, "seconds": seconds}))
"""


def build_input(path: Path, rows: int) -> Path:
    """rows real images (train then test, repeated), written block by block into a memory-mapped .npy."""
    images = np.concatenate([open_source("fashion-mnist", split=s).read_all() for s in ("train", "test")])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *images.shape[1:]))
    for start in range(0, rows, len(images)):
        n = min(len(images), rows - start)
        out[start : start + n] = images[:n]
    out.flush()
    del out
    return path


def ceiling(model_path: Path, data: Path, chunk: int) -> dict:
    """model.encode on rows already in memory (read from the file first, not timed)."""
    x = np.load(data)  # in memory on purpose: this is the ceiling without files
    model = load(model_path)
    model.encode(x[:chunk])  # warm up
    t0 = time.perf_counter()
    for s in range(0, len(x), chunk):
        model.encode(x[s : s + chunk])
    seconds = time.perf_counter() - t0
    return {"rows": len(x), "seconds": seconds, "rows_per_s": len(x) / seconds}


def local(model_path: Path, data: Path, out: Path, workers: int, chunk: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_batch(model_path, [str(data)], out, BatchOptions(outputs=OUTPUTS), workers=workers, chunk_rows=chunk,
                  progress=False)
    seconds = time.perf_counter() - t0
    threads = max(1, available_cores() // workers)
    return {"rows": s.rows, "seconds": seconds, "rows_per_s": s.rows / seconds, "workers": workers,
            "threads_per_worker": threads, "parts": s.parts_written}


def on_ray(model_path: Path, data: Path, out: Path, chunk: int, concurrency: int) -> dict:
    import ray

    from vae_infer.ray import default_num_cpus

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        num_cpus = default_num_cpus(concurrency)
        t1 = time.perf_counter()
        s = run_batch(model_path, [str(data)], out, BatchOptions(outputs=OUTPUTS), engine="ray", chunk_rows=chunk,
                      progress=False, ray_options={"concurrency": concurrency, "timeout_s": 3600})
        seconds = time.perf_counter() - t1
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        shutdown = time.perf_counter() - t2
    return {"rows": s.rows, "seconds": seconds, "rows_per_s": s.rows / seconds, "startup_s": startup,
            "shutdown_s": shutdown, "actors": concurrency, "num_cpus_per_actor": num_cpus}


def writer_cost(folder: Path, rows: int, chunk: int) -> dict:
    """What the process that writes the parts spends per row (building tables, Parquet, fsync): the driver's
    share of a Ray job, measured on output columns of the same size without a model."""
    from vae_infer.batch.parts import write_part

    rng = np.random.default_rng(0)
    blocks = [{"row": np.arange(s, min(s + chunk, rows), dtype=np.int64),
               "mu": rng.standard_normal((min(chunk, rows - s), 2), dtype=np.float32),
               "logvar": rng.standard_normal((min(chunk, rows - s), 2), dtype=np.float32)}
              for s in range(0, rows, chunk)]
    meta = {"job": "benchmark", "source": "input.npy", "start": 0, "stop": rows}
    t0 = time.perf_counter()
    write_part(folder / "writer.parquet", "parquet", meta, iter(blocks))
    seconds = time.perf_counter() - t0
    size = (folder / "writer.parquet").stat().st_size
    return {"rows": rows, "seconds": seconds, "us_per_row": 1e6 * seconds / rows, "bytes_per_row": size / rows}


def memory(model_path: Path, folder: Path, gb: float) -> dict:
    rows = int(gb * 1e9) // 784
    data = build_input(folder / f"mem-{gb}.npy", rows)
    out = folder / f"mem-out-{gb}"
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEMORY_JOB), str(model_path), str(data), str(out)],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    data.unlink()
    shutil.rmtree(out, ignore_errors=True)
    return {"input_gb": gb, **json.loads(res.stdout.strip().splitlines()[-1])}


def markdown(report: dict) -> str:
    r = report["results"]
    ceil = r["ceiling"]["rows_per_s"]

    def row(name: str, x: dict, note: str = "") -> list:
        overhead = 1e6 / x["rows_per_s"] - 1e6 / ceil
        return [name, f"{x['rows']:,}", f"{x['seconds']:.1f}", f"{x['rows_per_s']:,.0f}",
                f"{x['rows_per_s'] / ceil:.2f}", f"{overhead:+.2f}" if x is not r["ceiling"] else "0", note]

    rows = [row("in-memory model.encode (ceiling)", r["ceiling"], "no files"),
            row("local engine, 1 worker", r["local_1"], f"{r['local_1']['threads_per_worker']} threads"),
            row("local engine, 2 workers", r["local_2"], f"{r['local_2']['threads_per_worker']} thread(s) each")]
    if "ray" in r:
        rows.append(row("Ray Data, local cluster", r["ray"],
                        f"{r['ray']['actors']} actors x {r['ray']['num_cpus_per_actor']} CPU; start-up "
                        f"{r['ray']['startup_s']:.1f} s not included"))
    text = ["# Batch jobs: files to Parquet (benchmarks/batch.py)", "",
            f"{report['rows']:,} rows of real Fashion-MNIST images (uint8 28x28, one {report['input_gb']:.2f} GB "
            f".npy), outputs {','.join(OUTPUTS)}, the shipped model, tasks of {report['chunk']} rows. "
            f"Load average at start {report['environment']['load_average'][0]:.2f}, at end "
            f"{report['load_average_end'][0]:.2f} (the machine is shared: figures are one run, ratios side by side).",
            "", common.markdown_table(["", "rows", "s", "rows/s", "x ceiling", "overhead us/row", "notes"], rows)]
    w = r["writer"]
    text += [f"Writing the parts alone (the driver's share in a Ray job; {w['rows']:,} rows of mu,logvar built "
             f"without a model): {w['us_per_row']:.2f} us/row, {w['bytes_per_row']:.1f} bytes/row of Parquet.", ""]
    mem = report["results"]["memory"]
    text += ["Peak anonymous memory (RssAnon) of the local engine, 1 worker, each size in a fresh process:", "",
             common.markdown_table(["input", "rows", "peak RssAnon MB", "rows/s"],
                                   [[f"{m['input_gb']} GB", f"{m['rows']:,}", f"{m['peak_rss_anon_mb']:.0f}",
                                     f"{m['rows'] / m['seconds']:,.0f}"] for m in mem])]
    t = report["targets"]
    text += ["Targets:", ""] + [f"- {k}: {v['value']:.2f} (target {v['target']}) — {'met' if v['met'] else 'NOT met'}"
                                for k, v in t.items()]
    return "\n".join(text) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    ap.add_argument("--rows", type=int, default=2_048_000)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="where the input and outputs go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    env = common.environment()
    work = Path(tempfile.mkdtemp(prefix="vae-batch-bench-", dir=args.workdir))
    try:
        data = build_input(work / "input.npy", args.rows)
        results = {"ceiling": ceiling(args.model, data, args.chunk)}
        print("ceiling", results["ceiling"], flush=True)
        for w in (1, 2):
            results[f"local_{w}"] = local(args.model, data, work / f"out-local-{w}", w, args.chunk)
            print(f"local {w}", results[f"local_{w}"], flush=True)
        if not args.no_ray:
            results["ray"] = on_ray(args.model, data, work / "out-ray", args.chunk, args.concurrency)
            print("ray", results["ray"], flush=True)
        results["writer"] = writer_cost(work, min(args.rows, 1_000_000), args.chunk)
        print("writer", results["writer"], flush=True)
        input_gb = data.stat().st_size / 1e9
        data.unlink()
        results["memory"] = [memory(args.model, work, gb) for gb in MEMORY_GB]
        print("memory", results["memory"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best_local = max(results["local_1"]["rows_per_s"], results["local_2"]["rows_per_s"])
    peaks = [m["peak_rss_anon_mb"] for m in results["memory"]]
    targets = {"local_vs_ceiling": {"value": best_local / results["ceiling"]["rows_per_s"],
                                    "target": TARGETS["local_vs_ceiling"]},
               "memory_spread": {"value": max(peaks) / min(peaks) - 1, "target": TARGETS["memory_spread"]}}
    targets["local_vs_ceiling"]["met"] = targets["local_vs_ceiling"]["value"] >= TARGETS["local_vs_ceiling"]
    targets["memory_spread"]["met"] = targets["memory_spread"]["value"] <= TARGETS["memory_spread"]
    if "ray" in results:
        v = results["ray"]["rows_per_s"] / best_local
        targets["ray_vs_local"] = {"value": v, "target": TARGETS["ray_vs_local"], "met": v >= TARGETS["ray_vs_local"]}
    report = {"benchmark": "batch", "rows": args.rows, "input_gb": input_gb, "chunk": args.chunk,
              "outputs": list(OUTPUTS), "model": str(args.model), "environment": env, "results": results,
              "targets": targets, "load_average_end": list(os.getloadavg()),
              "command": "python benchmarks/batch.py " + " ".join(sys.argv[1:])}
    md = markdown(report)
    common.write_report(report, args.json, md, args.markdown)
    print(md)


if __name__ == "__main__":
    main()
