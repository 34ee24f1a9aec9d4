"""The C backend (vae_infer.native): generated C99 from the ONNX graphs, compiled with strict flags, the example
program and the ctypes runner against onnxruntime, error codes, unsupported graphs, the cache, the CLI."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import vae_infer
from vae_infer.errors import DeviceError, MissingExtraError, ModelPackageError, VaeInferError

onnx = pytest.importorskip("onnx")  # the native extra
from onnx import TensorProto, helper  # noqa: E402

from tests.conftest import needs_binary  # noqa: E402
from vae_infer import native  # noqa: E402
from vae_infer.native import build, check  # noqa: E402
from vae_infer.native import weights as weight_formats  # noqa: E402
from vae_infer.native.graph import UnsupportedModelError, read_graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
GCC = shutil.which("gcc")
CLANG = shutil.which("clang")
needs_gcc = needs_binary("gcc", "gcc")
COMPILERS = [c for c in (GCC, CLANG) if c]  # clang only where it is installed


@pytest.fixture(scope="module", autouse=True)
def cache_in_tmp(tmp_path_factory):
    """Every test (and module-scoped fixture) builds into one cache under pytest's tmp folder, never the
    user's ~/.cache. Tests that need an empty cache point XDG_CACHE_HOME at their own tmp_path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        yield


def graph_bytes(package: Path, role: str) -> tuple[bytes, object]:
    from vae_infer.package.files import read_manifest

    manifest = read_manifest(package)
    spec = getattr(manifest, role)
    return (package / spec.file).read_bytes(), spec


def strict_shared_library(src_dir: Path, out: Path, cc: str, prefix: str = "vae") -> Path:
    cmd = [cc, *build.STRICT_FLAGS, "-O2", "-fPIC", "-shared", "-o", str(out), str(src_dir / f"{prefix}.c"), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


# -- the graph reader: what is supported, what is refused ------------------------------------------------


def tiny_onnx(nodes, inits, out_name="y", out_width=3, in_dims=("batch", 4)) -> bytes:
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", out_width])
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def weights(name, shape, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return helper.make_tensor(name, TensorProto.FLOAT, list(shape), a.ravel().tolist())


def test_reads_the_exported_graphs_into_fused_dense_layers(tiny_package):
    enc = read_graph(graph_bytes(tiny_package, "encoder")[0])
    assert enc.input == ("x", 784) and enc.outputs == [("mu", 2), ("logvar", 2)]
    assert [(op.kind, getattr(op, "act", None), op.weight.shape) for op in enc.ops] == [
        ("dense", "relu", (32, 784)), ("dense", None, (2, 32)), ("dense", None, (2, 32))]
    dec = read_graph(graph_bytes(tiny_package, "decoder")[0])
    assert dec.outputs == [("x_hat", 784), ("logits", 784)]
    assert [op.kind for op in dec.ops] == ["dense", "dense", "elementwise"]  # logits is an output: no fusion


@pytest.mark.parametrize("op", ["Conv", "Softmax", "Erf"])
def test_an_unsupported_operator_is_refused_with_its_name(op):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="layer", transB=1),
             helper.make_node(op, ["h"], ["y"], name="the_bad_node")]
    data = tiny_onnx(nodes, [weights("w", (3, 4))])
    with pytest.raises(UnsupportedModelError, match=rf"unsupported operator {op} \(node 'the_bad_node'\)"):
        read_graph(data)
    with pytest.raises(UnsupportedModelError, match=op):  # refused before a compiler is looked for
        native.create_runner(data)


def test_a_dynamic_feature_axis_is_refused_with_its_name():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    data = tiny_onnx(nodes, [weights("w", (3, 4))], in_dims=("batch", "features"))
    with pytest.raises(UnsupportedModelError, match=r"dynamic shape: the input 'x' has dimension 1 = 'features'"):
        read_graph(data)


@pytest.mark.parametrize("case, pattern", [
    ("transA", r"transA=1"),
    ("runtime_weight", r"computed at run time"),
    ("add_two_tensors", r"adds two computed tensors"),
    ("rank3", r"rank 3"),
])
def test_unsupported_forms_are_named(case, pattern):
    w = weights("w", (3, 4))
    if case == "transA":
        data = tiny_onnx([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1)], [w])
    elif case == "runtime_weight":
        data = tiny_onnx([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["x", "r"], ["y"])], [])
    elif case == "add_two_tensors":
        data = tiny_onnx([helper.make_node("Gemm", ["x", "w"], ["a"], transB=1),
                          helper.make_node("Gemm", ["x", "w"], ["b"], transB=1),
                          helper.make_node("Add", ["a", "b"], ["y"])], [w])
    else:
        data = tiny_onnx([helper.make_node("Relu", ["x"], ["y"])], [], in_dims=("batch", 2, 2))
    with pytest.raises(UnsupportedModelError, match=pattern):
        read_graph(data)


@needs_gcc
def test_matmul_add_tanh_identity_graph_matches_onnxruntime():
    """Other exporters' spelling of the same layers: MatMul + Add (fused as the bias), Tanh, Identity, alpha/beta."""
    import onnxruntime as ort

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Add", ["b1", "m"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "w2", "b2"], ["g"], alpha=0.5, beta=2.0),  # transB=0: w2 is (in, out)
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),
    ]
    inits = [weights("w1", (4, 70), 1), weights("b1", (70,), 2), weights("w2", (70, 3), 3), weights("b2", (1, 3), 4)]
    data = tiny_onnx(nodes, inits)
    x = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    runner = native.create_runner(data, cc=GCC)
    got = runner.run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


@needs_gcc
@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Relu"])
def test_elementwise_functions_are_accurate_over_the_whole_float_range(op):
    """The generated code's own branch-free exp (vectorizable, no libm expf) against numpy in float64."""
    data = tiny_onnx([helper.make_node(op, ["x"], ["y"])], [], out_width=4)
    runner = native.create_runner(data, cc=GCC, threads=1)
    x = np.concatenate([np.linspace(-120, 120, 4001), np.linspace(-1e-3, 1e-3, 3), [-1e30, 1e30, 0.0]])
    x = np.resize(x, (len(x) + 3) // 4 * 4).astype(np.float32).reshape(-1, 4)
    got = runner.run(["y"], {"x": x})[0].astype(np.float64)
    v = x.astype(np.float64)
    want = {"Sigmoid": np.exp(-np.logaddexp(0, -v)), "Tanh": np.tanh(v), "Relu": np.maximum(v, 0)}[op]
    assert np.abs(got - want).max() <= 3e-7  # a few float32 ulps of values in [-1, 1]
    if op == "Sigmoid":  # and relative accuracy where sigmoid is small (decoded background pixels)
        small = (want > 1e-30) & (v > -80)
        assert (np.abs(got - want)[small] / want[small]).max() <= 1e-6


# -- generated code: strict compile, the example program, error codes ----------------------------------


@pytest.fixture(scope="module")
def tiny_export(tiny_package, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-c")
    native.export_c(tiny_package, out)
    return out


def test_export_writes_the_files_with_the_documented_api(tiny_export):
    assert sorted(p.name for p in tiny_export.iterdir()) == ["Makefile", "main.c", "memory.py", "vae.c", "vae.h"]
    header = (tiny_export / "vae.h").read_text()
    assert "int vae_encode(const float *x, float *mu, float *logvar, int n);" in header
    assert "int vae_decode(const float *z, float *x_hat, float *logits, int n);" in header
    source = (tiny_export / "vae.c").read_text()
    for banned in ("malloc", "calloc", "realloc", "free("):  # no allocation (mutable globals: see the nm test)
        assert banned not in source
    assert "\t$(CC)" in (tiny_export / "Makefile").read_text()


@needs_gcc
def test_export_compiles_strictly_and_the_example_program_matches_onnxruntime(tiny_package, tiny_export, tiny_images):
    """gcc (and clang when present) with -std=c99 -Wall -Wextra -Werror -pedantic; the example reads a file of
    real images, writes mu and logvar; and a file of codes, writing x_hat and logits."""
    report = check.check_export(tiny_package, tiny_export, images=tiny_images, compilers=COMPILERS)
    assert report["compilers"] == [Path(c).name for c in COMPILERS]
    assert max(report["vs_onnxruntime"][k] for k in ("mu", "logvar", "x_hat")) <= 1e-5
    assert report["vs_onnxruntime"]["logits"] <= 1e-5  # relative to max(1, |logit|)
    assert max(report["vs_reference"].values()) <= 1e-4
    # and the example program directly, on a file of real images
    model = vae_infer.load(tiny_package, threads=1)
    work = tiny_export.parent / "example-bin"
    work.mkdir(exist_ok=True)
    program = check.build_example(tiny_export, COMPILERS[0], work)
    mu, logvar = check.run_example(program, "encode", model.as_images(tiny_images), [2, 2], work)
    want_mu, want_logvar = model.encode(tiny_images)
    assert np.abs(mu - want_mu).max() <= 1e-5 and np.abs(logvar - want_logvar).max() <= 1e-5


@pytest.mark.parametrize("weights", ["fp16", "int8"])
@needs_gcc
def test_fp16_and_int8_exports_compute_exactly_their_rounded_weights(tiny_package, tmp_path, weights, tiny_images):
    native.export_c(tiny_package, tmp_path, weights=weights)
    report = check.check_export(tiny_package, tmp_path, weights=weights, images=tiny_images, compilers=COMPILERS[:1])
    assert max(report["vs_reference"].values()) <= 1e-4  # the C code computes what the format stores


@needs_gcc
@needs_binary("make", "make")
def test_make_builds_the_library_and_example(tiny_export, tmp_path):
    work = tmp_path / "c"
    shutil.copytree(tiny_export, work)
    subprocess.run(["make", "-s", f"CC={GCC}", "all", "libvae.so"], cwd=work, check=True, capture_output=True)
    out = subprocess.run([str(work / "vae_example"), "info"], capture_output=True, text=True, check=True).stdout
    assert "weights=fp32" in out and "encode=" in out


@needs_gcc
def test_bad_arguments_return_error_codes(tiny_export, tmp_path):
    lib = ctypes.CDLL(str(strict_shared_library(tiny_export, tmp_path / "libvae.so", GCC)))
    enc = lib.vae_encode
    enc.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int]
    strerror = lib.vae_strerror
    strerror.restype = ctypes.c_char_p
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    mu, logvar = np.full((3, 2), 7.0, np.float32), np.full((3, 2), 7.0, np.float32)
    assert enc(None, mu.ctypes.data, logvar.ctypes.data, 3) == -1  # VAE_ERR_NULL_INPUT
    assert enc(x.ctypes.data, None, None, 3) == -2  # VAE_ERR_NULL_OUTPUT
    assert enc(x.ctypes.data, mu.ctypes.data, logvar.ctypes.data, -1) == -3  # VAE_ERR_BATCH
    assert (mu == 7).all() and (logvar == 7).all()  # nothing written on an error
    assert enc(x.ctypes.data, mu.ctypes.data, logvar.ctypes.data, 0) == 0 and (mu == 7).all()
    assert enc(x.ctypes.data, mu.ctypes.data, None, 3) == 0  # one output may be NULL
    assert (mu != 7).all() and (logvar == 7).all()
    assert b"NULL" in strerror(-1) and b"negative" in strerror(-3) and strerror(0) == b"ok"
    dec = lib.vae_decode
    dec.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int]
    assert dec(x.ctypes.data, None, None, 1) == -2


@needs_gcc
@needs_binary("nm", "binutils")
def test_the_library_needs_no_allocator_and_only_libm(tiny_export, tmp_path):
    obj = tmp_path / "vae.o"
    subprocess.run([GCC, *build.STRICT_FLAGS, "-O3", "-c", "-o", str(obj), str(tiny_export / "vae.c")], check=True)
    undefined = set(subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    undefined -= {"U"}
    # fmaf from libm; compilers may turn zeroing loops into memset (which even freestanding C provides)
    assert undefined <= {"fmaf", "memset", "memcpy"}, undefined
    data = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")
    writable = [line for line in data if line.split()[1:2] and line.split()[1] in {"B", "b", "D", "d"}]
    assert writable == [], writable  # no global or static mutable data


# -- the ctypes backend -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_c(tiny_package):
    return vae_infer.load(tiny_package, backend="c", threads=2)


@needs_gcc
def test_c_backend_matches_onnxruntime_through_the_api(tiny_c, tiny_model, tiny_images):
    assert tiny_c.providers == {"encoder": ["C"], "decoder": ["C"]} and tiny_c.backend == "c"
    for got, want in zip(tiny_c.encode(tiny_images), tiny_model.encode(tiny_images), strict=True):
        assert np.abs(got - want).max() <= 1e-5
    assert np.abs(tiny_c.reconstruct(tiny_images) - tiny_model.reconstruct(tiny_images)).max() <= 1e-5
    np.testing.assert_allclose(tiny_c.sample(40, seed=3), tiny_model.sample(40, seed=3), atol=1e-5)
    np.testing.assert_allclose(tiny_c.score(tiny_images, seed=1), tiny_model.score(tiny_images, seed=1), atol=1e-3)
    with pytest.raises(vae_infer.InputError):  # the same validation as the onnxruntime backend
        tiny_c.encode(np.full((2, 784), 2.0, np.float32))


@needs_gcc
def test_runner_is_an_inference_session_for_vae_model(tiny_package):
    data, spec = graph_bytes(tiny_package, "decoder")
    runner = native.create_runner(data, spec, threads=1)
    assert [(a.name, a.shape) for a in runner.get_inputs()] == [("z", ["batch", 2])]
    assert [(a.name, a.shape) for a in runner.get_outputs()] == [("x_hat", ["batch", 784]), ("logits", ["batch", 784])]
    assert runner.get_providers() == ["C"]
    z = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    logits, x_hat = runner.run(["logits", "x_hat"], {"z": z})  # the requested order
    np.testing.assert_allclose(x_hat, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    assert len(runner.run(None, {"z": z})) == 2
    with pytest.raises(vae_infer.InputError, match="unknown output 'nope'"):
        runner.run(["nope"], {"z": z})
    with pytest.raises(vae_infer.InputError, match=r"expected one input named 'z'"):
        runner.run(["x_hat"], {"x": z})
    with pytest.raises(vae_infer.InputError, match=r"shaped \(n, 2\), got \(5, 3\)"):
        runner.run(["x_hat"], {"z": np.zeros((5, 3), np.float32)})


@needs_gcc
def test_contiguous_float32_input_is_not_copied_and_other_layouts_are(tiny_package, monkeypatch):
    data, spec = graph_bytes(tiny_package, "encoder")
    runner = native.create_runner(data, spec, threads=1)
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    want = runner.run(["mu"], {"x": x})[0]
    seen = []
    original = runner._coerce
    monkeypatch.setattr(runner, "_coerce", lambda a: seen.append(a) or original(a))
    np.testing.assert_array_equal(runner.run(["mu"], {"x": x})[0], want)
    x.flags.writeable = False  # read-only arrays are passed without a copy too
    np.testing.assert_array_equal(runner.run(["mu"], {"x": x})[0], want)
    assert seen == []
    fortran = np.asfortranarray(x)
    np.testing.assert_array_equal(runner.run(["mu"], {"x": fortran})[0], want)
    np.testing.assert_array_equal(runner.run(["mu"], {"x": x.astype(np.float64)})[0], want)
    assert len(seen) == 2


@needs_gcc
def test_threads_split_rows_without_changing_results_and_calls_are_thread_safe(tiny_package):
    data, spec = graph_bytes(tiny_package, "encoder")
    one = native.create_runner(data, spec, threads=1)
    three = native.create_runner(data, spec, threads=3)
    x = np.random.default_rng(1).random((1001, 784), dtype=np.float32)
    assert len(three._split(1001)) == 3 and len(three._split(10)) == 1
    want = one.run(["mu", "logvar"], {"x": x})
    for got, w in zip(three.run(["mu", "logvar"], {"x": x}), want, strict=True):
        np.testing.assert_array_equal(got, w)  # whole tiles per thread: the same arithmetic
    results, errors = [None] * 8, []

    def work(i):
        try:
            results[i] = three.run(["mu"], {"x": x[i * 100 : i * 100 + 150]})[0]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, want[0][i * 100 : i * 100 + 150], atol=1e-6)


@needs_gcc
def test_few_rows_split_large_layers_with_a_worker_thread_and_give_identical_results():
    """The shipped encoder's 784 -> 512 layer is large: with threads >= 2 a call of few rows gives half of its
    output blocks to the library's worker thread (or takes them back when the worker is busy elsewhere)."""
    data, spec = graph_bytes(SHIPPED, "encoder")
    one = native.create_runner(data, spec, threads=1)
    two = native.create_runner(data, spec, threads=2)
    assert two._fn_one is not two._fn and one._fn_one is one._fn
    x = np.random.default_rng(2).random((64, 784), dtype=np.float32)
    for n in (1, 5, 7, 64):
        for got, want in zip(two.run(None, {"x": x[:n]}), one.run(None, {"x": x[:n]}), strict=True):
            np.testing.assert_array_equal(got, want)  # the same blocks, the same arithmetic
    want = one.run(["mu"], {"x": x})[0]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(50):
                results[i] = two.run(["mu"], {"x": x[i : i + 1]})[0]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and all(not t.is_alive() for t in threads)
    for i, got in results.items():
        np.testing.assert_array_equal(got, want[i : i + 1])


@needs_gcc
@pytest.mark.parametrize("rows", [1, 5, 6, 50])
def test_int8_dot_products_match_the_reference_on_this_cpu(rows, test_images_50):
    """The runner's library is built for this CPU (with AVX-512 VNNI: the intrinsics kernel, 6-row register
    blocks, and one row at a time for short tiles); it computes exactly what the int8 format stores."""
    from vae_infer.native.reference import evaluate

    for role in ("encoder", "decoder"):
        data, spec = graph_bytes(SHIPPED, role)
        runner = native.create_runner(data, spec, weights="int8", threads=1)
        graph = read_graph(data)
        x = (test_images_50.reshape(len(test_images_50), -1)[:rows] / np.float32(255) if role == "encoder" else
             np.random.default_rng(rows).standard_normal((rows, 2)).astype(np.float32))
        for got, want in zip(runner.run(None, {graph.input[0]: x.astype(np.float32)}), evaluate(graph, x, "int8"),
                             strict=True):
            assert (np.abs(got - want) / np.maximum(1, np.abs(want))).max() <= 1e-4


@needs_gcc
def test_a_forked_child_computes_alone_after_the_parent_used_the_worker(tiny_images):
    """After fork the child has no worker thread: its calls still complete (never waiting for the parent's
    worker), with the same results."""
    import multiprocessing

    data, spec = graph_bytes(SHIPPED, "encoder")
    runner = native.create_runner(data, spec, threads=2)
    x = np.random.default_rng(3).random((30, 784), dtype=np.float32)
    want = runner.run(["mu"], {"x": x})[0]  # the worker has started in this process
    _FORKED["runner"] = runner  # inherited by the child (a ctypes library cannot be pickled)
    ctx = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_run_in_child, (x,)).get(timeout=60)
    finally:
        _FORKED.clear()
    np.testing.assert_array_equal(got, want)


_FORKED: dict = {}


def _run_in_child(x):
    return _FORKED["runner"].run(["mu"], {"x": x})[0]


@needs_gcc
def test_the_cache_is_keyed_by_sha256_and_reused_without_compiler_or_onnx(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data, spec = graph_bytes(tiny_package, "encoder")
    native.create_runner(data, spec)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    builds = list((tmp_path / "vae-infer" / "native" / digest).iterdir())
    assert len(builds) == 1 and (builds[0] / "libvae.so").is_file() and (builds[0] / "vae.c").is_file()
    assert json.loads((builds[0] / "build.json").read_text())["weights"] == "fp32"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no compiler
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setitem(sys.modules, "onnx", None)  # and no onnx
    runner = native.create_runner(data, spec)
    assert runner.run(["mu"], {"x": np.zeros((1, 784), np.float32)})[0].shape == (1, 2)
    # a damaged cache entry is rebuilt, here needing onnx. The damaged file replaces the library rather than
    # overwriting it in place: this process still has the old one mapped, and truncating a mapped library
    # crashes the process (SIGBUS) when it next touches those pages.
    damaged = builds[0] / "libvae.so.damaged"
    damaged.write_bytes(b"corrupt")
    os.replace(damaged, builds[0] / "libvae.so")
    with pytest.raises(MissingExtraError):
        native.create_runner(data, spec)


@needs_gcc
def test_a_cached_library_loads_in_a_fresh_interpreter_without_onnx_or_torch(tiny_package, tiny_c):
    """tiny_c built the cache; a new process (same XDG_CACHE_HOME) uses it without importing onnx or torch."""
    import os

    script = ("import sys, vae_infer; m = vae_infer.load(sys.argv[1], backend='c', threads=1); "
              "m.reconstruct(m.sample(3)); "
              "print('HEAVY', sorted(k for k in sys.modules if k.split('.')[0] in ('onnx', 'torch', 'train')))")
    out = subprocess.run([sys.executable, "-c", script, str(tiny_package)], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=dict(os.environ)).stdout
    assert "HEAVY []" in out, out


def test_without_a_compiler_the_error_says_so_and_suggests_onnxruntime(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(DeviceError, match=r"needs a C compiler.*none was found.*backend='onnxruntime'") as e:
        vae_infer.load(tiny_package, backend="c")
    assert isinstance(e.value, build.CompilerError)


def test_without_onnx_the_error_names_the_extra(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'vae-infer\[native\]'"):
        vae_infer.load(tiny_package, backend="c")


@needs_gcc
def test_a_prebuilt_library_is_matched_to_each_graph_by_sha256(tiny_package, tiny_export, tmp_path, tiny_model,
                                                               tiny_images):
    lib = strict_shared_library(tiny_export, tmp_path / "libvae.so", GCC)
    runners = {role: native.create_runner(*graph_bytes(tiny_package, role), library=lib)
               for role in ("encoder", "decoder")}
    assert runners["encoder"].function.name == "encode" and runners["decoder"].function.name == "decode"
    mu = runners["encoder"].run(["mu"], {"x": tiny_model.as_images(tiny_images)})[0]
    assert np.abs(mu - tiny_model.encode(tiny_images)[0]).max() <= 1e-5
    other = (SHIPPED / "encoder.onnx").read_bytes()
    with pytest.raises(ModelPackageError, match="was not generated from"):
        native.create_runner(other, library=lib)


@needs_gcc
def test_the_runner_answers_to_the_graphs_names_and_the_library_holds_none(tmp_path, monkeypatch):
    """The C names are positional (input, output0); the graph's own names come from the caller's spec or the
    graph, never from the library, whose info string holds only the sha256 and widths."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["the_out"])]
    data = tiny_onnx(nodes, [weights("w", (3, 4))], out_name="the_out")
    runner = native.create_runner(data)
    assert runner.get_inputs()[0].name == "x" and [o.name for o in runner.get_outputs()] == ["the_out"]
    x = np.ones((2, 4), np.float32)
    assert runner.run(["the_out"], {"x": x})[0].shape == (2, 3)
    source = next(tmp_path.rglob("vae.c")).read_text()
    assert "int vae_run(const float *input, float *output0, int n)" in source and "the_out" not in source
    with pytest.raises(vae_infer.InputError, match="unknown output 'output0'"):
        runner.run(["output0"], {"x": x})


def test_a_library_from_an_older_generator_is_refused_with_a_rebuild_hint():
    old = ("generator=vae-infer-native/1; weights=fp32; block=64; encode=" + "0" * 64 + " x:784 -> mu:2 logvar:2")
    with pytest.raises(ValueError, match=r"built by 'vae-infer-native/1'.*export or build the library again"):
        native.parse_info(old)
    settings, functions = native.parse_info(f"generator={native.GENERATOR}; weights=int8; block=1; "
                                            f"encode={'a' * 64} 784 -> 2 2")
    assert settings["weights"] == "int8" and functions["encode"].input == 784
    assert functions["encode"].outputs == (2, 2)


def test_unknown_weight_format_is_an_input_error():
    with pytest.raises(vae_infer.InputError, match="unknown weight format 'int4'"):
        native.create_runner(b"", weights="int4")


def test_int8_quantization_reconstructs_weights_per_row_and_column():
    w = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)
    w[:, 3] *= 30  # an input column with large weights
    q, scale, columns = weight_formats.quantize_int8(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and scale.shape == (40,) and columns.shape == (30,)
    err = np.abs(weight_formats.effective_weight(w, "int8") - w)
    assert (err <= 0.5 * scale[:, None] * columns[None, :] + 1e-6).all()  # half a step, per row and column
    h = weight_formats.to_fp16(np.array([[1e-6, -3e-5, 0.1, 70000 / 2]], np.float32))
    assert h[0, 0] == 0 and h[0, 1] == 0 and h.dtype == np.float16  # subnormal halves are stored as zero


def test_block_layout_pads_only_awkward_tails():
    assert weight_formats.block_layout(784, 64) == [(b * 64, 64, 64) for b in range(12)] + [(768, 16, 24)]
    assert weight_formats.block_layout(2, 64) == [(0, 2, 2)]
    assert weight_formats.block_layout(512, 64)[-1] == (448, 64, 64)
    assert weight_formats.block_layout(10, 1) == [(i, 1, 1) for i in range(10)]
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert weight_formats.pack(w, 2).tolist() == [0, 2, 1, 3, 4, 5]


# -- the course model: parity on real images, fp16 / int8 bounds, size ---------------------------------------


@pytest.mark.slow
@needs_gcc
def test_shipped_model_fp32_matches_onnxruntime_on_real_test_images(tiny_images):
    ort_model = vae_infer.load(SHIPPED, threads=1)
    c_model = vae_infer.load(SHIPPED, backend="c", threads=1)
    for got, want in zip(c_model.encode(tiny_images), ort_model.encode(tiny_images), strict=True):
        assert np.abs(got - want).max() <= 1e-5
    assert np.abs(c_model.reconstruct(tiny_images) - ort_model.reconstruct(tiny_images)).max() <= 1e-5
    mu, _ = ort_model.encode(tiny_images)
    logits, want = c_model.decode_logits(mu), ort_model.decode_logits(mu)
    assert (np.abs(logits - want) / np.maximum(1, np.abs(want))).max() <= 5e-5  # logits reach |400|: float32 spacing
    np.testing.assert_allclose(c_model.score(tiny_images), ort_model.score(tiny_images), atol=2e-3)


# Bounds for the smaller formats on the course model, vs onnxruntime on real test images (measured on all
# 10,000 test images in benchmarks/native.md: fp16 mu 1.2e-3, logvar 1.5e-3, x_hat max 5.6e-3, -ELBO -0.0002
# nats; int8 mu 0.060, logvar 0.10, x_hat max 0.44 and mean 0.0065, -ELBO +0.42 nats).
FORMAT_BOUNDS = {
    "fp16": {"latent": 3e-3, "x_hat_max": 1.5e-2, "x_hat_mean": 3e-4, "nelbo": 0.05},
    "int8": {"latent": 0.15, "x_hat_max": 0.6, "x_hat_mean": 0.012, "nelbo": 1.0},
}


@pytest.mark.slow
@needs_gcc
@pytest.mark.parametrize("weights", ["fp16", "int8"])
def test_shipped_model_fp16_and_int8_stay_within_the_stated_bounds(weights, tiny_images):
    ort_model = vae_infer.load(SHIPPED, threads=1)
    model = vae_infer.load(SHIPPED, backend="c", weights=weights, threads=1)
    assert model.runners["encoder"].weights == weights
    bound = FORMAT_BOUNDS[weights]
    for got, want in zip(model.encode(tiny_images), ort_model.encode(tiny_images), strict=True):
        assert np.abs(got - want).max() <= bound["latent"]
    diff = np.abs(model.reconstruct(tiny_images) - ort_model.reconstruct(tiny_images))
    assert diff.max() <= bound["x_hat_max"] and diff.mean() <= bound["x_hat_mean"]
    change = model.score(tiny_images).mean() - ort_model.score(tiny_images).mean()
    assert abs(change) <= bound["nelbo"]
    if weights == "int8":  # the size limit: the int8 library for the course model within 1 MB
        lib = model.runners["encoder"].library.stat().st_size + model.runners["decoder"].library.stat().st_size
        assert lib <= 1_000_000 + 2 * 16_384, lib  # two single-graph libraries, each with its ELF overhead


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_export_c_writes_the_files(tiny_package, tmp_path):
    from click.testing import CliRunner

    from vae_infer.cli import main

    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["export-c", str(tiny_package), "--out", str(out), "--weights", "int8",
                                       "--prefix", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["weights"] == "int8" and report["check"] is None
    assert sorted(p.name for p in out.iterdir()) == ["Makefile", "main.c", "memory.py", "tiny.c", "tiny.h"]
    assert "int tiny_encode(const float *x, float *mu, float *logvar, int n)" in report["functions"]["encode"]
    result = CliRunner().invoke(main, ["export-c", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code != 0 and result.output.startswith("Error: ") and "no model package" in result.output
    result = CliRunner().invoke(main, ["export-c", str(tiny_package), "--out", str(out), "--prefix", "9bad"])
    assert result.exit_code != 0 and "prefix must be a C identifier" in result.output


@needs_gcc
def test_cli_export_c_check_compiles_and_compares(tiny_package, tmp_path):
    from click.testing import CliRunner

    from vae_infer.cli import main

    result = CliRunner().invoke(main, ["export-c", str(tiny_package), "--out", str(tmp_path), "--check"])
    assert result.exit_code == 0, result.output
    assert "-Werror -pedantic" in result.output and "vs onnxruntime" in result.output


def test_native_errors_are_vae_infer_errors():
    assert issubclass(UnsupportedModelError, ModelPackageError) and issubclass(build.CompilerError, DeviceError)
    assert issubclass(check.ExportCheckError, VaeInferError)


# -- targets: cross-compiled, run under qemu, against onnxruntime; memory reports; bad input ------------------

from vae_infer.native import memory_report, targets  # noqa: E402

TARGET_PARTS = {  # the binaries each target needs here, with the Debian package that brings each
    "x86_64": [("gcc", "gcc")],
    "aarch64-linux": [("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")],
    "armv7-linux": [("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"), ("qemu-arm", "qemu-user")],
    "cortex-m4": [("arm-none-eabi-gcc", "gcc-arm-none-eabi"), ("qemu-system-arm", "qemu-system-arm")],
}


def target_param(name: str, *values, slow: bool = False):
    marks = [needs_binary(b, pkg) for b, pkg in TARGET_PARTS[name]] + [needs_binary("make", "make")]
    return pytest.param(name, *values, marks=marks + ([pytest.mark.slow] if slow else []), id="-".join([name, *values]))


@pytest.fixture(scope="module")
def test_images_50(tiny_images) -> np.ndarray:
    """50 Fashion-MNIST test images when installed (else the 32 fixture images)."""
    images, _ = check.check_images(50)
    return images if images is not None else tiny_images


def test_every_target_has_flags_a_compiler_package_and_an_emulator():
    assert set(targets.TARGETS) == set(TARGET_PARTS)
    for name, t in targets.TARGETS.items():
        assert t.cc == TARGET_PARTS[name][0][0] or (name == "x86_64" and t.cc == "cc")
        assert t.arch_flags and (t.native or t.emulator[0] == TARGET_PARTS[name][1][0])
        assert TARGET_PARTS[name][0][1] in t.cc_package.split()
    m4 = targets.TARGETS["cortex-m4"]
    assert "-mfpu=fpv4-sp-d16" in m4.arch_flags and "-mfloat-abi=hard" in m4.arch_flags and m4.bare_metal
    assert m4.flash_bytes == m4.ram_bytes == 4 * 1024 * 1024  # mps2-an386: 4 MiB of code memory and of RAM


@pytest.mark.parametrize("target", [target_param(name) for name in TARGET_PARTS])
def test_generated_sources_compile_with_strict_flags_for_each_target(target, tiny_package, tmp_path):
    """-std=c99 -Wall -Wextra -Werror -pedantic with the target's own flags, every generated .c file."""
    t = targets.TARGETS[target]
    for weights in ("fp32", "int8"):
        out = tmp_path / weights
        export = native.export_c(tiny_package, out, weights=weights, target=target)
        sources = sorted(f for f in export.files if f.suffix == ".c")
        assert [f.name for f in sources] == (["main.c", "startup.c", "vae.c"] if t.bare_metal else ["main.c", "vae.c"])
        for src in sources:
            cmd = [t.cc if not t.native else "gcc", *build.STRICT_FLAGS, "-O2", *t.arch_flags, *t.defines, "-c",
                   str(src), "-o", str(src.with_suffix(".o"))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, (cmd, done.stderr)


@pytest.mark.parametrize("target, weights", [
    target_param("aarch64-linux", "fp32", slow=True),
    target_param("aarch64-linux", "int8", slow=True),
    target_param("armv7-linux", "fp32", slow=True),
    target_param("cortex-m4", "fp32", slow=True),
    target_param("cortex-m4", "int8", slow=True),
])
def test_each_target_runs_under_qemu_and_matches_onnxruntime(target, weights, tmp_path, test_images_50):
    """The shipped model cross-compiled by its exported Makefile, run under qemu on real test images."""
    out = tmp_path / "c"
    native.export_c(SHIPPED, out, weights=weights, target=target)
    report = check.check_export(SHIPPED, out, weights=weights, images=test_images_50, target=target)
    assert report["target"] == target and report["emulator"].startswith(targets.TARGETS[target].emulator[0])
    assert report["rows"] == len(test_images_50)
    assert max(report["vs_reference"].values()) <= 1e-4  # the code computes exactly what its weights say
    ort = report["vs_onnxruntime"]
    if weights == "fp32":  # the parity: within 1e-5 of onnxruntime (logits: relative to their size)
        assert max(ort["mu"], ort["logvar"], ort["x_hat"]) <= 1e-5, ort
        assert ort["logits"] <= check.LOGIT_BOUND, ort
    else:
        assert max(ort["mu"], ort["logvar"]) <= FORMAT_BOUNDS["int8"]["latent"], ort
    memory = json.loads((out / "memory.json").read_text())
    assert memory == report["memory"] and memory["fits"] and memory["target"] == target
    assert memory["stack_bytes"]["worst_case"]["vae_encode"]["bytes"] > 0


def berkeley_size(tool: str, path: Path) -> dict[str, int]:
    """text, data, bss from the size tool's default (Berkeley) format."""
    line = subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()[1]
    text, data, bss = (int(v) for v in line.split()[:3])
    return {"text": text, "data": data, "bss": bss}


@pytest.mark.slow
@needs_binary("arm-none-eabi-gcc", "gcc-arm-none-eabi")
@needs_binary("make", "make")
def test_cortex_m4_int8_fits_1mb_flash_and_64kb_ram_measured_on_the_built_image(tmp_path):
    out = tmp_path / "m4"
    native.export_c(SHIPPED, out, weights="int8", target="cortex-m4", flash="1M", ram="64K")
    done = subprocess.run(["make", "-C", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    memory = json.loads((out / "memory.json").read_text())
    assert memory["budget"] == {"flash_bytes": 1 << 20, "ram_bytes": 64 << 10} and memory["fits"]
    assert memory["flash_bytes"] <= 1 << 20 and memory["ram_bytes"] <= 64 << 10  # the target
    # the figures are the built image's: Berkeley size counts .text (code and const weights) and .data in
    # flash, .data + .bss (with the reserved stack) in RAM
    size = berkeley_size("arm-none-eabi-size", out / "vae_example.elf")
    assert memory["flash_bytes"] == size["text"] + size["data"]
    assert memory["ram_bytes"] == size["data"] + size["bss"]
    assert memory["reserved_stack_bytes"] == targets.TARGETS["cortex-m4"].stack_bytes
    frames = {line.split("\t")[0].rsplit(":", 1)[-1]: int(line.split("\t")[1])
              for line in (out / "vae.su").read_text().splitlines()}
    assert {k: memory["stack_bytes"]["per_function"][k]["bytes"] for k in frames} == frames
    worst = memory["stack_bytes"]["worst_case"]
    assert worst["main"]["path"][:2] == ["main", "vae_encode"] or worst["main"]["path"][:2] == ["main", "vae_decode"]
    assert worst["main"]["bytes"] >= frames["vae_encode"] + frames.get("main", 0)
    assert memory["stack_bytes"]["worst_case_bytes"] <= memory["reserved_stack_bytes"]
    # the library itself uses no heap, no stdio: only memset/memcpy may come from the C library
    undefined = set(subprocess.run(["arm-none-eabi-nm", "-u", str(out / "vae.o")], capture_output=True, text=True,
                                   check=True).stdout.split()) - {"U"}
    assert undefined <= {"memset", "memcpy", "fmaf"}, undefined
    assert "malloc" not in subprocess.run(["arm-none-eabi-nm", str(out / "vae_example.elf")], capture_output=True,
                                          text=True, check=True).stdout
    # `make check`: the firmware under qemu against onnxruntime, through the exported Makefile
    if shutil.which("qemu-system-arm"):
        done = subprocess.run(["make", "-C", str(out), "check"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "checked cortex-m4" in done.stdout and "under qemu-system-arm" in done.stdout, done.stdout


@pytest.mark.slow
@needs_binary("arm-none-eabi-gcc", "gcc-arm-none-eabi")
@needs_binary("make", "make")
def test_a_build_over_its_budget_fails(tmp_path):
    out = tmp_path / "m4"
    native.export_c(SHIPPED, out, weights="int8", target="cortex-m4", ram="16K")  # the example alone needs more
    done = subprocess.run(["make", "-C", str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "region `RAM' overflowed" in done.stderr, done.stderr
    native.export_c(SHIPPED, out, weights="int8", target="cortex-m4")
    done = subprocess.run(["make", "-C", str(out), "STACK=64"], capture_output=True, text=True)  # too little stack
    assert done.returncode != 0 and "does not fit its budget: stack: worst case" in done.stderr, done.stderr
    assert json.loads((out / "memory.json").read_text())["fits"] is False


def test_the_memory_report_takes_the_deepest_call_path():
    frames = {"main": 16, "vae_encode": 8, "tile": 100, "kernel": 40, "small": 4}
    calls = {"main": {"vae_encode", "small"}, "vae_encode": {"tile", "memset"}, "tile": {"kernel"}}
    assert memory_report.worst_case("main", frames, calls) == (164, ["main", "vae_encode", "tile", "kernel"])
    with pytest.raises(ValueError, match="recursion"):
        memory_report.worst_case("a", {"a": 1}, {"a": {"b"}, "b": {"a"}})


# -- bad input: one clear line each --------------------------------------------------------------------------


def test_unknown_target_missing_compiler_and_too_big_model_are_one_line_errors(tiny_package, tmp_path, monkeypatch):
    with pytest.raises(vae_infer.InputError, match=r"^unknown target 'riscv': expected one of x86_64, "
                                                   r"aarch64-linux, armv7-linux, cortex-m4$"):
        native.export_c(tiny_package, tmp_path / "a", target="riscv")
    with pytest.raises(vae_infer.InputError, match=r"too big for cortex-m4: its fp32 weight tables take [0-9,]{9} "
                                                   r"bytes but the flash holds 1,048,576 \(--flash\)"):
        native.export_c(SHIPPED, tmp_path / "b", target="cortex-m4", flash="1M")
    assert not (tmp_path / "b").exists()  # refused before anything is written
    with pytest.raises(vae_infer.InputError, match=r"--flash and --ram set a bare-metal target's budget"):
        native.export_c(tiny_package, tmp_path / "c", target="aarch64-linux", flash="1M")
    with pytest.raises(vae_infer.InputError, match=r"--ram must be a positive size in bytes"):
        native.export_c(tiny_package, tmp_path / "c", target="cortex-m4", ram="lots")
    native.export_c(tiny_package, tmp_path / "d", target="aarch64-linux")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(build.CompilerError, match=r"needs the C compiler aarch64-linux-gnu-gcc, which is not on "
                                                  r"PATH; install it: apt-get install --no-install-recommends "
                                                  r"gcc-aarch64-linux-gnu libc6-dev-arm64-cross$"):
        check.check_export(tiny_package, tmp_path / "d", target="aarch64-linux")


@pytest.mark.slow
def test_cli_export_c_target_errors_are_one_line(tiny_package, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tests.conftest import fails
    from vae_infer.cli import main

    runner = CliRunner()
    fails(runner.invoke(main, ["export-c", str(tiny_package), "--out", str(tmp_path / "a"), "--target", "riscv"]),
          "unknown target 'riscv'")
    fails(runner.invoke(main, ["export-c", str(SHIPPED), "--out", str(tmp_path / "b"), "--target", "cortex-m4",
                               "--flash", "1M"]), "too big for cortex-m4", "--weights int8")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    fails(runner.invoke(main, ["export-c", str(tiny_package), "--out", str(tmp_path / "c"), "--target",
                               "cortex-m4", "--check"]), "apt-get install --no-install-recommends gcc-arm-none-eabi")


@needs_gcc
def test_cli_export_c_check_works_with_a_relative_out(tiny_package, tmp_path, monkeypatch):
    """The check builds in a temporary folder: a relative --out must still point at the export."""
    from click.testing import CliRunner

    from tests.conftest import ok
    from vae_infer.cli import main

    monkeypatch.chdir(tmp_path)
    result = ok(CliRunner().invoke(main, ["export-c", str(tiny_package), "--out", "build/vae_c", "--check"]))
    assert "checked x86_64" in result.output and (tmp_path / "build" / "vae_c" / "vae.c").is_file()
    assert "PASSED: the C equals numpy with the same weights within 0.0001 and onnxruntime within 1e-05" in \
        result.output, result.output
    assert "\\x0a" not in result.output and result.output.count("\n") >= 5  # the report's lines, not escapes


REPORT = {"target": "x86_64", "compilers": ["gcc"], "rows": 50, "emulator": None, "memory": None,
          "vs_reference": {"mu": 1e-7, "x_hat": 2e-7}, "vs_onnxruntime": {"mu": 3e-7, "x_hat": 1e-6}}


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_the_check_report_ends_with_a_verdict_naming_its_tolerances(weights):
    text = check.format_report({**REPORT, "weights": weights}, "50 images")
    verdict = text.splitlines()[-1]
    assert verdict.startswith("PASSED: the C equals numpy with the same weights within 0.0001"), text
    if weights == "fp32":
        assert "onnxruntime within 1e-05 (5e-05 for logits)" in verdict and "[bounds 1e-05, logits 5e-05]" in text
    else:  # int8 results differ from fp32 onnxruntime by design: shown, never judged against fp32's bound
        assert "onnxruntime" not in verdict and "[for information: int8 weights change the results" in text


def test_check_images_follow_the_model_shape_and_the_check_data(tmp_path):
    images, what = check.check_images(5, (32, 32))
    assert images is None and what == "5 random images (pass --check-data for real ones)"
    data = np.random.default_rng(0).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "mine.npy", data)
    images, what = check.check_images(5, (32, 32), str(tmp_path / "mine.npy"))
    assert np.array_equal(images, data[:5]) and what.startswith("5 images of ")
