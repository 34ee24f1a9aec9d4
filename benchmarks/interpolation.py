"""Graph-based interpolation against linear and slerp, on the shipped model and Fashion-MNIST.

    python benchmarks/interpolation.py --model models/fashion-mnist --pairs 200 --threads 2 \
        --json benchmarks/interpolation.json --markdown benchmarks/interpolation.md --pictures docs/images

What it measures (Fashion-MNIST from train.data.load_dataset; nothing is downloaded):
  1. Index build from the 60,000 training images (encoding included; reading the files is not), three times;
     the index's size on disk (the .npz in the package) and in memory (tracemalloc around loading the graph:
     networkx's dicts plus the arrays).
  2. Over --pairs random pairs of test images (seed 0), for linear, slerp and graph paths of --eval-steps points
     (equal arc length in data space): the mean length in data space (each segment split into 16, decoded,
     distances summed), the mean realism (mean distance of the path's decoded points to the nearest of the
     60,000 training images) and the largest step, and the ratios of the means to linear's.
  3. Ablations on the first 50 pairs: the plain version the issue describes (every training code a node, k=10,
     decoded-distance weights, Dijkstra, the path through the raw node codes), then landmarks, the realism
     weight and refinement one at a time.
  4. Query time of model.interpolate(a, b, steps=10) per method (every pair, three rounds, p50 / p90 / max of
     all calls), and the search alone: A* (ALT landmarks + decoded-distance heuristic) against Dijkstra.
  5. Pictures: graph strips above linear strips for three pairs, and paths drawn over the latent scatter and
     over the realism field.

The index is built into a temporary copy of the package; --save also stores it in --model itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vae_infer  # noqa: E402
from vae_infer import interpolation as it  # noqa: E402
from vae_infer import latent_graph as lg  # noqa: E402

ABLATION_PAIRS = 50
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")


def percentiles(times: list[float]) -> dict:
    t = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "max_ms": float(t.max()), "calls": len(t)}


def build_timing(model, images, repeats: int = 3) -> tuple[lg.LatentIndex, list[float]]:
    seconds, index = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        index = lg.build_index(model, images)
        seconds.append(time.perf_counter() - t0)
    return index, seconds


def graph_memory(index: lg.LatentIndex, model) -> int:
    """Bytes allocated while turning the stored index into a searchable graph, plus the index arrays."""
    arrays = sum(getattr(index, n).nbytes for n in ("codes", "counts", "edges", "distance", "bridge", "cost",
                                                    "field", "alt_nodes", "alt_dist"))
    tracemalloc.start()
    graph = lg.LatentGraph(index, model)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del graph
    return int(current + arrays)


def evaluate(model, pool, pairs, ref, method: str, steps: int, **options) -> dict:
    rows, infos = [], []
    for a, b in pairs:
        info: dict = {}
        _, codes = model.interpolate(pool[a], pool[b], steps=steps, method=method, return_codes=True, info=info,
                                     **options)
        m = it.path_metrics(model, codes, reference=ref)
        rows.append((m["length"], m["realism"], m["largest_step"], m["step_evenness"]))
        infos.append(info)
    r = np.array(rows)
    return {"length": r[:, 0], "realism": r[:, 1], "largest_step": r[:, 2], "evenness": r[:, 3], "infos": infos}


def summary(res: dict, base: dict | None) -> dict:
    out = {"mean_length": float(res["length"].mean()), "mean_realism": float(res["realism"].mean()),
           "mean_largest_step": float(res["largest_step"].mean()),
           "mean_step_evenness": float(res["evenness"].mean())}
    if base is not None:
        out["length_ratio"] = out["mean_length"] / float(base["length"].mean())
        out["realism_ratio"] = out["mean_realism"] / float(base["realism"].mean())
        out["pairs_shorter"] = int((res["length"] < base["length"] - 1e-9).sum())
        out["pairs_more_realistic"] = int((res["realism"] < base["realism"] - 1e-9).sum())
    return out


def bootstrap(res: dict, base: dict, n: int = 2000) -> dict:
    """Standard deviation of the two ratios over resampled pair sets: how much the figures would move with
    another draw of the same number of pairs."""
    rng = np.random.default_rng(1)
    k = len(base["length"])
    pick = rng.integers(0, k, (n, k))
    lr = res["length"][pick].mean(1) / base["length"][pick].mean(1)
    rr = res["realism"][pick].mean(1) / base["realism"][pick].mean(1)
    return {"length_ratio_std": float(lr.std()), "realism_ratio_std": float(rr.std())}


def time_queries(model, pool, pairs, method: str, rounds: int = 3, **options) -> dict:
    times = []
    for _ in range(rounds):
        for a, b in pairs:
            t0 = time.perf_counter()
            model.interpolate(pool[a], pool[b], steps=10, method=method, **options)
            times.append(time.perf_counter() - t0)
    return percentiles(times)


def time_search(model, pool, pairs) -> dict:
    graph = lg.load_graph(model)
    out = {}
    mu = model.encode(pool[np.asarray(pairs).reshape(-1)])[0].reshape(len(pairs), 2, -1)
    for search in lg.SEARCHES:
        times, evals, weights = [], [], []
        for za, zb in mu:
            t0 = time.perf_counter()
            found = graph.shortest_path(za, zb, search=search)
            times.append(time.perf_counter() - t0)
            evals.append(found["edge_evaluations"])
            weights.append(found["weight"])
        out[search] = {**percentiles(times), "mean_edge_evaluations": float(np.mean(evals)), "weights": weights}
    w_a, w_d = np.array(out["astar"].pop("weights")), np.array(out["dijkstra"].pop("weights"))
    out["astar_equals_dijkstra"] = bool(np.allclose(w_a, w_d, rtol=1e-9, atol=0))
    out["max_relative_difference"] = float(np.max(np.abs(w_a - w_d) / w_d))
    return out


def ablations(model, package: Path, train_images, pool, pairs, ref, steps: int) -> list[dict]:
    """The plain version (issue), then one change at a time, on the same pairs."""
    rows = []
    base = evaluate(model, pool, pairs, ref, "linear", steps)

    def add(name: str, m, **options):
        t0 = time.perf_counter()
        res = evaluate(m, pool, pairs, ref, "graph", steps, **options)
        per_pair = (time.perf_counter() - t0) / len(pairs)
        rows.append({"variant": name, **summary(res, base), "seconds_per_pair": per_pair})
        print(f"  {name}: length x{rows[-1]['length_ratio']:.3f}, realism x{rows[-1]['realism_ratio']:.3f}",
              flush=True)

    work = Path(tempfile.mkdtemp(prefix="interp-ablation-"))
    try:
        plain_pkg = work / "plain"
        shutil.copytree(package, plain_pkg)
        t0 = time.perf_counter()
        plain = lg.build_index(model, train_images, k=10, cell=1e-6, field_cell=0.05, realism_weight=0.0,
                               landmarks=0, max_nodes=len(train_images))
        plain_seconds = time.perf_counter() - t0
        lg.save_index(plain_pkg, plain, source="ablation: every code a node")
        pm = vae_infer.load(plain_pkg, threads=model_threads(model))
        add(f"plain: every training code a node ({plain.n_nodes}), k=10, decoded distance, Dijkstra, raw node "
            f"codes (build {plain_seconds:.1f} s)", pm, search="dijkstra", refine=False)
        add("landmarks (grid of cell means), k=12, decoded distance, raw node codes", model, realism_weight=0.0,
            refine=False)
        add("landmarks + realism weight q=2.5, raw node codes", model, refine=False)
        add("landmarks + refinement (energy only, q=0)", model, realism_weight=0.0)
        add("landmarks + realism weight + refinement (the default)", model)
    finally:
        shutil.rmtree(work)
    return rows


def model_threads(model) -> int:
    return model._sessions["decoder"].get_session_options().intra_op_num_threads


# -- pictures ------------------------------------------------------------------------------------------------------


def pictures(model, pool, labels, pairs, folder: Path, train_codes, train_labels) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    graph = lg.load_graph(model)
    written = []
    # three pairs whose linear paths are long (where the methods differ): the longest of the first pairs
    lengths = [it.path_metrics(model, model.interpolate(pool[a], pool[b], steps=16, method="linear",
                                                         return_codes=True)[1])["length"] for a, b in pairs[:30]]
    chosen = [pairs[i] for i in np.argsort(lengths)[::-1][:3]]
    steps = 10
    fig, axes = plt.subplots(2 * len(chosen), steps, figsize=(steps * 0.9, 2 * len(chosen) * 1.05))
    for p, (a, b) in enumerate(chosen):
        for r, method in enumerate(("graph", "linear")):
            images, codes = model.interpolate(pool[a], pool[b], steps=steps, method=method, return_codes=True)
            m = it.path_metrics(model, codes)
            for c in range(steps):
                ax = axes[2 * p + r, c]
                ax.imshow(images[c].reshape(model.image_shape), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[2 * p + r, 0].set_ylabel(f"{method}\n{m['length']:.1f}", fontsize=8, rotation=0, ha="right",
                                          va="center")
        axes[2 * p, steps // 2].set_title(f"{CLASS_NAMES[labels[a]]} to {CLASS_NAMES[labels[b]]}", fontsize=9)
    fig.suptitle("graph path (top) above linear path (bottom), 10 steps at equal data-space arc length;\n"
                 "number: path length in data space", fontsize=9)
    fig.tight_layout()
    path = folder / "interpolation_compare.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    ax = axes[0]
    sub = np.random.default_rng(0).choice(len(train_codes), 12000, replace=False)
    sc = ax.scatter(train_codes[sub, 0], train_codes[sub, 1], c=train_labels[sub], cmap="tab10", s=1, alpha=0.35)
    ax.scatter(graph.codes[:, 0], graph.codes[:, 1], s=0.6, c="k", alpha=0.25, label="graph nodes (landmarks)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(k)), label=CLASS_NAMES[k])
               for k in range(10)]
    idx = graph.index
    ny, nx_ = idx.field.shape
    extent = [idx.field_origin[0], idx.field_origin[0] + nx_ * idx.field_cell,
              idx.field_origin[1], idx.field_origin[1] + ny * idx.field_cell]
    shown = idx.field * idx.realism_ref
    inside = idx.field < idx.field.max()
    top = float(np.percentile(shown[inside], 99))
    im = axes[1].imshow(np.minimum(shown, top), origin="lower", extent=extent, cmap="viridis",
                        vmin=float(shown[inside].min()), vmax=top)
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="realism field: distance of the decoded image to the "
                                                      "nearest real image nearby (clipped)")
    colours = ("tab:red", "tab:orange", "tab:purple")
    for (a, b), colour in zip(chosen, colours, strict=True):
        for method, style in (("graph", "-"), ("linear", "--"), ("slerp", ":")):
            _, codes = model.interpolate(pool[a], pool[b], steps=48, method=method, return_codes=True)
            for axis in axes:
                axis.plot(codes[:, 0], codes[:, 1], style, color=colour if method == "graph" else "k", lw=1.8)
        for axis in axes:
            axis.plot(*codes[[0, -1]].T, "o", color=colour, ms=6)
    handles += [plt.Line2D([], [], marker="o", ls="", color="k", alpha=0.4, ms=3, label="graph nodes"),
                plt.Line2D([], [], ls="-", color="tab:red", label="graph"),
                plt.Line2D([], [], ls="--", color="k", label="linear"),
                plt.Line2D([], [], ls=":", color="k", label="slerp")]
    axes[0].legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    axes[0].set_title("test-image pairs: graph paths (colour) vs linear and slerp (black), over the training codes")
    axes[1].set_title("the same paths over the realism field (yellow: off the data)")
    for axis in axes:
        axis.set_xlim(extent[0], extent[1])
        axis.set_ylim(extent[2], extent[3])
        axis.set_aspect("equal")
        axis.set_xlabel("z1")
        axis.set_ylabel("z2")
    fig.tight_layout()
    path = folder / "interpolation_latent.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(str(path))
    return written


# -- report ----------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    b = result["build"]
    q = result["quality"]
    lines = [
        "# Graph-based interpolation",
        "",
        f"`{result['command']}`",
        "",
        f"Model `{result['model']}`; graph from the {b['n_codes']:,} Fashion-MNIST training images; "
        f"{result['pairs']} random pairs of test images (seed 0); paths of {result['eval_steps']} points at equal "
        f"arc length in data space. Machine: {result['environment']['machine']}, onnxruntime threads "
        f"{result['threads']}, load average {result['environment']['load_average_before'][0]:.2f} before "
        f"(shared machine: timings are noisy).",
        "",
        "## Path quality (means over the pairs; ratio = method / linear)",
        "",
        "| method | length (data space) | ratio | realism | ratio | largest step | pairs shorter / more realistic |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("linear", "slerp", "graph"):
        s = q[name]
        lines.append(
            f"| {name} | {s['mean_length']:.3f} | {s.get('length_ratio', 1.0):.3f} | {s['mean_realism']:.4f} | "
            f"{s.get('realism_ratio', 1.0):.3f} | {s['mean_largest_step']:.3f} | "
            + (f"{s['pairs_shorter']} / {s['pairs_more_realistic']} |" if "pairs_shorter" in s else "- |"))
    bs = q["graph_bootstrap"]
    first = [row for row in result["ablations"] if row["variant"].endswith("(the default)")]
    lines += [
        "",
        *([f"On the first {ABLATION_PAIRS} pairs alone (the default row of the ablations below): length ratio "
           f"{first[0]['length_ratio']:.3f}, realism ratio {first[0]['realism_ratio']:.3f}.", ""] if first else []),
        f"Targets: graph length ratio <= 0.90 (got **{q['graph']['length_ratio']:.3f}**), realism ratio <= 0.90 "
        f"(got **{q['graph']['realism_ratio']:.3f}**). Spread over resampled pair sets of the same size "
        f"(bootstrap std): length ratio +/- {bs['length_ratio_std']:.3f}, realism ratio +/- "
        f"{bs['realism_ratio_std']:.3f}.",
        "",
        "Length: each of the path's segments split into 16, decoded, distances between successive decoded images "
        "summed. Realism: mean over the path's points of the distance from the decoded image to the nearest of the "
        "60,000 training images (lower is more realistic).",
        "",
        f"## Ablations (first {ABLATION_PAIRS} pairs)",
        "",
        "| variant | length ratio | realism ratio | seconds per pair (incl. metrics) |",
        "|---|---:|---:|---:|",
    ]
    for row in result["ablations"]:
        lines.append(f"| {row['variant']} | {row['length_ratio']:.3f} | {row['realism_ratio']:.3f} | "
                     f"{row['seconds_per_pair']:.3f} |")
    t = result["timing"]
    lines += [
        "",
        "## Index",
        "",
        "| figure | value | target |",
        "|---|---:|---:|",
        f"| build from 60,000 images (encoding included), median of {len(b['seconds'])} | "
        f"{np.median(b['seconds']):.2f} s (runs: {', '.join(f'{s:.2f}' for s in b['seconds'])}) | <= 3 s |",
        f"| nodes / edges / bridges | {b['n_nodes']:,} / {b['n_edges']:,} / {b['n_bridges']} | |",
        f"| size on disk (latent_index.npz) | {b['bytes'] / 1e6:.2f} MB | <= 50 MB |",
        f"| size in memory (graph + arrays, tracemalloc) | {b['memory_bytes'] / 1e6:.2f} MB | <= 50 MB |",
        f"| loading the graph (first graph query) | {b['load_seconds'] * 1e3:.0f} ms | |",
        "",
        "## Query time: `model.interpolate(a, b, steps=10)` (all pairs, 3 rounds)",
        "",
        "| method | p50 | p90 | max | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("linear", "slerp", "graph"):
        s = t[name]
        lines.append(f"| {name} | {s['p50_ms']:.1f} ms | {s['p90_ms']:.1f} ms | {s['max_ms']:.1f} ms | "
                     + ("<= 20 ms |" if name == "graph" else "|"))
    s = t["search"]
    lines += [
        "",
        "Search alone (attach both endpoints, shortest path):",
        "",
        "| search | p50 | p90 | max | edges evaluated (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("astar", "dijkstra"):
        lines.append(f"| {name} | {s[name]['p50_ms']:.2f} ms | {s[name]['p90_ms']:.2f} ms | "
                     f"{s[name]['max_ms']:.2f} ms | {s[name]['mean_edge_evaluations']:.0f} |")
    lines += ["", f"A* and Dijkstra found paths of equal weight on every pair: {s['astar_equals_dijkstra']} "
                  f"(largest relative difference {s['max_relative_difference']:.1e}).", ""]
    if result.get("pictures"):
        here = ROOT / "benchmarks"
        lines += ["## Pictures", ""] + [f"![{Path(p).stem}]({os.path.relpath(Path(p).resolve(), here)})"
                                        for p in result["pictures"]] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/fashion-mnist")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--eval-steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--pictures", type=Path)
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--save", action="store_true", help="also store the index in --model")
    args = parser.parse_args()
    from train.data import load_dataset

    load0 = os.getloadavg()
    ds = load_dataset("fashion-mnist")
    train, test = ds.train_images, ds.test_images
    source = vae_infer.load(args.model, threads=args.threads)
    threads = model_threads(source)
    work = Path(tempfile.mkdtemp(prefix="interp-bench-"))
    try:
        package = work / Path(args.model).name
        shutil.copytree(args.model, package)
        print("building the index...", flush=True)
        index, seconds = build_timing(source, train)
        manifest = lg.save_index(package, index, source="Fashion-MNIST training images (60,000)")
        model = vae_infer.load(package, threads=args.threads)
        t0 = time.perf_counter()
        lg.load_graph(model)
        load_seconds = time.perf_counter() - t0
        build = {"seconds": seconds, "n_codes": index.n_codes, "n_nodes": index.n_nodes,
                 "n_edges": int(len(index.edges)), "n_bridges": int(index.bridge.sum()),
                 "bytes": (package / "latent_index.npz").stat().st_size, "memory_bytes": graph_memory(index, model),
                 "load_seconds": load_seconds, "manifest_section": manifest.latent_index}
        print(f"  build {np.median(seconds):.2f} s, {build['bytes'] / 1e6:.2f} MB, memory "
              f"{build['memory_bytes'] / 1e6:.1f} MB", flush=True)

        rng = np.random.default_rng(0)
        pairs = np.stack([rng.permutation(len(test))[: args.pairs], rng.permutation(len(test))[: args.pairs]], 1)
        pairs = [(int(a), int(b)) for a, b in pairs if a != b]
        ref = it.Reference(model, train)
        print(f"quality over {len(pairs)} pairs...", flush=True)
        res = {name: evaluate(model, test, pairs, ref, name, args.eval_steps) for name in it.METHODS}
        quality = {name: summary(res[name], None if name == "linear" else res["linear"]) for name in it.METHODS}
        quality["graph_bootstrap"] = bootstrap(res["graph"], res["linear"])
        quality["per_pair"] = {name: {"length": res[name]["length"].tolist(), "realism": res[name]["realism"].tolist()}
                               for name in it.METHODS}
        for name in ("slerp", "graph"):
            print(f"  {name}: length x{quality[name]['length_ratio']:.3f}, realism "
                  f"x{quality[name]['realism_ratio']:.3f}", flush=True)
        abl = []
        if not args.no_ablations:
            print(f"ablations over {ABLATION_PAIRS} pairs...", flush=True)
            abl = ablations(model, package, train, test, pairs[:ABLATION_PAIRS], ref, args.eval_steps)
        print("timing...", flush=True)
        timing = {name: time_queries(model, test, pairs, name) for name in it.METHODS}
        timing["search"] = time_search(model, test, pairs)
        print(f"  graph query p50 {timing['graph']['p50_ms']:.1f} ms, p90 {timing['graph']['p90_ms']:.1f} ms",
              flush=True)
        written = []
        if args.pictures:
            train_codes = model.encode(train)[0]
            written = pictures(model, test, ds.test_labels, pairs, args.pictures, train_codes, ds.train_labels)
        if args.save:
            lg.save_index(args.model, index, source="Fashion-MNIST training images (60,000)")
    finally:
        shutil.rmtree(work)
    command = "python benchmarks/interpolation.py " + " ".join(sys.argv[1:])
    import networkx
    import onnxruntime

    result = {
        "command": command, "model": args.model, "pairs": len(pairs), "eval_steps": args.eval_steps,
        "threads": threads, "build": build, "quality": quality, "ablations": abl, "timing": timing,
        "pictures": written,
        "environment": {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
                        "python": platform.python_version(), "numpy": np.__version__,
                        "onnxruntime": onnxruntime.__version__, "networkx": networkx.__version__,
                        "load_average_before": list(load0), "load_average_after": list(os.getloadavg())},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
