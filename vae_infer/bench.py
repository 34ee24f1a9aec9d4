"""The benchmark harness: throughput and latency of encode, decode and reconstruct per batch size,
thread count, device and variant, with the machine recorded beside the numbers.

Load time is measured apart from call time; each timing starts after warm-up calls and repeats until
both a minimum number of calls and a minimum time have passed. Benchmarks measure; tests never assert
a time."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import __version__
from .errors import InputError, MissingExtraError
from .machine import available_cores, cpu_flags, cpu_model
from .model import VAEModel, load

OPERATIONS = ("encode", "decode", "reconstruct")
WARMUP_CALLS = 5
MIN_CALLS = 20
MIN_SECONDS = 0.3  # per (configuration, operation, batch size): enough for stable percentiles on a quiet machine
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")


def time_calls(fn: Callable[[], object], min_calls: int = MIN_CALLS, min_seconds: float = MIN_SECONDS,
               warmup: int = WARMUP_CALLS) -> np.ndarray:
    """Seconds taken by each of at least min_calls calls of fn() lasting min_seconds in all, after warm-up."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def summarize(times: np.ndarray, batch: int) -> dict:
    """Throughput and latency percentiles of timed calls on batches of `batch` examples."""
    total = float(times.sum())
    return {
        "batch": batch,
        "calls": len(times),
        "seconds_total": total,
        "examples_per_second": batch * len(times) / total,
        "latency_p50_us": float(np.percentile(times, 50) * 1e6),
        "latency_p90_us": float(np.percentile(times, 90) * 1e6),
        "latency_p99_us": float(np.percentile(times, 99) * 1e6),
    }


def bench_model(model: VAEModel, batch_sizes: Sequence[int], operations: Sequence[str] = OPERATIONS,
                min_seconds: float = MIN_SECONDS, seed: int = 0) -> list[dict]:
    """One row per (operation, batch size) for a loaded model, on random inputs of the model's shapes."""
    unknown = sorted(set(operations) - set(OPERATIONS))
    if unknown:
        raise InputError(f"unknown operation(s) {unknown}: expected some of {list(OPERATIONS)}")
    rng = np.random.default_rng(seed)
    rows = []
    for b in batch_sizes:
        images = rng.random((b, model.manifest.features), dtype=np.float32)
        z = rng.standard_normal((b, model.latent_size)).astype(np.float32)
        calls = {"encode": lambda x=images: model.encode(x), "decode": lambda z=z: model.decode(z),
                 "reconstruct": lambda x=images: model.reconstruct(x)}
        for op in operations:
            rows.append({"operation": op, **summarize(time_calls(calls[op], min_seconds=min_seconds), b)})
    return rows


def run_benchmark(path: str | Path, batch_sizes: Sequence[int], threads: Sequence[int] = (1,),
                  devices: Sequence[str] = ("cpu",), variants: Sequence[str | None] = (None,),
                  operations: Sequence[str] = OPERATIONS, min_seconds: float = MIN_SECONDS,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark every (device, variant, threads) configuration of one model package; returns the report."""
    for b in batch_sizes:
        if not isinstance(b, int) or b < 1:
            raise InputError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    results = []
    for device in devices:
        for variant in variants:
            for t in threads:
                if progress:
                    progress(f"{device} {variant or 'fp32'} threads={t}")
                t0 = time.perf_counter()
                model = load(path, device=device, threads=t, variant=variant)
                load_seconds = time.perf_counter() - t0
                config = {"engine": "onnxruntime", "device": model.device, "variant": variant or "fp32",
                          "threads": t, "load_seconds": load_seconds}
                results += [{**config, **row} for row in
                            bench_model(model, batch_sizes, operations, min_seconds=min_seconds)]
    return {"model": str(path), "environment": environment(), "results": results}


def environment() -> dict:
    """The machine and library versions, recorded beside every result."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in CPU_FLAGS if f in cpu_flags()],
        "cores_available": available_cores(),
        "cores_total": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "vae_infer": __version__,
    }


def matmul_flops(n: int = 2048, min_seconds: float = 1.0) -> dict:
    """The machine's practical float32 limit: FLOP/s of a large (n x n) @ (n x n) product with numpy."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    times = time_calls(lambda: a @ b, min_calls=5, min_seconds=min_seconds, warmup=2)
    return {"n": n, "flop_per_call": 2 * n**3, "flop_per_second": 2 * n**3 / float(np.median(times)),
            "seconds_median": float(np.median(times))}


def graph_flops(model_bytes: bytes) -> int:
    """Multiply-add FLOPs per example of a graph's Gemm and MatMul nodes (2 x in x out each), read from the
    graph's weights. Needs the onnx package (the native or train extra)."""
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError("counting FLOPs from a graph needs onnx: pip install 'vae-infer[native]'") from e
    proto = onnx.load_from_string(model_bytes)
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    total = 0
    for node in proto.graph.node:
        if node.op_type in ("Gemm", "MatMul") and node.input[1] in dims:
            rows, cols = dims[node.input[1]][-2:]
            total += 2 * rows * cols
    return total


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Model `{report['model']}` on {env['cpu']} ({env['cores_available']} cores available; "
        f"{', '.join(env['cpu_flags']) or 'no listed SIMD flags'}), onnxruntime {env['onnxruntime']}, "
        f"numpy {env['numpy']}, Python {env['python']}.",
        "",
        "| engine | device | variant | threads | operation | batch | examples/s | p50 µs | p90 µs | p99 µs |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['engine']} | {r['device']} | {r['variant']} | {r['threads']} | {r['operation']} | {r['batch']} | "
            f"{r['examples_per_second']:,.0f} | {r['latency_p50_us']:,.0f} | {r['latency_p90_us']:,.0f} | "
            f"{r['latency_p99_us']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> Path:
    """Throughput against batch size: one panel per operation, one line per (engine, device, variant, threads)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError("plotting needs matplotlib: pip install 'vae-infer[viz]'") from e
    from .atomic import write_atomically

    operations = [op for op in OPERATIONS if any(r["operation"] == op for r in report["results"])]
    fig = Figure(figsize=(5 * len(operations), 4.8))
    axes = fig.subplots(1, len(operations), squeeze=False, sharey=True)[0]
    for ax, op in zip(axes, operations, strict=True):
        lines: dict[tuple, list] = {}
        for r in report["results"]:
            if r["operation"] == op:
                key = (r["engine"], r["device"], r["variant"], r["threads"])
                lines.setdefault(key, []).append((r["batch"], r["examples_per_second"]))
        for key, points in lines.items():
            points.sort()
            ax.plot(*zip(*points, strict=True), marker="o", label=f"{key[0]} {key[1]} {key[2]}, {key[3]} threads")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(op)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("examples per second")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Throughput on {report['environment']['cpu']}")
    fig.tight_layout()
    return write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
