"""Speed side by side, in one run: torch eager, onnxruntime fp32 / int8 / fp16 through vae_infer, and the
machine's practical limit (a large numpy float32 matrix product), plus cold start, session tuning and the
install footprint.

    python benchmarks/run.py --compare torch,ort,ort-int8 --markdown benchmarks/RESULTS.md

Writes a JSON report (--json), a markdown report (--markdown) and a throughput plot (--plot). Ratios are
computed within the run, so a noisy machine moves both sides of each ratio together."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # the repository on sys.path, the environment record, report writing
import numpy as np
from common import ROOT

import vae_infer
from vae_infer import bench
from vae_infer.package.files import read_verified
from vae_infer.sessions import session_options

ENGINES = ("torch", "ort", "ort-spin", "ort-int8", "ort-fp16", "ort-ort")  # ort-spin: fp32, spinning threads
COLD_START_RUNS = 5
COLD_START_CODE = """
import time
t0 = time.perf_counter()
import numpy as np
import vae_infer
model = vae_infer.load({path!r})
model.encode(np.zeros((1, model.manifest.features), np.float32))
print(time.perf_counter() - t0)
"""


def torch_modules(model: vae_infer.VAEModel):
    """The package's own weights in torch eager modules (read from the ONNX graphs' initializers)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from train.config import ModelConfig
    from train.model import Decoder, DecoderLogits, Encoder

    config = ModelConfig(image_shape=model.image_shape, hidden_size=model.manifest.hidden_size,
                         latent_size=model.latent_size)
    modules = {"encoder": Encoder(config), "decoder": Decoder(DecoderLogits(config))}
    for role, module in modules.items():
        proto = onnx.load_from_string(read_verified(model.path, model.manifest, getattr(model.manifest, role).file))
        state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
        module.load_state_dict(state)
        module.eval()
    return modules["encoder"], modules["decoder"].logits


def bench_torch(model: vae_infer.VAEModel, batch_sizes, threads: int, operations, seconds: float) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    encoder, decoder_logits = torch_modules(model)
    rng = np.random.default_rng(0)
    rows = []
    for b in batch_sizes:
        x = torch.from_numpy(rng.random((b, model.manifest.features), dtype=np.float32))
        z = torch.from_numpy(rng.standard_normal((b, model.latent_size)).astype(np.float32))

        @torch.inference_mode()
        def encode(x=x):
            mu, logvar = encoder(x)
            return mu.numpy(), logvar.numpy()

        @torch.inference_mode()
        def decode(z=z):
            return torch.sigmoid(decoder_logits(z)).numpy()

        @torch.inference_mode()
        def reconstruct(x=x):
            return torch.sigmoid(decoder_logits(encoder(x)[0])).numpy()

        calls = {"encode": encode, "decode": decode, "reconstruct": reconstruct}
        for op in operations:
            rows.append({"engine": "torch", "device": "cpu", "variant": "fp32", "threads": threads, "operation": op,
                         **bench.summarize(bench.time_calls(calls[op], min_seconds=seconds), b)})
    return rows


def bench_ort(engine: str, path: str, batch_sizes, threads: int, operations, seconds: float) -> list[dict]:
    variant = None if engine in ("ort", "ort-spin") else engine.removeprefix("ort-")
    t0 = time.perf_counter()
    model = vae_infer.load(path, threads=threads, variant=variant, spinning=engine == "ort-spin")
    load_seconds = time.perf_counter() - t0
    return [{"engine": engine, "device": "cpu", "variant": variant or "fp32", "threads": threads,
             "load_seconds": load_seconds, **row}
            for row in bench.bench_model(model, batch_sizes, operations, min_seconds=seconds)]


def session_tuning(path: str, threads: int, seconds: float) -> list[dict]:
    """Encoder call time under each session setting, through raw onnxruntime sessions."""
    import onnxruntime as ort

    model = vae_infer.load(path, threads=threads)
    data = read_verified(model.path, model.manifest, model.manifest.encoder.file)
    rows = []
    settings = {
        "default (spinning off, arena on)": {},
        "spinning on": {"spinning": True},
        "memory arena off": {"arena": False},
        "IOBinding, preallocated outputs": {"iobinding": True},
    }
    for b in (1, 256):
        x = np.random.default_rng(0).random((b, model.manifest.features), dtype=np.float32)
        for name, s in settings.items():
            opts = session_options(threads, spinning=s.get("spinning", False))
            opts.enable_cpu_mem_arena = s.get("arena", True)
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            if s.get("iobinding"):
                mu = np.empty((b, model.latent_size), np.float32)
                logvar = np.empty_like(mu)
                binding = session.io_binding()
                binding.bind_cpu_input("x", x)
                binding.bind_output("mu", "cpu", 0, np.float32, mu.shape, mu.ctypes.data)
                binding.bind_output("logvar", "cpu", 0, np.float32, logvar.shape, logvar.ctypes.data)

                def call(session=session, binding=binding):
                    session.run_with_iobinding(binding)
            else:
                def call(session=session, x=x):
                    session.run(["mu", "logvar"], {"x": x})
            rows.append({"setting": name, "threads": threads,
                         **bench.summarize(bench.time_calls(call, min_seconds=seconds), b)})
    return rows


def cold_start(path: str) -> dict:
    """Seconds from `import vae_infer` (numpy included) to the first encoded batch, in fresh processes."""
    inside, wall = [], []
    for _ in range(COLD_START_RUNS):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD_START_CODE.format(path=path)], capture_output=True,
                             text=True, check=True, cwd=ROOT)
        wall.append(time.perf_counter() - t0)
        inside.append(float(out.stdout.strip().splitlines()[-1]))
    return {"runs": COLD_START_RUNS, "import_to_first_batch_s_median": statistics.median(inside),
            "process_wall_s_median": statistics.median(wall), "import_to_first_batch_s": inside}


def footprint() -> dict:
    """Size on disk of a fresh virtual environment with the runtime alone, and with the training extra."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in (("runtime", "."), ("runtime+train", ".[train]")):
            venv = Path(tmp) / name
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                            "--quiet", "-c", str(ROOT / "constraints.txt"), spec], check=True, cwd=ROOT)
            sizes[name] = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(venv)
    return {"bytes": sizes, "ratio_runtime_to_train": sizes["runtime"] / sizes["runtime+train"]}


def ratios(rows: list[dict], peak: float, flops: dict[str, int]) -> list[dict]:
    """The targets as ratios measured in this run."""
    def find(engine, op, batch):
        return next((r for r in rows if r["engine"] == engine and r["operation"] == op and r["batch"] == batch), None)

    out = []
    batches = sorted({r["batch"] for r in rows})
    for op in ("encode", "decode"):
        torch1 = find("torch", op, 1)
        for engine in ("ort", "ort-spin", "ort-int8"):
            one = find(engine, op, 1)
            if one and torch1:
                out.append({"what": f"{op} batch-1 p50 latency, {engine} / torch", "target": "<= 0.5",
                            "value": one["latency_p50_us"] / torch1["latency_p50_us"]})
        for b in (b for b in batches if b >= 256):
            t = find("torch", op, b)
            for engine in ("ort", "ort-spin"):
                o = find(engine, op, b)
                if o and t:
                    out.append({"what": f"{op} batch-{b} throughput, {engine} / torch", "target": ">= 1.0",
                                "value": o["examples_per_second"] / t["examples_per_second"]})
                if o:
                    out.append({"what": f"{op} batch-{b} {engine} fp32 FLOP/s / numpy matmul FLOP/s",
                                "target": ">= 0.80", "value": o["examples_per_second"] * flops[op] / peak})
            o, q = find("ort", op, b), find("ort-int8", op, b)
            if o and q and b == 256:
                out.append({"what": f"{op} batch-256 throughput, int8 / fp32", "target": ">= 1.5",
                            "value": q["examples_per_second"] / o["examples_per_second"]})
    return out


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Benchmark results",
        "",
        f"Made by `{report['command']}` on {env['cpu']} ({env['cores_available']} cores available; "
        f"{', '.join(env['cpu_flags'])}), onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, "
        f"torch {report.get('torch_version', 'not installed')}, Python {env['python']}; {report['threads']} threads "
        f"for every engine. One run on a shared machine: compare within the tables, not across runs.",
        "",
        f"Machine limit: numpy float32 {report['matmul']['n']}x{report['matmul']['n']} matmul "
        f"{report['matmul']['flop_per_second'] / 1e9:.1f} GFLOP/s. Model FLOPs per example, counted from the "
        f"graphs: encode {report['flops']['encode']:,}, decode {report['flops']['decode']:,}.",
        "",
        "## Targets (ratios from this run)",
        "",
        "| ratio | target | measured |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['what']} | {r['target']} | {r['value']:.2f} |" for r in report["ratios"]]
    if "cold_start" in report:
        c = report["cold_start"]
        lines += ["", f"Cold start (fresh process, `import vae_infer` with numpy to the first encoded batch, median of "
                      f"{c['runs']}): {c['import_to_first_batch_s_median'] * 1000:.0f} ms; whole process including "
                      f"interpreter start {c['process_wall_s_median'] * 1000:.0f} ms. Target <= 150 ms."]
    if "footprint" in report:
        f = report["footprint"]
        lines += ["", f"Install footprint: runtime-only environment {f['bytes']['runtime'] / 1e6:.0f} MB, with the "
                      f"training extra {f['bytes']['runtime+train'] / 1e6:.0f} MB (ratio "
                      f"{f['ratio_runtime_to_train']:.3f}; target <= 0.2)."]
    table = bench.to_markdown({"model": report["model"], "environment": env, "results": report["results"]})
    lines += ["", "## Throughput and latency", "", table.split("\n", 2)[2]]
    if "tuning" in report:
        lines += ["## Session settings (encoder, raw onnxruntime session)", "",
                  "| setting | batch | examples/s | p50 µs | p99 µs |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['setting']} | {r['batch']} | {r['examples_per_second']:,.0f} | {r['latency_p50_us']:,.1f} | "
                  f"{r['latency_p99_us']:,.1f} |" for r in report["tuning"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="models/fashion-mnist")
    p.add_argument("--compare", default="torch,ort,ort-int8", help=f"comma-separated, from {','.join(ENGINES)}")
    p.add_argument("--batch-sizes", default="1,64,256,1024,4096")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--operations", default="encode,decode,reconstruct")
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--tuning", action="store_true", help="also time session settings")
    p.add_argument("--cold-start", action="store_true", help="also time a fresh process to its first batch")
    p.add_argument("--footprint", action="store_true", help="also build two virtual environments and size them")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    engines = [e.strip() for e in args.compare.split(",")]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"unknown engine(s) {unknown}; expected some of {', '.join(ENGINES)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    operations = args.operations.split(",")
    model = vae_infer.load(args.model, threads=args.threads)
    graphs = {role: read_verified(model.path, model.manifest, getattr(model.manifest, role).file)
              for role in ("encoder", "decoder")}
    flops = {"encode": bench.graph_flops(graphs["encoder"]), "decode": bench.graph_flops(graphs["decoder"])}
    flops["reconstruct"] = flops["encode"] + flops["decode"]
    report = {"command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "model": args.model,
              "threads": args.threads, "environment": bench.environment(), "flops": flops,
              "matmul": bench.matmul_flops()}
    rows = []
    for engine in engines:
        print(f"benchmarking {engine} ...", file=sys.stderr)
        if engine == "torch":
            import torch

            report["torch_version"] = torch.__version__
            rows += bench_torch(model, batch_sizes, args.threads, operations, args.seconds)
        else:
            rows += bench_ort(engine, args.model, batch_sizes, args.threads, operations, args.seconds)
    report["results"] = rows
    report["ratios"] = ratios(rows, report["matmul"]["flop_per_second"], flops)
    if args.tuning:
        report["tuning"] = session_tuning(args.model, args.threads, args.seconds)
    if args.cold_start:
        report["cold_start"] = cold_start(args.model)
    if args.footprint:
        report["footprint"] = footprint()
    md = to_markdown(report)
    print(md)
    if args.json:
        common.write_report(report, json_path=args.json)
    if args.markdown:
        common.write_report(report, markdown=md, markdown_path=args.markdown)
    if args.plot:
        bench.plot(report, args.plot)


if __name__ == "__main__":
    main()
