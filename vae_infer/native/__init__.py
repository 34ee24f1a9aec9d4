"""The C backend: a model package's ONNX graphs as dependency-free C99, compiled and called through ctypes.

    model = vae_infer.load("models/fashion-mnist", backend="c", weights="int8")   # same API as onnxruntime
    vae_infer.native.export_c("models/fashion-mnist", "build/vae_c", weights="int8")   # vae.h, vae.c, ...

Generation reads the graphs with the `onnx` package (the `native` extra); building needs a C compiler
(cc, gcc or clang). Built libraries are cached per user, keyed by each graph's sha256, so a later load
needs neither. Weight formats: fp32 (exact), fp16 (half the bytes) and int8 (a quarter: per-row and
per-input scales, inputs quantized per row to uint8 and integer dot products; the fastest on CPUs with
byte dot-product instructions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, ModelPackageError
from ..manifest import GraphSpec
from .build import (
    STRICT_FLAGS,
    CompilerError,
    cache_root,
    cached_library,
    compile_library,
    find_compiler,
    no_compiler_error,
    tuning,
)
from .codegen import DEFAULT_BLOCK, GENERATOR, WEIGHT_FORMATS, Sources, generate
from .graph import UnsupportedModelError, read_graph
from .runner import NativeRunner, NativeRuntimeError, open_library

RUN_FUNCTION = "run"  # the one function of a library built for one graph by create_runner


def check_weights(weights: str) -> str:
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"unknown weight format {weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    return weights


def create_runner(onnx_bytes: bytes, spec: GraphSpec | None = None, threads: int | None = None,
                  weights: str | None = None, library: str | Path | None = None,
                  cache_dir: str | Path | None = None, cc: str | None = None, block: int | None = None,
                  rows: int | None = None, native: bool = True) -> NativeRunner:
    """A runner for one ONNX graph (its bytes), compiled to C, with InferenceSession's run/get_inputs/
    get_outputs/get_providers.

    weights: "fp32" (default, exact), "fp16" or "int8". library: a prebuilt library (for example
    `make libvae.so` in an export-c folder) holding a function generated from this very graph (matched by
    sha256); otherwise the library is built into the cache (cache_dir, default $XDG_CACHE_HOME or ~/.cache
    under vae-infer/native) with the C compiler cc (default $CC, cc, gcc, clang). native=False builds
    portable code instead of code for this CPU. block, rows: the register blocking (outputs per weight block,
    rows per tile); by default tuned for this CPU (vae_infer.native.build.tuning)."""
    weights = check_weights(weights or "fp32")
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    where = spec.file if spec is not None else "graph"
    if library is not None:
        return _prebuilt(Path(library), digest, where, threads)
    tuned_block, tuned_rows = tuning(native)
    block = block or tuned_block
    rows = rows if rows is not None else (tuned_rows if block == tuned_block else None)
    folder, lib = cached_library(digest, weights, block, rows, "vae", cache_dir, native)
    if lib is None:
        graph = read_graph(onnx_bytes, where)  # an unsupported graph is refused before anything else
        if find_compiler(cc) is None:
            raise no_compiler_error(cc)
        try:
            sources = generate({RUN_FUNCTION: graph}, {RUN_FUNCTION: digest}, weights=weights, block=block,
                               model_name=where, rows=rows)
        except ValueError as e:
            raise InputError(str(e)) from e
        lib = compile_library(sources, folder, cc=cc, native=native)
    runner = NativeRunner(lib, RUN_FUNCTION, threads=threads)
    if runner.function.sha256 != digest or runner.weights != weights:
        raise ModelPackageError(f"{lib} was built from another graph or weight format ({runner.function.sha256[:16]}"
                                f"..., {runner.weights}); delete {folder} and load again")
    return runner


def _prebuilt(path: Path, digest: str, where: str, threads: int | None) -> NativeRunner:
    _, _, functions = open_library(path)
    for name, fn in functions.items():
        if fn.sha256 == digest:
            return NativeRunner(path, name, threads=threads)
    found = ", ".join(f"vae_{name} from {fn.sha256[:16]}..." for name, fn in functions.items())
    raise ModelPackageError(f"{path} was not generated from {where} (sha256 {digest[:16]}...): it holds {found}; "
                            f"export the library again from this model package")


# -- export ----------------------------------------------------------------------------------------------

ROLES = {"encode": "encoder", "decode": "decoder"}


@dataclass
class Export:
    out_dir: Path
    files: list[Path]
    weights: str
    weight_bytes: int
    functions: dict[str, str]
    digests: dict[str, str] = field(default_factory=dict)


def generate_package(package_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
                     block: int = DEFAULT_BLOCK, rows: int | None = None) -> tuple[Sources, dict[str, str]]:
    """C sources for a model package: <prefix>_encode and <prefix>_decode; returns (sources, sha256 per function)."""
    from ..package import read_manifest, read_verified

    check_weights(weights)
    manifest = read_manifest(package_dir)
    graphs, digests = {}, {}
    for fname, role in ROLES.items():
        spec: GraphSpec = getattr(manifest, role)
        data = read_verified(package_dir, manifest, spec.file)
        graphs[fname] = read_graph(data, str(Path(package_dir) / spec.file))
        digests[fname] = hashlib.sha256(data).hexdigest()
        declared = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        found = ([graphs[fname].input[0]], graphs[fname].output_names)
        if declared != found:
            raise ModelPackageError(f"{spec.file}: the graph's inputs and outputs are {found} but model.json "
                                    f"declares {declared}; the package is mismatched")
    try:
        sources = generate(graphs, digests, weights=weights, prefix=prefix, block=block, model_name=manifest.name,
                           rows=rows)
    except ValueError as e:
        raise InputError(str(e)) from e
    return sources, digests


def export_c(package_dir: str | Path, out_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
             block: int = DEFAULT_BLOCK, rows: int | None = None) -> Export:
    """Write <prefix>.h, <prefix>.c, main.c (an example program) and a Makefile for a model package into
    out_dir (created if missing; these four files are replaced, others are left alone).

    block: outputs per weight block (64 suits SIMD CPUs; 1 gives plain dot products, best for scalar
    microcontrollers); rows: a default VAE_ROWS (rows per tile) instead of the per-target choice."""
    from ..atomic import write_atomically
    from .example import example_main, makefile

    sources, digests = generate_package(package_dir, weights, prefix, block, rows)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; expected a folder for the C sources")
    texts = {
        f"{prefix}.h": sources.header,
        f"{prefix}.c": sources.source,
        "main.c": example_main(sources, prefix),
        "Makefile": makefile(prefix),
    }
    files = []
    for name, text in texts.items():
        data = text.encode()
        files.append(write_atomically(out / name, lambda f, data=data: f.write(data)))
    return Export(out, files, weights, sources.weight_bytes, sources.functions, digests)


__all__ = [
    "GENERATOR", "STRICT_FLAGS", "WEIGHT_FORMATS", "CompilerError", "Export", "NativeRunner", "NativeRuntimeError",
    "UnsupportedModelError", "cache_root", "create_runner", "export_c", "generate", "generate_package",
    "read_graph",
]
