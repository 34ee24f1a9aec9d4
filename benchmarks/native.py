"""The C backend against onnxruntime, through vae_infer's Python API: latency at batch 1, throughput at large
batches, accuracy and test -ELBO per weight format, and the size of the generated library.

    python benchmarks/native.py models/fashion-mnist --threads 2 \
        --json benchmarks/native.json --markdown benchmarks/native.md

Latency: the backends are timed in interleaved rounds (each round times every backend for the same number of
calls, in a rotating order), so that a busy machine slows them alike; the figures are medians of single calls.
Accuracy: all 10,000 Fashion-MNIST test images when they are installed (else the 32 in tests/fixtures)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vae_infer  # noqa: E402
from vae_infer import native  # noqa: E402
from vae_infer.native import build  # noqa: E402

FORMATS = ("fp32", "fp16", "int8")
TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def test_images() -> tuple[np.ndarray, str]:
    if TEST_IMAGES.is_file():
        with gzip.open(TEST_IMAGES) as f:
            return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784), "Fashion-MNIST test set"
    with np.load(ROOT / "tests" / "fixtures" / "tiny-images.npz") as z:
        return z["images"].reshape(-1, 784), "tests/fixtures/tiny-images.npz"


def load_models(model_dir: str, threads: int) -> tuple[dict, dict]:
    models, load_s = {}, {}
    t0 = time.perf_counter()
    models["onnxruntime"] = vae_infer.load(model_dir, threads=threads)
    load_s["onnxruntime"] = time.perf_counter() - t0
    models["onnxruntime, 1 thread"] = vae_infer.load(model_dir, threads=1)
    for w in FORMATS:
        vae_infer.load(model_dir, backend="c", weights=w, threads=threads)  # builds into the cache if needed
        t0 = time.perf_counter()
        models[f"C {w}"] = vae_infer.load(model_dir, backend="c", weights=w, threads=threads)
        load_s[f"C {w}"] = time.perf_counter() - t0
    return models, load_s


def cold_build_seconds(model_dir: str) -> dict:
    """Generation + compilation of both graphs into an empty cache, per weight format."""
    out = {}
    old = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            for w in FORMATS:
                t0 = time.perf_counter()
                vae_infer.load(model_dir, backend="c", weights=w, threads=1)
                out[w] = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = old
    return out


def interleaved_latency(models: dict, ops: dict, rounds: int, calls: int) -> dict:
    """{(backend, op): [per-call seconds]}: every round times `calls` calls of each backend and operation."""
    names = list(models)
    times: dict = {(b, op): [] for b in names for op in ops}
    for name in names:  # warm up: caches, thread pools, page faults
        for method, arg in ops.values():
            for _ in range(50):
                getattr(models[name], method)(arg)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for op, (method, arg) in ops.items():
            for name in order:
                fn = getattr(models[name], method)
                bucket = times[(name, op)]
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn(arg)
                    bucket.append(time.perf_counter() - t0)
    return times


def throughput(models: dict, batch: int, rounds: int, rng: np.random.Generator) -> list[dict]:
    x = rng.random((batch, 784), dtype=np.float32)
    z = rng.standard_normal((batch, 2)).astype(np.float32)
    rows = []
    names = [n for n in models if n != "onnxruntime, 1 thread"]
    best: dict = {}
    for name in names:  # warm up
        models[name].encode(x)
        models[name].decode(z)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for op, method, arg in (("encode", "encode", x), ("decode", "decode", z)):
            for name in order:
                fn = getattr(models[name], method)
                t0 = time.perf_counter()
                fn(arg)
                dt = time.perf_counter() - t0
                best.setdefault((name, op), []).append(dt)
    for (name, op), ts in best.items():
        ts = np.array(ts)
        rows.append({"backend": name, "operation": op, "batch": batch, "calls": len(ts),
                     "examples_per_second_median": batch / float(np.median(ts)),
                     "examples_per_second_best": batch / float(ts.min())})
    return rows


def accuracy(models: dict, images: np.ndarray) -> list[dict]:
    ref = models["onnxruntime"]
    mu0, lv0 = ref.encode(images)
    x0 = ref.reconstruct(images)
    s0 = ref.score(images, samples=1, seed=0)
    rows = [{"backend": "onnxruntime", "nelbo_mean": float(s0.mean())}]
    for w in FORMATS:
        m = models[f"C {w}"]
        mu, lv = m.encode(images)
        xr = m.reconstruct(images)
        s = m.score(images, samples=1, seed=0)
        logits0, logits = ref._decode_logits(mu0), m._decode_logits(mu0)
        rows.append({
            "backend": f"C {w}",
            "mu_max_abs_diff": float(np.abs(mu - mu0).max()),
            "logvar_max_abs_diff": float(np.abs(lv - lv0).max()),
            "x_hat_max_abs_diff": float(np.abs(xr - x0).max()),
            "x_hat_mean_abs_diff": float(np.abs(xr - x0).mean()),
            "logits_max_rel_diff": float((np.abs(logits - logits0) / np.maximum(1, np.abs(logits0))).max()),
            "nelbo_mean": float(s.mean()),
            "nelbo_change": float(s.mean() - s0.mean()),
            "nelbo_max_abs_change_per_image": float(np.abs(s - s0).max()),
        })
    return rows


def section_sizes(obj: Path) -> dict[str, int]:
    """{section: bytes} from `size -A` (binutils)."""
    out = subprocess.run(["size", "-A", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def size_table(model_dir: str, models: dict) -> list[dict]:
    cc = build.find_compiler()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in FORMATS:
            out = Path(tmp) / w
            export = native.export_c(model_dir, out, weights=w)
            row = {"weights": w, "tables_bytes": export.weight_bytes,
                   "source_bytes": (out / "vae.c").stat().st_size,
                   "backend_libraries_bytes": sum(models[f"C {w}"]._sessions[r].library.stat().st_size
                                                  for r in ("encoder", "decoder"))}
            header = (out / "vae.h").read_text()
            for fn in ("ENCODE", "DECODE"):
                key = f"VAE_{fn}_STACK_FLOATS_PER_ROW "
                row[f"{fn.lower()}_stack_floats_per_row"] = int(header.split(key)[1].split()[0])
            if cc and shutil.which("size"):
                for label, flags in (("O2", ["-O2"]), ("Os", ["-Os"])):
                    obj = out / f"vae_{label}.o"
                    subprocess.run([cc, *build.STRICT_FLAGS, *flags, "-c", "-o", str(obj), str(out / "vae.c")],
                                   check=True)
                    s = section_sizes(obj)
                    row[f"code_bytes_{label}"] = s.get(".text", 0)
                    row[f"rodata_bytes_{label}"] = sum(v for k, v in s.items() if k.startswith(".rodata"))
                    row[f"data_bss_bytes_{label}"] = s.get(".data", 0) + s.get(".bss", 0)
            rows.append(row)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(model_dir: str, threads: int, rounds: int, calls: int, batches: list[int]) -> dict:
    load0 = os.getloadavg()
    cold = cold_build_seconds(model_dir)
    models, load_s = load_models(model_dir, threads)
    images, source = test_images()
    rng = np.random.default_rng(0)
    one_image, one_code = images[:1], rng.standard_normal((1, 2)).astype(np.float32)
    lat = interleaved_latency(models, {"encode": ("encode", one_image), "decode": ("decode", one_code),
                                       "reconstruct": ("reconstruct", one_image)}, rounds, calls)
    latency = []
    for (name, op), ts in lat.items():
        ts = np.array(ts)
        latency.append({"backend": name, "operation": op, "batch": 1, "calls": len(ts),
                        "p50_us": float(np.percentile(ts, 50) * 1e6), "p90_us": float(np.percentile(ts, 90) * 1e6),
                        "min_us": float(ts.min() * 1e6)})
    ort_p50 = {r["operation"]: r["p50_us"] for r in latency if r["backend"] == "onnxruntime"}
    ort1_p50 = {r["operation"]: r["p50_us"] for r in latency if r["backend"] == "onnxruntime, 1 thread"}
    for r in latency:
        r["ratio_to_onnxruntime"] = r["p50_us"] / ort_p50[r["operation"]]
        r["ratio_to_onnxruntime_1_thread"] = r["p50_us"] / ort1_p50[r["operation"]]
    tput = [row for b in batches for row in throughput(models, b, max(5, rounds // 2), rng)]
    acc = accuracy(models, images)
    sizes = size_table(model_dir, models)
    cc = build.find_compiler()
    return {
        "model": model_dir, "threads": threads, "rounds": rounds, "calls_per_round": calls,
        "accuracy_images": f"{len(images)} images from {source}",
        "latency": latency, "throughput": tput, "accuracy": acc, "sizes": sizes,
        "load_seconds_cached": load_s, "cold_build_seconds": cold,
        "environment": {
            "cpu": cpu_model(), "cores_available": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "compiler": cc and build.compiler_version(cc),
            "library_flags": build.library_flags(), "tuning_block_rows": list(build.tuning()),
            "load_average_before": list(load0), "load_average_after": list(os.getloadavg()),
        },
    }


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Model `{report['model']}` on {env['cpu']} ({env['cores_available']} cores available; load average "
        f"{env['load_average_before'][0]:.1f} before, {env['load_average_after'][0]:.1f} after: a shared machine), "
        f"onnxruntime {env['onnxruntime']} with {report['threads']} intra-op threads, C backend built by "
        f"{env['compiler']} with `{' '.join(env['library_flags'])}` (register blocks: "
        f"{env['tuning_block_rows'][0]} outputs x {env['tuning_block_rows'][1]} rows), {report['threads']} threads "
        f"for large batches.",
        "",
        f"### Latency at batch 1 through the Python API ({report['rounds']} interleaved rounds of "
        f"{report['calls_per_round']} calls)",
        "",
        "| backend | operation | p50 µs | p90 µs | p50 / onnxruntime | p50 / onnxruntime 1 thread |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(report["latency"], key=lambda r: (r["operation"], r["backend"])):
        lines.append(f"| {r['backend']} | {r['operation']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | "
                     f"{r['ratio_to_onnxruntime']:.2f} | {r['ratio_to_onnxruntime_1_thread']:.2f} |")
    lines += ["", "### Throughput (examples/s; median and best of interleaved calls)", "",
              "| backend | operation | batch | median | best | median / onnxruntime |", "|---|---|---:|---:|---:|---:|"]
    base = {(r["operation"], r["batch"]): r["examples_per_second_median"] for r in report["throughput"]
            if r["backend"] == "onnxruntime"}
    for r in sorted(report["throughput"], key=lambda r: (r["batch"], r["operation"], r["backend"])):
        lines.append(f"| {r['backend']} | {r['operation']} | {r['batch']} | {r['examples_per_second_median']:,.0f} | "
                     f"{r['examples_per_second_best']:,.0f} | "
                     f"{r['examples_per_second_median'] / base[(r['operation'], r['batch'])]:.2f} |")
    lines += ["", f"### Accuracy against onnxruntime ({report['accuracy_images']}; -ELBO with 1 draw, seed 0)", "",
              "| backend | mu max abs | logvar max abs | x_hat max abs | x_hat mean abs | logits max rel "
              "| test -ELBO | change | max change per image |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["accuracy"]:
        if r["backend"] == "onnxruntime":
            lines.append(f"| onnxruntime | | | | | | {r['nelbo_mean']:.4f} | | |")
            continue
        lines.append(f"| {r['backend']} | {r['mu_max_abs_diff']:.2g} | {r['logvar_max_abs_diff']:.2g} | "
                     f"{r['x_hat_max_abs_diff']:.2g} | {r['x_hat_mean_abs_diff']:.2g} | "
                     f"{r['logits_max_rel_diff']:.2g} | {r['nelbo_mean']:.4f} | {r['nelbo_change']:+.4f} | "
                     f"{r['nelbo_max_abs_change_per_image']:.3g} |")
    lines += ["", "### Size of the generated library (vae.c: encoder + decoder; gcc, no -march)", "",
              "| weights | tables (weights, scales, biases) | code -O2 | .rodata -O2 | code -Os | .rodata -Os | "
              "data+bss | vae.c source | stack floats per row (encode / decode) | backend .so files |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        lines.append(f"| {r['weights']} | {r['tables_bytes']:,} | {r.get('code_bytes_O2', 0):,} | "
                     f"{r.get('rodata_bytes_O2', 0):,} | {r.get('code_bytes_Os', 0):,} | "
                     f"{r.get('rodata_bytes_Os', 0):,} | "
                     f"{r.get('data_bss_bytes_O2', 0)} | {r['source_bytes']:,} | {r['encode_stack_floats_per_row']} / "
                     f"{r['decode_stack_floats_per_row']} | {r['backend_libraries_bytes']:,} |")
    cold = ", ".join(f"{k} {v:.1f} s" for k, v in report["cold_build_seconds"].items())
    cached = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report["load_seconds_cached"].items())
    lines += ["", f"First load with an empty cache (generate + compile both graphs): {cold}. Loads from the cache: "
              f"{cached}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="models/fashion-mnist")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--calls", type=int, default=100, help="calls per backend and round at batch 1")
    p.add_argument("--batch-sizes", default="256,4096")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()
    report = run(args.model, args.threads, args.rounds, args.calls, [int(b) for b in args.batch_sizes.split(",")])
    md = to_markdown(report)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(md)


if __name__ == "__main__":
    main()
