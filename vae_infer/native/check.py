"""Check an exported C library: build its example program for the export's target (strict C99 flags), run
it (natively, or under qemu for the Arm targets) on a file of inputs, and compare its outputs

- with the same graph evaluated in float64 numpy with the same (fp16- or int8-rounded) weights: this checks
  the generated code itself, tightly, for every weight format;
- with onnxruntime on the original graph (on this machine): fp32 must match to 1e-5 (relative to the value's
  size for logits, which reach hundreds); for fp16 and int8 the difference is the weight format's own error.

    report = check_export("models/fashion-mnist", "build/vae_c")   # raises ExportCheckError on a mismatch
    python -m vae_infer.native.check models/fashion-mnist build/m4 --target cortex-m4 --weights int8   # make check

x86_64 exports are compiled here with every C compiler present (gcc, clang); the other targets are built
with the export's own Makefile (`make`), which also writes memory.json."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import VaeInferError
from .abi import argument_names
from .build import STRICT_FLAGS, run_compiler
from .export import ROLES
from .targets import DEFAULT_TARGET, Target, get_target, require_compiler, require_emulator

REFERENCE_BOUND = 1e-4  # |C - numpy float64 with the same weights| / max(1, |value|), any weight format
ONNXRUNTIME_BOUND = 1e-5  # fp32: |C - onnxruntime| for latents and pixels
# fp32 logits: |C - onnxruntime| / max(1, |logit|). Logits reach |400| on real images and sum 512 float32
# products in another order than onnxruntime: measured up to 1.1e-5 with portable x86 code, 9.8e-6 on aarch64
LOGIT_BOUND = 5e-5
EXAMPLE_TIMEOUT_S = 600
MAKE_TIMEOUT_S = 900
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


def difference(got: np.ndarray, want: np.ndarray, relative: bool) -> float:
    """max |got - want|, divided by max(1, |want|) when relative."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if relative:
        diff = diff / np.maximum(1.0, np.abs(want.astype(np.float64)))
    return float(diff.max()) if diff.size else 0.0


def build_example(out_dir: Path, cc: str, work: Path, prefix: str = "vae",
                  extra_flags: list[str] | None = None) -> Path:
    """Compile <prefix>.c and main.c from out_dir with the strict flags into work/; returns the program."""
    out_dir = Path(out_dir).resolve()
    binary = Path(work).resolve() / f"{prefix}_example_{Path(cc).name}"
    cmd = [cc, *STRICT_FLAGS, "-O2", *(extra_flags or []), "-I", str(out_dir), "-o", str(binary),
           str(out_dir / "main.c"), str(out_dir / f"{prefix}.c"), "-lm"]
    try:
        run_compiler(cmd, work)
    except VaeInferError as e:
        raise ExportCheckError(f"the exported code does not compile cleanly with {Path(cc).name}: {e}") from e
    return binary


def make_target(out_dir: Path, target: Target) -> Path:
    """`make` in the export folder (the target's compiler, strict flags, memory.json); the example program."""
    require_compiler(target)
    if shutil.which("make") is None:
        raise ExportCheckError("building an export for another target needs make: apt-get install make")
    try:
        out = subprocess.run(["make", "-C", str(out_dir)], capture_output=True, text=True, timeout=MAKE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ExportCheckError(f"make in {out_dir} took over {MAKE_TIMEOUT_S} s") from e
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ExportCheckError(f"make in {out_dir} failed for {target.name}: {tail[0]}")
    return out_dir / target.program


def run_example(binary: Path, function: str, inputs: np.ndarray, widths: list[int], work: Path,
                target: Target | None = None) -> list[np.ndarray]:
    """Run `binary function IN OUT` on inputs (n, width) float32, under the target's emulator when it has
    one; the outputs, split per output."""
    work = Path(work).resolve()
    src, dst = work / f"{function}.in.f32", work / f"{function}.out.f32"
    np.ascontiguousarray(inputs, dtype=np.float32).tofile(src)
    dst.unlink(missing_ok=True)
    if target is not None and target.bare_metal:  # semihosting: the command line and relative file names
        cmd = [*require_emulator(target), "-kernel", str(binary), "-semihosting-config",
               f"enable=on,target=native,arg={binary.name},arg={function},arg={src.name},arg={dst.name}"]
    else:
        cmd = [*(require_emulator(target) if target is not None else []), str(binary), function, str(src), str(dst)]
    try:
        out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ExportCheckError(f"{binary.name} {function} did not finish within {EXAMPLE_TIMEOUT_S} s") from e
    if out.returncode != 0 or not dst.is_file():
        message = " ".join((out.stderr + out.stdout).split())[:300]
        raise ExportCheckError(f"{binary.name} {function} failed (exit {out.returncode}): {message}")
    flat = np.fromfile(dst, dtype=np.float32)
    if flat.size != len(inputs) * sum(widths):
        raise ExportCheckError(f"{binary.name} {function} wrote {flat.size} floats; expected {len(inputs)} rows "
                               f"of {sum(widths)}")
    flat = flat.reshape(len(inputs), sum(widths))
    cuts = np.cumsum([0, *widths])
    return [flat[:, a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def check_export(package_dir: str | Path, out_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
                 images: np.ndarray | None = None, n: int = 32, seed: int = 0,
                 compilers: list[str] | None = None, target: str | None = None) -> dict:
    """Build the export in out_dir for its target (x86_64: with each compiler, strict flags; others: `make`),
    run its example program on images (default: n random images) and on latent codes (their mu, and as many
    N(0, I) draws), and compare.

    Returns {"target", "compilers", "rows", "weights", "vs_reference": {output: max relative diff},
    "vs_onnxruntime": {output: max abs diff (relative for logits)}, "memory": memory.json or None}; raises
    ExportCheckError when the code does not build cleanly, differs from the reference by over REFERENCE_BOUND,
    or (fp32) from onnxruntime by over ONNXRUNTIME_BOUND (LOGIT_BOUND for logits)."""
    import json

    from .. import load
    from ..package.files import read_verified
    from .graph import read_graph
    from .reference import evaluate

    out_dir = Path(out_dir).resolve()  # the programs run in a temporary folder: a relative path would break
    t = get_target(target or DEFAULT_TARGET)
    model = load(package_dir, threads=1)
    rng = np.random.default_rng(seed)
    x = model.as_images(images) if images is not None else rng.random((n, model.manifest.features), np.float32)
    mu, _ = model.encode(x)
    z = np.concatenate([mu, rng.standard_normal(mu.shape).astype(np.float32)])
    feeds = {"encode": x, "decode": z}
    reference, names, ort = {}, {}, {}
    for fname, role in ROLES.items():
        spec = getattr(model.manifest, role)
        ort[fname] = model.runners[role].run(None, {spec.inputs[0].name: feeds[fname]})  # the loaded sessions
        graph = read_graph(read_verified(package_dir, model.manifest, spec.file), role)
        reference[fname] = evaluate(graph, feeds[fname], weights)
        names[fname] = argument_names(fname, len(graph.outputs))[1:]  # mu, logvar...: not the package's names
    memory = None
    if t.native:
        compilers = compilers if compilers is not None else available_compilers()
        if not compilers:
            raise ExportCheckError("no C compiler found (gcc, clang, cc) to check the export with")
    else:  # a missing cross compiler or qemu is named before anything is built
        require_compiler(t)
        require_emulator(t)
    vs_ref: dict[str, float] = {}
    vs_ort: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vae-export-check-") as tmp:
        work = Path(tmp)
        if t.native:
            assert compilers is not None, "found above for a native target"
            programs = [(Path(cc).name, build_example(out_dir, cc, work, prefix)) for cc in compilers]
        else:
            programs = [(t.cc, make_target(out_dir, t))]
            memory = json.loads((out_dir / "memory.json").read_text())
        for label, binary in programs:
            for fname in ROLES:
                widths = [w.shape[1] for w in ort[fname]]
                got = run_example(binary, fname, feeds[fname], widths, work, None if t.native else t)
                for i, (name, kind) in enumerate(zip(names[fname], KINDS[fname], strict=True)):
                    d_ref = difference(got[i], reference[fname][i], relative=True)
                    d_ort = difference(got[i], ort[fname][i], relative=kind == "logit")
                    vs_ref[name] = max(vs_ref.get(name, 0.0), d_ref)
                    vs_ort[name] = max(vs_ort.get(name, 0.0), d_ort)
                    if not d_ref <= REFERENCE_BOUND:
                        raise ExportCheckError(
                            f"{label} ({t.name}): {prefix}_{fname} output {name!r} differs from the same graph "
                            f"computed in numpy with {weights} weights by {d_ref:.3g} (relative); expected at most "
                            f"{REFERENCE_BOUND:g}: the generated code is wrong"
                        )
                    bound = LOGIT_BOUND if kind == "logit" else ONNXRUNTIME_BOUND
                    if weights == "fp32" and not d_ort <= bound:
                        raise ExportCheckError(
                            f"{label} ({t.name}): {prefix}_{fname} output {name!r} differs from onnxruntime by "
                            f"{d_ort:.3g}{' (relative)' if kind == 'logit' else ''}; expected at most "
                            f"{bound:g} with fp32 weights"
                        )
    return {"target": t.name, "compilers": [label for label, _ in programs], "rows": len(x), "weights": weights,
            "emulator": " ".join(t.emulator) if not t.native else None,
            "vs_reference": vs_ref, "vs_onnxruntime": vs_ort, "memory": memory}


def check_images(n: int, image_shape: tuple[int, ...] | None = None, data: str | None = None,
                 package: str | Path | None = None) -> tuple[np.ndarray | None, str]:
    """The images a check runs on, and how to say what they are: the first n of `data` (a source spec, its
    test split) when given; else the first n of the images the package carries (its check_images section,
    stored by `vae-infer calibrate`); else the first n Fashion-MNIST test images when they are installed and the
    model takes 28x28 images; else None (the check draws n random images of the model's size)."""
    from ..data.sources import load_images

    if data is not None:
        images, where = load_images(data, split="test")
        return images[:n], f"{min(n, len(images))} images of {where}"
    if package is not None:
        from ..package.check_images import read_check_images

        carried = read_check_images(package)
        if carried is not None:
            return carried[:n], f"{min(n, len(carried))} images the package carries"
    if image_shape is not None and tuple(image_shape) != FASHION_SHAPE:
        return None, f"{n} random images (pass --check-data for real ones)"
    try:
        images, _ = load_images("fashion-mnist", split="test")
        return images[:n], f"{min(n, len(images))} Fashion-MNIST test images"
    except (VaeInferError, OSError):
        return None, f"{n} random images"


FASHION_SHAPE = (28, 28)


def main(argv: list[str] | None = None) -> int:
    """`make check`: python -m vae_infer.native.check MODEL DIR --target T --weights W [--images N]."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vae_infer.native.check", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("out_dir")
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--weights", default="fp32")
    p.add_argument("--prefix", default="vae")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--data", default=None, help="a source spec whose test images to check with")
    a = p.parse_args(argv)
    try:
        from ..package.files import read_manifest

        images, what = check_images(a.images, read_manifest(a.model).image_shape, a.data, package=a.model)
        report = check_export(a.model, a.out_dir, a.weights, a.prefix, images=images, n=a.images, target=a.target)
    except VaeInferError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(format_report(report, what))
    return 0


def format_report(report: dict, what: str) -> str:
    """The check's figures and its verdict, with the tolerances it held them to. check_export raises before a
    report exists when a bound is broken, so a report is a pass; the verdict says which bounds it passed."""
    ref = ", ".join(f"{k} {v:.2g}" for k, v in report["vs_reference"].items())
    ort = ", ".join(f"{k} {v:.2g}" for k, v in report["vs_onnxruntime"].items())
    where = f"under {report['emulator']}" if report["emulator"] else "natively"
    fp32 = report["weights"] == "fp32"
    lines = [f"checked {report['target']} ({' and '.join(report['compilers'])}, -std=c99 -Wall -Wextra -Werror "
             f"-pedantic), example program run {where} on {what}:",
             f"  vs numpy with the same {report['weights']} weights (relative): {ref}  [bound {REFERENCE_BOUND:g}]",
             f"  vs onnxruntime (logits relative): {ort}  " + (
                 f"[bounds {ONNXRUNTIME_BOUND:g}, logits {LOGIT_BOUND:g}]" if fp32 else
                 f"[for information: {report['weights']} weights change the results by design]")]
    mem = report.get("memory")
    if mem:
        lines.append(f"  memory.json: flash {mem['flash_bytes']:,} bytes, RAM {mem['ram_bytes']:,} bytes, worst-case "
                     f"stack {mem['stack_bytes']['worst_case_bytes']:,} bytes")
    bounds = (f"the C equals numpy with the same weights within {REFERENCE_BOUND:g}" +
              (f" and onnxruntime within {ONNXRUNTIME_BOUND:g} ({LOGIT_BOUND:g} for logits)" if fp32 else ""))
    lines.append(f"PASSED: {bounds}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
