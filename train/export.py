"""Export a trained VAE as a model package: encoder.onnx, decoder.onnx and model.json.

The graphs are checked with onnx.checker, compared with the torch model on real inputs through fresh
onnxruntime sessions, written atomically, and finally loaded back with vae_infer exactly as users will."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import vae_infer
from vae_infer.errors import VaeInferError
from vae_infer.package.files import sha256_bytes, write_package
from vae_infer.package.manifest import BATCH_AXIS, MANIFEST_NAME, GraphSpec, Manifest, TensorSpec
from vae_infer.sessions import create_backend

from .config import ModelConfig
from .model import VAE, Decoder

OPSET = 18  # the one ONNX opset every exported graph uses; onnxruntime >= 1.14 runs it
PARITY_TOLERANCE = 1e-5  # max abs difference between torch and onnxruntime on the images and latent codes
PARITY_ROWS = 512  # real inputs compared at export
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
DROP_FLAG = "--drop-extras"  # the command-line flag that accepts losing what an existing package holds


class ExportError(VaeInferError):
    """The exported graphs failed a check: onnx.checker, or parity with the torch model."""


def graph_specs(config: ModelConfig) -> tuple[GraphSpec, GraphSpec]:
    d, f = config.latent_size, config.input_size
    encoder = GraphSpec(
        ENCODER_FILE,
        inputs=(TensorSpec("x", (BATCH_AXIS, f)),),
        outputs=(TensorSpec("mu", (BATCH_AXIS, d)), TensorSpec("logvar", (BATCH_AXIS, d))),
    )
    decoder = GraphSpec(
        DECODER_FILE,
        inputs=(TensorSpec("z", (BATCH_AXIS, d)),),
        outputs=(TensorSpec("x_hat", (BATCH_AXIS, f)), TensorSpec("logits", (BATCH_AXIS, f))),
    )
    return encoder, decoder


def what_would_be_dropped(out: str | Path, rebuilt_variants: tuple[str, ...] = ()) -> list[str]:
    """What writing a new export to `out` would lose: the optional sections of the package there (variants,
    calibration, latent index, check images: all made from or chosen for the old weights, so wrong for new ones)
    and files in the folder that model.json does not list. Variants in rebuilt_variants are made again from the
    new weights."""
    out = Path(out)
    if not out.exists():
        return []
    if not out.is_dir():
        return [f"the file {out.name}"]
    try:
        data = json.loads((out / MANIFEST_NAME).read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # not a package (or a corrupt one): every file in the folder would go
        data = {}
    dropped = []
    variants = sorted(set(data.get("variants") or {}) - set(rebuilt_variants))
    if variants:
        dropped.append(f"variant{'s' if len(variants) > 1 else ''} {', '.join(variants)}")
    dropped += [label for key, label in (("calibration", "calibration"), ("latent_index", "latent index"),
                                         ("check_images", "check images")) if data.get(key)]
    listed = set(data.get("files") or {}) | ({MANIFEST_NAME} if data else set())
    stray = sorted(p.name for p in out.iterdir() if p.name not in listed)
    if stray:
        dropped.append(f"{len(stray)} file{'s' if len(stray) > 1 else ''} model.json does not list "
                       f"({', '.join(stray[:4])}{', ...' if len(stray) > 4 else ''})")
    return dropped


def check_replaceable(out: str | Path, drop_extras: bool = False, rebuilt_variants: tuple[str, ...] = ()) -> None:
    """Refuse (ExportError, one line) to replace a package whose extras would be lost, unless drop_extras."""
    dropped = what_would_be_dropped(out, rebuilt_variants)
    if dropped and not drop_extras:
        raise ExportError(
            f"{out} holds {', '.join(dropped)}, which exporting new weights there would drop; pass {DROP_FLAG} "
            f"to accept that (then rebuild them from the new weights: python -m train export {out} --quantize "
            f"int8 ..., vae-infer calibrate, vae-infer index build), or write to another --out"
        )


class _NoTorchvisionNotice(logging.Filter):
    """torch.onnx's exporter logs "torchvision is not installed. Skipping torchvision::<op>" for each
    torchvision op in its registry, on every export; these graphs use no torchvision op, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _quiet_exporter():
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _NoTorchvisionNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _to_onnx(module: torch.nn.Module, example: torch.Tensor, spec: GraphSpec) -> bytes:
    batch = torch.export.Dim(BATCH_AXIS)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        path = Path(tmp) / spec.file
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,  # one self-contained file per graph
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes={"x" if spec.file == ENCODER_FILE else "z": {0: batch}},
            opset_version=OPSET,
            verbose=False,
        )
        proto = onnx.load(str(path))
    # Name the dynamic axis as the manifest does, whatever the exporter called it.
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected {spec.file}: {e}") from e
    buf = io.BytesIO()
    onnx.save(proto, buf)
    return buf.getvalue()


def _check_parity(model: VAE, encoder_bytes: bytes, decoder_bytes: bytes, x: torch.Tensor) -> dict[str, float]:
    """Max abs difference between torch and fresh onnxruntime sessions, per output."""
    enc, _ = create_backend(encoder_bytes, threads=1)  # the factory VAEModel uses: the same sessions users get
    dec, _ = create_backend(decoder_bytes, threads=1)
    with torch.no_grad():
        mu_t, logvar_t = model.encoder(x)
        z = torch.cat([mu_t, torch.randn(mu_t.shape, generator=torch.Generator().manual_seed(0)) * 2])
        x_hat_t, logits_t = Decoder(model.decoder)(z)
    mu_o, logvar_o = enc.run(None, {"x": x.numpy()})
    x_hat_o, logits_o = dec.run(None, {"z": z.numpy()})
    diffs = {
        "mu": float(np.abs(mu_o - mu_t.numpy()).max()),
        "logvar": float(np.abs(logvar_o - logvar_t.numpy()).max()),
        "x_hat": float(np.abs(x_hat_o - x_hat_t.numpy()).max()),
        # logits reach magnitudes of tens, where float32 rounding alone is ~1e-6 relative
        "logits_relative": float((np.abs(logits_o - logits_t.numpy()) / np.maximum(1, np.abs(logits_t.numpy()))).max()),
    }
    bad = {k: v for k, v in diffs.items() if not v <= PARITY_TOLERANCE}
    if bad:
        raise ExportError(f"onnxruntime and torch disagree beyond {PARITY_TOLERANCE}: {bad}")
    return diffs


def tool_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "vae_infer": vae_infer.__version__,
    }


def export_package(
    model: VAE, out: str | Path, parity_inputs: torch.Tensor, name: str | None = None, training: dict | None = None,
    drop_extras: bool = False, preprocessing: dict | None = None,
) -> Path:
    """Export `model` to a model package at `out` (replaced atomically if it exists); returns `out`.

    parity_inputs: real images (n, features) in [0, 1]; the first PARITY_ROWS are compared.
    An existing package's variants, calibration and latent index were made from other weights: export refuses
    to replace it (ExportError naming them) unless drop_extras. preprocessing: how image files became the
    training pixels (vae_infer.data.preprocessing), recorded so the runtime reads image files the same way."""
    out = Path(out)
    check_replaceable(out, drop_extras)
    config = model.config
    model = model.eval()
    enc_spec, dec_spec = graph_specs(config)
    x = parity_inputs[:PARITY_ROWS].float()
    encoder_bytes = _to_onnx(model.encoder, x[:2], enc_spec)
    decoder_bytes = _to_onnx(Decoder(model.decoder), torch.zeros(2, config.latent_size), dec_spec)
    parity = _check_parity(model, encoder_bytes, decoder_bytes, x)
    files = {ENCODER_FILE: encoder_bytes, DECODER_FILE: decoder_bytes}
    manifest = Manifest(
        name=name or out.name,
        image_shape=tuple(config.image_shape[:2]),
        channels=config.channels,
        latent_size=config.latent_size,
        hidden_size=config.hidden_size,
        encoder=enc_spec,
        decoder=dec_spec,
        files={k: sha256_bytes(v) for k, v in files.items()},
        opset=OPSET,
        training={**(training or {}), "export_parity_max_abs_diff": parity},
        tools=tool_versions(),
        preprocessing=preprocessing,
    )
    write_package(out, files, manifest)
    vae_infer.load(out, threads=1)  # the same loader users run: sha256, names and shapes
    return out
