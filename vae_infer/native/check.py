"""Check an exported C library: compile it with the strict flags with every C compiler present, run the
example program on a file of inputs, and compare its outputs

- with the same graph evaluated in float64 numpy with the same (fp16- or int8-rounded) weights: this checks
  the generated code itself, tightly, for every weight format;
- with onnxruntime on the original graph: fp32 must match to 1e-5 (relative to the value's size for logits,
  which reach hundreds); for fp16 and int8 the difference is the weight format's own error, reported.

    report = check_export("models/fashion-mnist", "build/vae_c")   # raises ExportCheckError on a mismatch
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import VaeInferError
from .build import STRICT_FLAGS, run_compiler

REFERENCE_BOUND = 1e-4  # |C - numpy float64 with the same weights| / max(1, |value|), any weight format
ONNXRUNTIME_BOUND = 1e-5  # fp32: |C - onnxruntime| (latents, pixels), / max(1, |value|) for logits
EXAMPLE_TIMEOUT_S = 120
KINDS = {"encode": ("latent", "latent"), "decode": ("pixel", "logit")}  # the manifest's output order


class ExportCheckError(VaeInferError):
    """The exported C code did not compile cleanly, or its results differ from onnxruntime's."""


def available_compilers() -> list[str]:
    """gcc and clang (and cc when it is neither), each once, in that order."""
    found, seen = [], set()
    for name in ("gcc", "clang", "cc"):
        path = shutil.which(name)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


KINDS = {"encode": ("latent", "latent"), "decode": ("pixel", "logit")}  # the manifest's output order


def difference(got: np.ndarray, want: np.ndarray, relative: bool) -> float:
    """max |got - want|, divided by max(1, |want|) when relative."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if relative:
        diff = diff / np.maximum(1.0, np.abs(want.astype(np.float64)))
    return float(diff.max()) if diff.size else 0.0


def build_example(out_dir: Path, cc: str, work: Path, prefix: str = "vae",
                  extra_flags: list[str] | None = None) -> Path:
    """Compile <prefix>.c and main.c from out_dir with the strict flags into work/; returns the program."""
    binary = work / f"{prefix}_example_{Path(cc).name}"
    cmd = [cc, *STRICT_FLAGS, "-O2", *(extra_flags or []), "-I", str(out_dir), "-o", str(binary),
           str(out_dir / "main.c"), str(out_dir / f"{prefix}.c"), "-lm"]
    try:
        run_compiler(cmd, work)
    except VaeInferError as e:
        raise ExportCheckError(f"the exported code does not compile cleanly with {Path(cc).name}: {e}") from e
    return binary


def run_example(binary: Path, function: str, inputs: np.ndarray, widths: list[int], work: Path) -> list[np.ndarray]:
    """Run `binary function IN OUT` on inputs (n, width) float32; the outputs, split per output."""
    src, dst = work / f"{function}.in.f32", work / f"{function}.out.f32"
    np.ascontiguousarray(inputs, dtype=np.float32).tofile(src)
    out = subprocess.run([str(binary), function, str(src), str(dst)], capture_output=True, text=True,
                         timeout=EXAMPLE_TIMEOUT_S)
    if out.returncode != 0:
        raise ExportCheckError(f"{binary.name} {function} failed (exit {out.returncode}): {out.stderr.strip()}")
    flat = np.fromfile(dst, dtype=np.float32).reshape(len(inputs), sum(widths))
    cuts = np.cumsum([0, *widths])
    return [flat[:, a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def check_export(package_dir: str | Path, out_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
                 images: np.ndarray | None = None, n: int = 32, seed: int = 0,
                 compilers: list[str] | None = None) -> dict:
    """Compile the export in out_dir with each compiler (strict flags), run its example program on images
    (default: n random images) and on latent codes (their mu, and as many N(0, I) draws), and compare.

    Returns {"compilers", "rows", "weights", "vs_reference": {output: max relative diff},
    "vs_onnxruntime": {output: max abs diff (relative for logits)}}; raises ExportCheckError when the code
    does not compile cleanly, differs from the reference by over REFERENCE_BOUND, or (fp32) from
    onnxruntime by over ONNXRUNTIME_BOUND."""
    from .. import load
    from ..package import read_verified
    from .codegen import evaluate
    from .graph import read_graph

    out_dir = Path(out_dir)
    model = load(package_dir, threads=1)
    rng = np.random.default_rng(seed)
    x = model.as_images(images) if images is not None else rng.random((n, model.manifest.features), np.float32)
    mu, logvar = model.encode(x)
    z = np.concatenate([mu, rng.standard_normal(mu.shape).astype(np.float32)])
    feeds = {"encode": x, "decode": z}
    ort = {"encode": [mu, logvar], "decode": [model.decode(z), model._decode_logits(z)]}
    reference, names = {}, {}
    for fname, role in (("encode", "encoder"), ("decode", "decoder")):
        spec = getattr(model.manifest, role)
        graph = read_graph(read_verified(package_dir, model.manifest, spec.file), spec.file)
        reference[fname] = evaluate(graph, feeds[fname], weights)
        names[fname] = graph.output_names
    compilers = compilers if compilers is not None else available_compilers()
    if not compilers:
        raise ExportCheckError("no C compiler found (gcc, clang, cc) to check the export with")
    vs_ref: dict[str, float] = {}
    vs_ort: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vae-export-check-") as tmp:
        work = Path(tmp)
        for cc in compilers:
            binary = build_example(out_dir, cc, work, prefix)
            for fname in ("encode", "decode"):
                widths = [w.shape[1] for w in ort[fname]]
                got = run_example(binary, fname, feeds[fname], widths, work)
                for i, (name, kind) in enumerate(zip(names[fname], KINDS[fname], strict=True)):
                    d_ref = difference(got[i], reference[fname][i], relative=True)
                    d_ort = difference(got[i], ort[fname][i], relative=kind == "logit")
                    vs_ref[name] = max(vs_ref.get(name, 0.0), d_ref)
                    vs_ort[name] = max(vs_ort.get(name, 0.0), d_ort)
                    if not d_ref <= REFERENCE_BOUND:
                        raise ExportCheckError(
                            f"{Path(cc).name}: {prefix}_{fname} output {name!r} differs from the same graph computed "
                            f"in numpy with {weights} weights by {d_ref:.3g} (relative); expected at most "
                            f"{REFERENCE_BOUND:g}: the generated code is wrong"
                        )
                    if weights == "fp32" and not d_ort <= ONNXRUNTIME_BOUND:
                        raise ExportCheckError(
                            f"{Path(cc).name}: {prefix}_{fname} output {name!r} differs from onnxruntime by "
                            f"{d_ort:.3g}{' (relative)' if kind == 'logit' else ''}; expected at most "
                            f"{ONNXRUNTIME_BOUND:g} with fp32 weights"
                        )
    return {"compilers": [Path(c).name for c in compilers], "rows": len(x), "weights": weights,
            "vs_reference": vs_ref, "vs_onnxruntime": vs_ort}
