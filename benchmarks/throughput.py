"""Throughput and latency of a model package through vae_infer (onnxruntime, CPU), per batch size.

    python benchmarks/throughput.py models/fashion-mnist --batch-sizes 1,64,256,4096 --threads 2 \
        --json benchmarks/throughput.json --markdown benchmarks/throughput.md

Warm-up calls first, then repeated timed calls; load time is measured apart from call time. Results are
examples per second and latency percentiles; the machine and library versions are recorded beside them."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import vae_infer

WARMUP_CALLS = 5
MIN_SECONDS = 0.5  # time each (operation, batch size) for at least this long
MIN_CALLS = 20


def _time_calls(fn, x) -> list[float]:
    for _ in range(WARMUP_CALLS):
        fn(x)
    times, start = [], time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - start < MIN_SECONDS:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def run(model_dir: str, batch_sizes: list[int], threads: int) -> dict:
    t0 = time.perf_counter()
    model = vae_infer.load(model_dir, threads=threads)
    load_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rows = []
    for b in batch_sizes:
        images = rng.random((b, model.manifest.features), dtype=np.float32)
        z = rng.standard_normal((b, model.latent_size)).astype(np.float32)
        for op, fn, x in (("encode", model.encode, images), ("decode", model.decode, z),
                          ("reconstruct", model.reconstruct, images)):
            times = np.array(_time_calls(fn, x))
            rows.append({
                "operation": op, "batch": b, "calls": len(times), "seconds_total": float(times.sum()),
                "examples_per_second": b * len(times) / times.sum(),
                "latency_p50_us": float(np.percentile(times, 50) * 1e6),
                "latency_p90_us": float(np.percentile(times, 90) * 1e6),
                "latency_p99_us": float(np.percentile(times, 99) * 1e6),
            })
    return {
        "model": model_dir, "threads": threads, "load_seconds": load_seconds, "results": rows,
        "environment": {
            "cpu": _cpu_model(), "cores_available": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "vae_infer": vae_infer.__version__,
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Model `{report['model']}`, onnxruntime {env['onnxruntime']} on {env['cpu']} "
        f"({env['cores_available']} cores available), {report['threads']} intra-op threads; "
        f"load {report['load_seconds'] * 1000:.0f} ms.",
        "",
        "| operation | batch | examples/s | p50 µs | p90 µs | p99 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['operation']} | {r['batch']} | {r['examples_per_second']:,.0f} | "
                     f"{r['latency_p50_us']:,.0f} | {r['latency_p90_us']:,.0f} | {r['latency_p99_us']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="models/fashion-mnist")
    p.add_argument("--batch-sizes", default="1,64,256,4096")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()
    report = run(args.model, [int(b) for b in args.batch_sizes.split(",")], args.threads)
    md = to_markdown(report)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(md)


if __name__ == "__main__":
    main()
