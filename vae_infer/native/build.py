"""Compile generated C with the system compiler into a per-user cache, keyed by the graph's sha256.

    $XDG_CACHE_HOME/vae-infer/native/<sha256 of the ONNX graph>/<weights>-<build key>/libvae.so
    (~/.cache when XDG_CACHE_HOME is unset)

The build key covers everything else that changes the library: the generator version, weight format,
block size, compile flags and the CPU (-march=native code must not run on another machine sharing the
cache). A build goes into a temporary folder which is then renamed into place, so concurrent processes
and crashes never leave a half-written library; a cached library is used without a compiler or onnx."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import DeviceError
from ..machine import cache_dir as machine_cache_dir
from ..machine import cpu_flags, cpu_identity
from .abi import GENERATOR, Sources

LIBRARY = "libvae.so"
BUILD_RECORD = "build.json"
WARNINGS = ["-Wall", "-Wextra", "-pedantic"]
STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]  # what the tests compile with
COMPILE_TIMEOUT_S = 600
# the modules whose text decides the generated code: any change to them rebuilds cached libraries
GENERATOR_MODULES = ("abi.py", "ctext.py", "graph.py", "kernels.py", "kernels_int8.py", "weights.py", "writer.py")


class CompilerError(DeviceError):
    """The C backend cannot build its library: no C compiler, or the compiler failed."""


def find_compiler(cc: str | None = None) -> str | None:
    """The C compiler to use: `cc`, else $CC, else the first of cc, gcc, clang on PATH; None when there is none."""
    for name in ([cc] if cc else []) + ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        found = shutil.which(name.split()[0]) if name else None
        if found:
            return found
    return None


def no_compiler_error(cc: str | None = None) -> CompilerError:
    looked = f"{cc!r}" if cc else "$CC, cc, gcc and clang"
    return CompilerError(
        f"backend='c' needs a C compiler to build its library and none was found (looked for {looked} on PATH); "
        f"install one (for example apt-get install gcc) or use the onnxruntime backend: "
        f"vae_infer.load(path, backend='onnxruntime')"
    )


@functools.lru_cache(maxsize=8)
def compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def optimization_flags(native: bool = True) -> list[str]:
    """-O3, and code for this very CPU (the cache is per machine). On AVX-512 machines the compiler is
    asked for 512-bit vectors, which the 6-row x 64-output register blocks are laid out for."""
    flags = ["-O3"]
    if native and platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        flags.append("-march=native" if platform.machine().lower() in ("x86_64", "amd64") else "-mcpu=native")
        if "avx512f" in cpu_flags():
            flags.append("-mprefer-vector-width=512")
    return flags


def tuning(native: bool = True) -> tuple[int, int | None]:
    """(block, rows) of the register blocks for the CPU the library is built for: measured on a Xeon with
    AVX-512 (64 outputs x 6 rows: ~100 multiply-adds per ns per core) and with AVX2 only (24 x 4: ~59).
    Elsewhere 64 outputs and the rows the generated code picks from the target's macros."""
    flags = cpu_flags() if native else set()
    if "avx512f" in flags:
        return 64, 6
    if {"avx2", "fma"} <= flags:
        return 24, 4
    return 64, None


def library_flags(native: bool = True) -> list[str]:
    """The runner's library: strict C99, this CPU's vector code, and (POSIX) a worker thread that takes half
    of each large layer in calls of few rows (<prefix>_<function>_parallel)."""
    threads = ["-DVAE_THREADS", "-pthread"] if os.name == "posix" else []
    return ["-std=c99", *optimization_flags(native), *WARNINGS, *threads, "-fPIC", "-shared"]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return machine_cache_dir("native")


@functools.lru_cache(maxsize=1)
def generator_digest() -> str:
    """sha256 of the generator's own source, so that any change to it rebuilds cached libraries."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in GENERATOR_MODULES:
        try:
            h.update((here / name).read_bytes())
        except OSError:  # running from a zip or frozen: the version string has to do
            h.update(GENERATOR.encode())
    return h.hexdigest()[:16]


def build_key(weights: str, block: int, rows: int | None, prefix: str, flags: list[str]) -> str:
    text = json.dumps({"generator": GENERATOR, "source": generator_digest(), "weights": weights, "block": block,
                       "rows": rows, "prefix": prefix, "flags": flags, "cpu": cpu_identity()}, sort_keys=True)
    return f"{weights}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cached_library(digest: str, weights: str, block: int, rows: int | None, prefix: str,
                   cache_dir: str | Path | None = None, native: bool = True) -> tuple[Path, Path | None]:
    """(the folder this build lives in, its library when it is already built and intact, else None)."""
    folder = cache_root(cache_dir) / digest / build_key(weights, block, rows, prefix, library_flags(native))
    lib = folder / LIBRARY
    try:
        record = json.loads((folder / BUILD_RECORD).read_text())
        if record.get("library_sha256") == hashlib.sha256(lib.read_bytes()).hexdigest():
            return folder, lib
    except (OSError, ValueError):
        pass
    return folder, None


def compile_library(sources: Sources, folder: Path, cc: str | None = None, native: bool = True) -> Path:
    """Write the sources and compile them into folder/libvae.so (atomically); returns the library path."""
    compiler = find_compiler(cc)
    if compiler is None:
        raise no_compiler_error(cc)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    try:
        (tmp / f"{sources.prefix}.h").write_text(sources.header)
        (tmp / f"{sources.prefix}.c").write_text(sources.source)
        t0 = time.perf_counter()
        cmd = [compiler, *library_flags(native), "-o", LIBRARY, f"{sources.prefix}.c", "-lm"]
        try:
            run_compiler(cmd, tmp)
        except CompilerError:
            if not native:
                raise
            # a compiler that does not know -march=native / -mcpu=native: portable code is still fine
            cmd = [compiler, *library_flags(False), "-o", LIBRARY, f"{sources.prefix}.c", "-lm"]
            run_compiler(cmd, tmp)
        data = (tmp / LIBRARY).read_bytes()
        record = {"generator": GENERATOR, "weights": sources.weights, "compiler": compiler,
                  "compiler_version": compiler_version(compiler), "command": cmd,
                  "compile_seconds": round(time.perf_counter() - t0, 3),
                  "library_sha256": hashlib.sha256(data).hexdigest(), "functions": sources.functions}
        (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / LIBRARY).is_file():  # not another process finishing first: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / LIBRARY


def run_compiler(cmd: list[str], cwd: Path) -> None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except OSError as e:
        raise CompilerError(f"cannot run the C compiler {cmd[0]}: {e}; use the onnxruntime backend instead") from e
    except subprocess.TimeoutExpired as e:
        raise CompilerError(f"the C compiler took over {COMPILE_TIMEOUT_S} s: {' '.join(cmd)}") from e
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
        raise CompilerError(
            f"the C compiler failed (exit {out.returncode}) on generated code: {' '.join(cmd)} in {cwd}\n{tail}\n"
            f"use the onnxruntime backend meanwhile: vae_infer.load(path, backend='onnxruntime')"
        )
