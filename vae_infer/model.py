"""A loaded model package: encode, decode, reconstruct, sample and score with onnxruntime."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .errors import DeviceError, InputError, ModelPackageError, VaeInferError
from .inputs import (
    as_count,
    as_images,
    as_latents,
    as_seed,
    check_images,
    check_output_rows,
    images_to_float32,
)
from .package.files import read_manifest, read_verified, verify_all
from .package.manifest import BATCH_AXIS, GraphSpec, Manifest
from .package.sections import section_checks
from .sessions import GraphRunner, create_backend

Array = NDArray[np.float32]
DEFAULT_CHUNK = 4096  # rows per onnxruntime call: ~13 MB of decoder output, so memory stays bounded
SMALL_SUM = 256  # values of one output summed in Python rather than numpy (cheaper below this)


class VAEModel:
    """A model package loaded for inference. Stateless between calls, so one instance can serve
    several threads at once (onnxruntime's run is thread-safe)."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        spinning: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        backend: str = "onnxruntime",
        variant: str | None = None,
        weights: str = "fp32",
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"path must be a model package folder (str or os.PathLike), got {type(path).__name__}")
        if not isinstance(spinning, bool):
            raise DeviceError(f"spinning must be True or False, got {spinning!r}")
        if variant is not None and not isinstance(variant, str):
            raise ModelPackageError(f"variant must be a name such as 'int8' or None, got {variant!r}")
        self.path = Path(path)
        self.backend = backend
        self.manifest: Manifest = read_manifest(self.path)
        self.variant = variant
        if variant is not None and variant not in self.manifest.variants:
            raise ModelPackageError(
                f"{self.path} has no variant {variant!r}; it has {sorted(self.manifest.variants) or 'none'}. "
                f"Make one with: python -m train export {self.path} --quantize int8 (or --fp16, --ort-format)"
            )
        self.chunk_size = as_count(chunk_size, "chunk_size")
        devices = set()
        self._sessions = {}
        graph_files = []
        for role in ("encoder", "decoder"):
            spec: GraphSpec = getattr(self.manifest, role)
            if variant is not None:
                spec = dataclasses.replace(spec, file=self.manifest.variants[variant][f"{role}_file"])
            data = read_verified(self.path, self.manifest, spec.file)
            graph_files.append(spec.file)
            try:
                session, got = create_backend(data, spec, backend, device, threads, spinning, weights)
            except VaeInferError:
                raise
            except Exception as e:  # onnxruntime raises its own untyped errors for graphs it cannot read
                raise ModelPackageError(f"{backend} cannot load {self.path / spec.file}: {e}") from e
            _check_session_matches(session, spec, self.path / spec.file)
            self._sessions[role] = session
            devices.add(got)
        # Every other file (calibration, latent index, other variants) is checked now too, as the README says;
        # each is checked again when it is read for use.
        verify_all(self.path, self.manifest, skip=tuple(graph_files), checks=section_checks(self.path, self.manifest))
        self.device = "cuda" if devices == {"cuda"} else "cpu"
        self._enc_in = self.manifest.encoder.inputs[0].name
        self._enc_out = [t.name for t in self.manifest.encoder.outputs]  # mu, logvar
        self._dec_in = self.manifest.decoder.inputs[0].name
        self._x_hat, self._logits = (t.name for t in self.manifest.decoder.outputs)

    def __repr__(self) -> str:
        return (f"VAEModel({str(self.path)!r}, device={self.device!r}, backend={self.backend!r}, "
                f"latent_size={self.latent_size})")

    @property
    def latent_size(self) -> int:
        return self.manifest.latent_size

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image as arrays hold it: (h, w) for a gray model, (h, w, c) for colour (rows flatten it)."""
        return self.manifest.pixel_shape

    @property
    def channels(self) -> int:
        return self.manifest.channels

    @property
    def runners(self) -> dict[str, GraphRunner]:
        """What runs each graph, by role ("encoder", "decoder"): an onnxruntime InferenceSession, or the C
        backend's NativeRunner. Read-only use: options, providers, the compiled library."""
        return dict(self._sessions)

    @property
    def providers(self) -> dict[str, list[str]]:
        return {role: s.get_providers() for role, s in self._sessions.items()}

    # -- validation at the edge ------------------------------------------------------------------
    def as_images(self, images: object) -> Array:
        """Validated float32 rows (n, features) in [0, 1] from uint8 or float images; InputError otherwise."""
        return as_images(images, self.manifest.pixel_shape, self.manifest.input_scale)

    def check_images(self, images: object) -> np.ndarray:
        """Validated rows (n, features) in the caller's dtype, not yet converted: large inputs (memory-mapped
        files) are converted to float32 a chunk at a time by to_float32, so memory stays bounded."""
        return check_images(images, self.manifest.pixel_shape, self.manifest.input_scale)

    def to_float32(self, rows: np.ndarray) -> Array:
        """Rows from check_images as the float32 the graphs take."""
        return images_to_float32(rows, self.manifest.input_scale)

    # -- the graphs, in chunks -------------------------------------------------------------------
    def _run(self, role: str, outputs: list[str], feed: str, x: Array) -> list[Array]:
        session = self._sessions[role]
        if len(x) <= self.chunk_size:  # the common case, kept free of overhead for single-example latency
            return session.run(outputs, {feed: x})
        parts = [session.run(outputs, {feed: x[s : s + self.chunk_size]}) for s in range(0, len(x), self.chunk_size)]
        return [np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(len(outputs))]

    # -- the narrow interface for code that has validated its rows ----------------------------------
    # Feature modules (anomaly scores, interpolation, batch jobs, the server, benchmarks) call these after
    # validating once at their edge; they do no checks of their own, so a wrong dtype or shape here reaches
    # the backend as is. Everything else uses the public methods below, which validate.
    def encode_rows(self, x: Array) -> tuple[Array, Array]:
        """(mu, logvar) for validated rows: float32 (n, features) in [0, 1], as as_images returns them."""
        mu, logvar = self._run("encoder", self._enc_out, self._enc_in, x)
        # Rows in [0, 1] give finite codes from any sound encoder; a NaN or inf weight (which the base install
        # cannot read out of the graph) shows here. A float64 sum of the outputs is finite exactly when every
        # value is (float32 values cannot overflow it); for a few rows Python's own sum is the cheapest (~1 us).
        if mu.size <= SMALL_SUM:
            total = sum(mu.ravel().tolist()) + sum(logvar.ravel().tolist())
        else:
            total = np.add.reduce(mu, axis=None, dtype=np.float64) + np.add.reduce(logvar, axis=None, dtype=np.float64)
        if not math.isfinite(total):
            raise self._non_finite_codes(mu, logvar)
        return mu, logvar

    def _non_finite_codes(self, mu: Array, logvar: Array) -> ModelPackageError:
        name, out = ("mu", mu) if not np.isfinite(mu).all() else ("logvar", logvar)
        row = int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
        return ModelPackageError(
            f"{self.path}: the package's encoder produced non-finite values (NaN or inf) in {name} for a valid image "
            f"in [0, 1] (row {row} of a batch of {len(out)}); the encoder graph is damaged or was edited (a NaN or "
            f"inf weight): re-export the model")

    def decode_logits(self, z: Array) -> Array:
        """The decoder's logits (n, features) for validated float32 codes (n, latent_size)."""
        return self._run("decoder", [self._logits], self._dec_in, z)[0]

    def decode_rows(self, z: Array) -> Array:
        """The decoded images sigmoid(logits), (n, features) float32, for validated codes (n, latent_size)."""
        check_output_rows(len(z), self.manifest.features, "decode")
        x_hat = self._run("decoder", [self._x_hat], self._dec_in, z)[0]
        # A graph that overflows inside, even for codes within LATENT_BOUND, gives NaN: x_hat is a sigmoid, so
        # its max (one pass, no temporary) is finite exactly when every pixel is.
        if not np.isfinite(x_hat.max()):
            row = int(np.nonzero(~np.isfinite(x_hat).all(axis=1))[0][0])
            raise InputError(f"the decoder gave non-finite pixels for the latent code at row {row} "
                             f"({z[row].tolist()}); codes that far from the prior cannot be decoded by this model")
        return x_hat

    # -- public API ------------------------------------------------------------------------------
    def encode(self, images: object) -> tuple[Array, Array]:
        """(mu, logvar) of q(z|x), each (n, latent_size) float32. Inputs are converted to float32 one chunk
        at a time, so a large uint8 or memory-mapped input never becomes one big float32 copy."""
        rows = self.check_images(images)
        if len(rows) <= self.chunk_size:
            return self.encode_rows(self.to_float32(rows))
        mu = np.empty((len(rows), self.latent_size), np.float32)
        logvar = np.empty_like(mu)
        for s in range(0, len(rows), self.chunk_size):
            mu[s : s + self.chunk_size], logvar[s : s + self.chunk_size] = self.encode_rows(
                self.to_float32(rows[s : s + self.chunk_size]))
        return mu, logvar

    def decode(self, z: object) -> Array:
        """Decoded images (n, features) float32 in [0, 1]: the Bernoulli means sigmoid(logits)."""
        return self.decode_rows(as_latents(z, self.latent_size))

    def reconstruct(self, images: object) -> Array:
        """decode(mu): the deterministic reconstruction, (n, features)."""
        mu, _ = self.encode(images)
        return self.decode_rows(mu)

    def sample(self, n: int, seed: int | None = None) -> Array:
        """n images decoded from z ~ N(0, I), (n, features). The same seed gives the same images.
        n is at most the rows of a 2 GiB float32 output (vae_infer.inputs.MAX_OUTPUT_BYTES: 684,784 images of
        28 x 28), checked before any work."""
        n = as_count(n, "n")
        check_output_rows(n, self.manifest.features, "sample")
        z = np.random.default_rng(as_seed(seed)).standard_normal((n, self.latent_size)).astype(np.float32)
        return self.decode(z)

    def score(self, images: object, kind: str = "nelbo", samples: int | None = None,
              seed: int | None = 0) -> NDArray[np.float64]:
        """Per-example scores, (n,), higher = less likely under the model (vae_infer.anomaly.scores.score).

        kind="nelbo" (default): the negative ELBO in nats, -E_q[log p(x|z)] + KL(q(z|x) || p(z)), estimated
        with `samples` reparameterized draws of z per example (seeded; the same figure training reports).
        samples defaults to 1 draw, and to k = 64 for kind="iwae", as in the CLI and calibration; it is at most
        MAX_SAMPLES (1024), images x samples at most MAX_WORK (2**24), and a deterministic kind takes no samples
        (vae_infer.work_limits; checked before any work). Other kinds are the anomaly scores of vae_infer.anomaly."""
        from .anomaly.scores import score as anomaly_score

        return anomaly_score(self, images, kind=kind, samples=samples, seed=seed)

    def detect(self, images: object, **options):
        """(flags, scores): which images score above the threshold calibrated on training data (vae_infer.anomaly;
        samples as in score)."""
        from .anomaly.scores import detect

        return detect(self, images, **options)

    def denoise(self, images: object, **options) -> Array:
        """Images mapped through the encoder mean and the decoder (vae_infer.anomaly.scores.denoise): steps at most
        MAX_DENOISE_STEPS (100), images x steps at most MAX_WORK (2**24)."""
        from .anomaly.scores import denoise

        return denoise(self, images, **options)

    def interpolate(self, image_a: object, image_b: object, steps: int = 10, method: str = "linear",
                    **options) -> Array:
        """Decoded images along a path from image_a to image_b, (steps, features), steps at most MAX_STEPS (256)
        (vae_infer.interpolation; the latent path alone, from two codes: vae_infer.interpolation.interpolate_codes)."""
        from .interpolation.paths import interpolate

        return interpolate(self, image_a, image_b, steps=steps, method=method, **options)

    def path_metrics(self, path: object, **options) -> dict:
        """Length, brightness and realism of a path of codes or images, per frame and summarised
        (vae_infer.interpolation.paths.path_metrics)."""
        from .interpolation.paths import path_metrics

        return path_metrics(self, path, **options)


def _check_session_matches(session, spec: GraphSpec, path: Path) -> None:
    """The graph's real input/output names and shapes must be the ones the manifest declares."""
    for kind, real, declared in (
        ("input", session.get_inputs(), spec.inputs),
        ("output", session.get_outputs(), spec.outputs),
    ):
        got = [(t.name, tuple(BATCH_AXIS if isinstance(d, str) or d is None else d for d in t.shape)) for t in real]
        want = [(t.name, tuple(t.shape)) for t in declared]
        if got != want:
            raise ModelPackageError(
                f"{path}: the graph's {kind}s are {got} but model.json declares {want}; the package is mismatched"
            )


def load(
    path: str | Path,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    backend: str = "onnxruntime",
    variant: str | None = None,
    weights: str = "fp32",
) -> VAEModel:
    """Load a model package folder (model.json + encoder.onnx + decoder.onnx), verifying every file.

    device: "cpu", "cuda" (raises if CUDA is not really used) or "auto" (CUDA when available; see .device).
    threads: onnxruntime intra-op threads; default the cores this process may use.
    backend: "onnxruntime", or "c" for the graphs compiled to a native library (CPU only).
    variant: None for the fp32 graphs, or one the package lists in model.json `variants` ("int8", "fp16", "ort").
    weights: with backend="c", the weight format compiled in: "fp32" (exact), "fp16" or "int8"."""
    return VAEModel(path, device=device, threads=threads, spinning=spinning, chunk_size=chunk_size, backend=backend,
                    variant=variant, weights=weights)


__all__ = ["VAEModel", "load", "InputError"]
