"""Model variants made from an exported package's graphs: int8 weights, fp16 weights, ORT format.

Each variant is stored beside the fp32 graphs in the same package, with its quality change on the
test set measured through vae_infer and written to model.json under `variants`."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import vae_infer
from vae_infer.errors import VaeInferError
from vae_infer.package.files import read_manifest, read_verified, update_package

VARIANTS = ("int8", "fp16", "ort")
SCORE_SEED = 0  # the same z draws for fp32 and every variant, so the -ELBO change is the variant's alone
# Mean abs difference from fp32 that each variant promises on real test images, for the latent means and
# the reconstructed pixels (the max is recorded too); export fails beyond it and tests hold variants to it.
TOLERANCE = {"int8": 0.03, "fp16": 1e-3, "ort": 1e-6}


@contextlib.contextmanager
def _quantizer_quiet():
    """onnxruntime's quantizers log advice through the root logger (`logging.warning("Please consider to run
    pre-processing ...")`) and warn about their own internals: noise for a user who asked for int8, whose
    quality the export measures and checks against TOLERANCE anyway. While they run, the root logger has a
    handler (so logging does not install its stderr default) and drops anything below ERROR; `-v` shows it all."""
    root = logging.getLogger()
    if root.isEnabledFor(logging.DEBUG):  # -v: the user asked to see third-party output
        yield
        return
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


SMALL_LAYER = 16  # Gemm layers with a side smaller than this (the 2-D latent heads) stay fp32: ~1% of the weights


def _proto_bytes(proto: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save(proto, buf)
    return buf.getvalue()


def _gemms(proto: onnx.ModelProto, large: bool) -> list[onnx.NodeProto]:
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    return [n for n in proto.graph.node
            if n.op_type == "Gemm" and (min(dims.get(n.input[1], [0])) >= SMALL_LAYER) == large]


def _gemm_to_matmul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm(x, W, b, transB=1) -> MatMul(x, W^T) + b for the large layers, the form the weight-only quantizer
    reads."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    large = {n.name for n in _gemms(proto, large=True)}
    nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.name not in large or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = w.T.copy() if attrs.get("transB", 0) else w
        proto.graph.initializer.append(numpy_helper.from_array(w, n.input[1] + "_kn"))
        product = n.output[0] + "_matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1] + "_kn"], [product], name=n.name + "_matmul"))
        nodes.append(helper.make_node("Add", [product, n.input[2]], [n.output[0]], name=n.name + "_bias"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _int8_dynamic(model_bytes: bytes) -> bytes:
    """int8 weights (per output channel) and uint8 activations quantized per call (MatMulInteger): the fast
    path. Used for the encoder, whose input pixels quantize exactly (uint8 images are 256 levels already)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(model_bytes)
    keep = [n.name for n in _gemms(proto, large=False)]
    with tempfile.TemporaryDirectory() as tmp, _quantizer_quiet():
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        # the quantizer renames Gemm nodes to <name>_MatMul before it reads nodes_to_exclude
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=keep + [k + "_MatMul" for k in keep])
        return dst.read_bytes()


def _int8_weights_only(model_bytes: bytes) -> bytes:
    """int8 weights in blocks of 32 with a scale each (MatMulNBits), activations kept in float. Used for the
    decoder: quantizing its hidden activations to 8 bits per call costs ~1.9 nats of test -ELBO."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    proto = _gemm_to_matmul(onnx.load_from_string(model_bytes))
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8)
    quantizer = MatMulNBitsQuantizer(proto, bits=8, block_size=32, is_symmetric=True, algo_config=config)
    with _quantizer_quiet():
        quantizer.process()
    return _proto_bytes(quantizer.model.model)


def _fp16(model_bytes: bytes) -> bytes:
    """fp16 weights and arithmetic, float32 inputs and outputs kept (for GPUs; half the size)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return _proto_bytes(convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True))


def _ort_format(model_bytes: bytes) -> bytes:
    """The ORT flatbuffer format that onnxruntime's minimal builds for small devices load. Only
    hardware-independent (basic) optimizations are baked in, so the file runs on any CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.ort"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return out.read_bytes()


# variant -> ({role: converter}, file name pattern)
CONVERTERS = {
    "int8": ({"encoder": _int8_dynamic, "decoder": _int8_weights_only}, "{role}.int8.onnx"),
    "fp16": ({"encoder": _fp16, "decoder": _fp16}, "{role}.fp16.onnx"),
    "ort": ({"encoder": _ort_format, "decoder": _ort_format}, "{role}.ort"),
}


def add_variants(package_dir: str | Path, kinds: list[str], test_images: np.ndarray) -> dict:
    """Make each variant from the package's fp32 graphs, measure it against fp32 on test_images, and
    store them all in the package. Returns the manifest's `variants` section.

    Variants are made and measured in a scratch copy; the package itself is rewritten once, atomically,
    only when every variant is within its tolerance."""
    package_dir = Path(package_dir)
    unknown = sorted(set(kinds) - set(VARIANTS))
    if unknown:
        raise VaeInferError(f"unknown variant(s) {unknown}: expected some of {list(VARIANTS)}")
    manifest = read_manifest(package_dir)
    reference = _measure(vae_infer.load(package_dir, threads=1), test_images)
    fp32 = {r: read_verified(package_dir, manifest, getattr(manifest, r).file) for r in ("encoder", "decoder")}
    variants, new_files = dict(manifest.variants), {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / package_dir.name
        shutil.copytree(package_dir, scratch)
        for kind in kinds:
            converters, pattern = CONVERTERS[kind]
            files = {pattern.format(role=role): convert(fp32[role]) for role, convert in converters.items()}
            entry = {
                "encoder_file": pattern.format(role="encoder"),
                "decoder_file": pattern.format(role="decoder"),
                "bytes": sum(len(b) for b in files.values()),
                "fp32_bytes": sum(len(b) for b in fp32.values()),
            }
            update_package(scratch, files, variants={**variants, kind: entry})
            got = _measure(vae_infer.load(scratch, threads=1, variant=kind), test_images)
            entry.update({
                "test_examples": len(test_images),
                "test_nelbo": got["nelbo"],
                "test_nelbo_change": got["nelbo"] - reference["nelbo"],
                "mean_abs_diff_vs_fp32": {k: float(np.abs(got[k] - reference[k]).mean()) for k in ("mu", "x_hat")},
                "max_abs_diff_vs_fp32": {k: float(np.abs(got[k] - reference[k]).max()) for k in ("mu", "x_hat")},
                "tolerance": TOLERANCE[kind],
            })
            worst = max(entry["mean_abs_diff_vs_fp32"].values())
            if not worst <= TOLERANCE[kind]:
                raise VaeInferError(f"variant {kind} differs from fp32 by {worst:.3g} on average, over its "
                                    f"tolerance {TOLERANCE[kind]}; the package is unchanged")
            variants[kind] = entry
            new_files.update(files)
    update_package(package_dir, new_files, variants=variants)
    return variants


def _measure(model: vae_infer.VAEModel, images: np.ndarray) -> dict:
    mu, _ = model.encode(images)
    return {"mu": mu, "x_hat": model.reconstruct(images),
            "nelbo": float(model.score(images, seed=SCORE_SEED).mean())}
