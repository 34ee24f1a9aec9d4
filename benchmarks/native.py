"""The C path side by side with torch eager and onnxruntime, its footprint per target, and its parity under
emulation, in one run:

    python benchmarks/native.py models/fashion-mnist --json benchmarks/native.json --markdown benchmarks/native.md

- Speed (this x86 machine, through vae_infer's Python API): torch eager, onnxruntime fp32 as shipped
  (`vae_infer.load` defaults) and its int8 variant, the C backend with fp32, fp16 and int8 weights
  (`load(backend="c", weights=...)`); encode and decode at batch 1 (median latency), 256 and 4096 (median
  throughput). Backends are timed in interleaved rounds, so that a busy machine slows them alike. The
  limits come from the same run: batch 1 from the weights' bytes over the measured bandwidth (numpy's
  float32 matrix-vector product over the same bytes), large batches from numpy's large matmul FLOP/s.
- Footprint per target and weight format: flash, RAM and worst-case stack from memory.json, which the
  exported Makefile computes from the built objects (targets whose cross compiler is missing are left out).
- Parity under emulation: each target's example program on real test images against onnxruntime, and the
  test -ELBO of the Cortex-M4 builds on --elbo-images images against onnxruntime fp32 (one draw, seed 0).
  Cycle counts from qemu are not speed; no speed is reported for emulated runs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# torch's OpenMP threads otherwise spin for a while after each call and take a core from whichever backend
# runs next in the interleaved rounds; passive waiting matches onnxruntime as vae_infer ships it (spinning off)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import common  # noqa: E402
import numpy as np  # noqa: E402

import vae_infer  # noqa: E402
from vae_infer import bench, native
from vae_infer.anomaly import likelihood  # noqa: E402
from vae_infer.machine import available_cores  # noqa: E402
from vae_infer.native import check, targets  # noqa: E402

FORMATS = ("fp32", "fp16", "int8")
BATCHES = (1, 256, 4096)
OPERATIONS = ("encode", "decode")


class TorchEager:
    """The package's weights in torch eager modules (benchmarks/run.py), with encode/decode on numpy."""

    def __init__(self, model: vae_infer.VAEModel, threads: int) -> None:
        import torch
        from run import torch_modules

        torch.set_num_threads(threads)
        self.torch = torch
        self.encoder, self.logits = torch_modules(model)

    def encode(self, x: np.ndarray):
        with self.torch.inference_mode():
            mu, logvar = self.encoder(self.torch.from_numpy(x))
            return mu.numpy(), logvar.numpy()

    def decode(self, z: np.ndarray):
        with self.torch.inference_mode():
            return self.torch.sigmoid(self.logits(self.torch.from_numpy(z))).numpy()


def load_backends(model_dir: str, with_torch: bool) -> dict:
    backends = {}
    reference = vae_infer.load(model_dir)  # onnxruntime as shipped: vae_infer.load defaults
    if with_torch:
        try:
            backends["torch eager"] = TorchEager(reference, available_cores())
        except ImportError:
            pass
    backends["onnxruntime fp32"] = reference
    backends["onnxruntime int8"] = vae_infer.load(model_dir, variant="int8")
    for w in FORMATS:
        backends[f"C {w}"] = vae_infer.load(model_dir, backend="c", weights=w)
    return backends


def interleaved(backends: dict, feeds: dict, rounds: int, calls: int) -> dict:
    """{(backend, operation): [seconds per call]}; every round times each backend in a rotating order."""
    names = list(backends)
    times: dict = {(b, op): [] for b in names for op in feeds}
    for name in names:  # warm up: caches, thread pools, page faults
        for op, arg in feeds.items():
            for _ in range(max(3, calls // 4)):
                getattr(backends[name], op)(arg)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for op, arg in feeds.items():
            for name in order:
                fn, bucket = getattr(backends[name], op), times[(name, op)]
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn(arg)
                    bucket.append(time.perf_counter() - t0)
    return times


def speed(backends: dict, features: int, latent: int, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        feeds = {"encode": rng.random((batch, features), dtype=np.float32),
                 "decode": rng.standard_normal((batch, latent)).astype(np.float32)}
        calls = {1: 100, 256: 10, 4096: 2}[batch]
        for (name, op), ts in interleaved(backends, feeds, rounds, calls).items():
            median = float(np.median(ts))
            rows.append({"backend": name, "operation": op, "batch": batch, "calls": len(ts),
                         "median_us": median * 1e6, "examples_per_second": batch / median})
    return rows


def limits(model_dir: str) -> dict:
    """What this machine allows: bandwidth over the encoder's fp32 weight bytes, and large-matmul FLOP/s."""
    model = vae_infer.load(model_dir)
    hidden, features = model.manifest.hidden_size, model.manifest.features
    w = np.random.default_rng(0).random((hidden, features), dtype=np.float32)
    v = np.random.default_rng(1).random(features, dtype=np.float32)
    gemv = bench.time_calls(lambda: w @ v, min_calls=200, min_seconds=1.0, warmup=20)
    dst = np.empty_like(w)
    copy = bench.time_calls(lambda: np.copyto(dst, w), min_calls=200, min_seconds=1.0, warmup=20)
    n = 2048
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    mm = bench.time_calls(lambda: a @ b, min_calls=10, min_seconds=2.0, warmup=2)
    # the best call of each: what the machine can do when the other users of a shared machine let it
    return {"weight_bytes_fp32_per_graph": int(w.nbytes), "measure": "best call",
            "gemv_bytes_per_second": w.nbytes / float(np.min(gemv)),
            "copy_bytes_per_second": 2 * w.nbytes / float(np.min(copy)),
            "matmul_flop_per_second": 2 * n**3 / float(np.min(mm)),
            "flop_per_example": 2 * hidden * features}


def speed_targets(rows: list[dict], lim: dict) -> list[dict]:
    def get(backend, op, batch):
        return next(r for r in rows if (r["backend"], r["operation"], r["batch"]) == (backend, op, batch))

    out = []
    floor_us = lim["weight_bytes_fp32_per_graph"] / lim["gemv_bytes_per_second"] * 1e6
    ceiling = lim["matmul_flop_per_second"] / lim["flop_per_example"]
    for op in OPERATIONS:
        c, o = get("C fp32", op, 1), get("onnxruntime fp32", op, 1)
        out.append({"what": f"{op} batch 1 latency, C fp32 / onnxruntime", "target": "<= 0.5",
                    "value": c["median_us"] / o["median_us"], "met": c["median_us"] <= 0.5 * o["median_us"],
                    "limit": f"weights {lim['weight_bytes_fp32_per_graph'] / 1e6:.2f} MB / bandwidth = "
                             f"{floor_us:.1f} us (C: {c['median_us']:.1f} us)"})
        for b in (256, 4096):
            c, o = get("C fp32", op, b), get("onnxruntime fp32", op, b)
            out.append({"what": f"{op} batch {b} throughput, C fp32 / onnxruntime", "target": ">= 1.0",
                        "value": c["examples_per_second"] / o["examples_per_second"],
                        "met": c["examples_per_second"] >= o["examples_per_second"],
                        "limit": f"matmul FLOP/s / FLOP per example = {ceiling:,.0f}/s (C: "
                                 f"{c['examples_per_second'] / ceiling:.0%} of it)"})
    c, o = get("C int8", "encode", 256), get("onnxruntime int8", "encode", 256)
    out.append({"what": "encode batch 256 throughput, C int8 / onnxruntime int8", "target": ">= 1.0",
                "value": c["examples_per_second"] / o["examples_per_second"],
                "met": c["examples_per_second"] >= o["examples_per_second"], "limit": ""})
    return out


def footprint(model_dir: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, t in targets.TARGETS.items():
            if shutil.which(t.cc) is None:
                continue
            for w in FORMATS:
                out = Path(tmp) / f"{name}-{w}"
                export = native.export_c(model_dir, out, weights=w, target=name)
                done = subprocess.run(["make", "-C", str(out)], capture_output=True, text=True)
                if done.returncode != 0:
                    rows.append({"target": name, "weights": w, "error": done.stderr.strip().splitlines()[-1]})
                    continue
                mem = json.loads((out / "memory.json").read_text())
                rows.append({"target": name, "weights": w, "tables_bytes": export.weight_bytes,
                             "flash_bytes": mem["flash_bytes"], "ram_bytes": mem["ram_bytes"],
                             "worst_case_stack_bytes": mem["stack_bytes"]["worst_case_bytes"],
                             "scope": "firmware image" if t.bare_metal else "library object"})
    return rows


def emulated_parity(model_dir: str, images: np.ndarray, elbo_images: int) -> list[dict]:
    """Each emulated target's example program against onnxruntime on real test images; for cortex-m4 also
    the test -ELBO (one draw, seed 0) of the program's own encode and decode, beside onnxruntime fp32's."""
    rows = []
    model = vae_infer.load(model_dir, threads=1)
    x = model.as_images(images[:elbo_images])
    with tempfile.TemporaryDirectory() as tmp:
        for name, w in (("aarch64-linux", "fp32"), ("armv7-linux", "fp32"), ("cortex-m4", "fp32"),
                        ("aarch64-linux", "int8"), ("cortex-m4", "int8")):
            t = targets.TARGETS[name]
            if shutil.which(t.cc) is None or shutil.which(t.emulator[0]) is None:
                continue
            out = Path(tmp) / f"{name}-{w}"
            native.export_c(model_dir, out, weights=w, target=name)
            report = check.check_export(model_dir, out, weights=w, images=images[:50], target=name)
            row = {"target": name, "weights": w, "images": 50, "vs_onnxruntime": report["vs_onnxruntime"]}
            if name == "cortex-m4":
                row.update(target_elbo(model_dir, out, t, x))
            rows.append(row)
    return rows


def target_elbo(model_dir: str, out: Path, t, x: np.ndarray) -> dict:
    """-ELBO per image with the target program's encode and decode (one draw, seed 0), and onnxruntime's."""
    program = out / t.program
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        mu, logvar = check.run_example(program, "encode", x, [2, 2], work, t)

        def target_logits(z):
            return check.run_example(program, "decode", z, [x.shape[1], x.shape[1]], work, t)[1]

        ours = likelihood.negative_elbo(target_logits, x, mu, logvar, 1, np.random.default_rng(0))
        seconds = time.perf_counter() - t0
    ref = vae_infer.load(model_dir, threads=1)
    mu0, logvar0 = ref.encode_rows(x)
    fp32 = likelihood.negative_elbo(ref.decode_logits, x, mu0, logvar0, 1, np.random.default_rng(0))
    return {"elbo_images": len(x), "nelbo_target": float(ours.mean()), "nelbo_onnxruntime_fp32": float(fp32.mean()),
            "nelbo_change": float(ours.mean() - fp32.mean()), "emulation_seconds": seconds}


def accuracy(backends: dict, images: np.ndarray) -> list[dict]:
    ref = backends["onnxruntime fp32"]
    x = ref.as_images(images)
    mu0, lv0 = ref.encode_rows(x)
    x0 = ref.decode_rows(mu0)
    s0 = ref.score(images, samples=1, seed=0)
    rows = [{"backend": "onnxruntime fp32", "nelbo_mean": float(s0.mean())}]
    for name in ("onnxruntime int8", *(f"C {w}" for w in FORMATS)):
        m = backends[name]
        mu, lv = m.encode_rows(x)
        s = m.score(images, samples=1, seed=0)
        rows.append({"backend": name, "mu_max_abs_diff": float(np.abs(mu - mu0).max()),
                     "logvar_max_abs_diff": float(np.abs(lv - lv0).max()),
                     "x_hat_max_abs_diff": float(np.abs(m.decode_rows(mu0) - x0).max()),
                     "nelbo_mean": float(s.mean()), "nelbo_change": float(s.mean() - s0.mean())})
    return rows


def fmt_speed(r: dict) -> str:
    return f"{r['median_us']:.1f} µs" if r["batch"] == 1 else f"{r['examples_per_second']:,.0f}/s"


def to_markdown(report: dict) -> str:
    env, lim = report["environment"], report["limits"]
    names = report["backends"]
    lines = [
        f"CPU {env['cpu']} ({env['cores_available']} cores available; OMP_WAIT_POLICY={report['omp_wait_policy']}; "
        f"load average {env['load_average'][0]:.1f} "
        f"at the start, {report['load_average_end'][0]:.1f} at the end), onnxruntime {env['onnxruntime']}, C backend "
        f"built with `{' '.join(report['library_flags'])}`. Every backend with its defaults ({env['cores_available']} "
        f"threads); batch 1: median latency, batches 256 and 4096: median throughput; {report['rounds']} "
        f"interleaved rounds.",
        "",
        "### Speed side by side (this x86 machine, through the Python API)",
        "",
    ]
    table = []
    for op in OPERATIONS:
        for b in BATCHES:
            cells = {r["backend"]: fmt_speed(r) for r in report["speed"] if r["operation"] == op and r["batch"] == b}
            table.append([f"{op}, batch {b}", *(cells.get(n, "") for n in names)])
    lines.append(common.markdown_table(["", *names], table))
    lines += ["### The issue's speed targets and this machine's limits", "",
              f"Limits measured in the same run: bandwidth over the {lim['weight_bytes_fp32_per_graph'] / 1e6:.2f} "
              f"MB of one graph's fp32 weights {lim['gemv_bytes_per_second'] / 1e9:.0f} GB/s (numpy float32 "
              f"matrix-vector product; a one-thread copy: {lim['copy_bytes_per_second'] / 1e9:.0f} GB/s), numpy's "
              f"2048² matmul {lim['matmul_flop_per_second'] / 1e9:.0f} GFLOP/s (each the best of its calls).", ""]
    lines.append(common.markdown_table(
        ["target", "wanted", "measured", "met", "this machine's limit"],
        [[t["what"], t["target"], f"{t['value']:.2f}", "yes" if t["met"] else "no", t["limit"]]
         for t in report["targets"]]))
    lines += ["### Footprint per target (memory.json, from the built objects)", "",
              "Flash: code, constant weight tables and .data's initial values; RAM: .data, .bss and (cortex-m4) "
              "the reserved stack. Linux targets: the library object only; cortex-m4: the whole firmware image "
              "with its semihosting example.", ""]
    lines.append(common.markdown_table(
        ["target", "weights", "tables", "flash", "RAM", "worst-case stack", "measured on"],
        [[r["target"], r["weights"], f"{r['tables_bytes']:,}", f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}",
          f"{r['worst_case_stack_bytes']:,}", r["scope"]] if "error" not in r
         else [r["target"], r["weights"], "", "", "", "", r["error"]] for r in report["footprint"]]))
    lines += ["### Parity under emulation (the example program vs onnxruntime on x86, 50 test images)", "",
              "Logits: relative to max(1, |logit|). -ELBO: the Cortex-M4 program's own encode and decode on "
              f"{report['elbo_images']} test images, one draw (seed 0), beside onnxruntime fp32.", ""]
    lines.append(common.markdown_table(
        ["target", "weights", "mu", "logvar", "x_hat", "logits", "test -ELBO", "onnxruntime fp32", "change"],
        [[r["target"], r["weights"], *(f"{r['vs_onnxruntime'][k]:.2g}" for k in ("mu", "logvar", "x_hat", "logits")),
          f"{r['nelbo_target']:.3f}" if "nelbo_target" in r else "",
          f"{r['nelbo_onnxruntime_fp32']:.3f}" if "nelbo_target" in r else "",
          f"{r['nelbo_change']:+.3f}" if "nelbo_target" in r else ""] for r in report["parity"]]))
    lines += [f"### Accuracy through the Python API ({report['accuracy_images']} test images; -ELBO with 1 draw, "
              f"seed 0)", ""]
    lines.append(common.markdown_table(
        ["backend", "mu max abs", "logvar max abs", "x_hat max abs", "test -ELBO", "change"],
        [[r["backend"], f"{r.get('mu_max_abs_diff', 0):.2g}", f"{r.get('logvar_max_abs_diff', 0):.2g}",
          f"{r.get('x_hat_max_abs_diff', 0):.2g}", f"{r['nelbo_mean']:.4f}", f"{r.get('nelbo_change', 0):+.4f}"]
         for r in report["accuracy"]]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=str(common.SHIPPED_MODEL))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--elbo-images", type=int, default=1000)
    p.add_argument("--accuracy-images", type=int, default=10000)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()
    environment = common.environment()
    from vae_infer.data.sources import load_images
    from vae_infer.native import build

    images, _ = load_images("fashion-mnist", split="test")
    backends = load_backends(args.model, not args.no_torch)
    model = backends["onnxruntime fp32"]
    report = {"model": args.model, "rounds": args.rounds, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "backends": list(backends), "environment": environment,
              "library_flags": build.library_flags(), "tuning_block_rows": list(build.tuning())}
    report["speed"] = speed(backends, model.manifest.features, model.latent_size, args.rounds)
    report["limits"] = limits(args.model)
    report["targets"] = speed_targets(report["speed"], report["limits"])
    report["accuracy_images"] = min(args.accuracy_images, len(images))
    report["accuracy"] = accuracy(backends, images[: args.accuracy_images])
    report["footprint"] = footprint(args.model)
    report["elbo_images"] = args.elbo_images
    report["parity"] = emulated_parity(args.model, images, args.elbo_images)
    report["load_average_end"] = list(os.getloadavg())
    md = to_markdown(report)
    print(md)
    common.write_report(report, args.json, md, args.markdown)


if __name__ == "__main__":
    main()
