"""The C backend: a model package's ONNX graphs as dependency-free C99, compiled and called through ctypes,
or exported for a target (x86_64, aarch64-linux, armv7-linux, cortex-m4).

    model = vae_infer.load("models/fashion-mnist", backend="c", weights="int8")   # same API as onnxruntime
    vae_infer.native.export_c("models/fashion-mnist", "build/m4", weights="int8", target="cortex-m4")

Generation reads the graphs with the `onnx` package (the `native` extra); building needs a C compiler.
One concept per module: graph (ONNX -> dense layers), weights (fp32/fp16/int8 tables and layout), kernels
(C templates), writer (the .c and .h), abi (the info string), reference (the numpy check), build (the
cache), runner (ctypes), factory (create_runner), targets, export, makefile, firmware, example,
memory_report and check. This file only re-exports."""

from __future__ import annotations

from .abi import GENERATOR, LibraryFunction, Sources, parse_info
from .build import STRICT_FLAGS, CompilerError, cache_root
from .export import Export, export_c, generate_package
from .factory import create_runner
from .graph import UnsupportedModelError, read_graph
from .runner import NativeRunner, NativeRuntimeError
from .targets import TARGETS, Target
from .weights import DEFAULT_BLOCK, WEIGHT_FORMATS
from .writer import generate

__all__ = [
    "DEFAULT_BLOCK", "GENERATOR", "STRICT_FLAGS", "TARGETS", "WEIGHT_FORMATS", "CompilerError", "Export",
    "LibraryFunction", "NativeRunner", "NativeRuntimeError", "Sources", "Target", "UnsupportedModelError",
    "cache_root", "create_runner", "export_c", "generate", "generate_package", "parse_info", "read_graph",
]
