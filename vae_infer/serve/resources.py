"""What the server reads once besides the model: the files the page fetches (model.json, decoder.onnx), the
latent map, the test images the page offers, and where the page's own files and onnxruntime-web lie."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ModelPackageError
from ..package.files import read_verified, sha256_bytes
from ..package.manifest import MANIFEST_NAME
from .redact import redact, redact_paths

WEB_DIR = Path(__file__).with_name("web")
# onnxruntime-web's CPU-only ES module build: it compiles WebAssembly (CSP 'wasm-unsafe-eval') but never builds
# code from strings, as the WebGPU/JSEP build does; it loads its ort-wasm-* files from beside it
ORT_ENTRY = "ort.wasm.min.mjs"
ORT_VERSION = "1.30.0"  # the page's package.json pins the same
NPM_COMMAND = f"npm install --no-save onnxruntime-web@{ORT_VERSION}"
EXAMPLES_SEED = 0


def find_ort_dist(web_assets: Path | None) -> Path | None:
    """The dist/ folder of an installed onnxruntime-web: --web-assets (the dist folder, the package folder, or a
    folder with node_modules: `NPM_COMMAND` run in it), else a copy `npm ci` put beside the page (a source
    checkout). None when there is none: the page then decodes through the API."""
    roots = [Path(web_assets)] if web_assets is not None else [WEB_DIR]
    for root in roots:
        for candidate in (root, root / "dist", root / "node_modules" / "onnxruntime-web" / "dist"):
            if (candidate / ORT_ENTRY).is_file():
                return candidate
    return None


class Resources:
    """Files served as they are, read and sha256-checked once; the map and the examples on first use."""

    def __init__(self, model, examples: str | None, examples_count: int) -> None:
        self.model = model
        man = model.manifest
        stored = (Path(model.path) / MANIFEST_NAME).read_bytes()
        self.manifest_sha256 = sha256_bytes(stored)
        # model.json as the page reads it: the paths of the machine that built the package cut to their last part
        shown = json.dumps(redact(json.loads(stored)), indent=2).encode()
        self.files: dict[str, bytes] = {
            MANIFEST_NAME: shown,
            man.decoder.file: read_verified(model.path, man, man.decoder.file),
        }
        self.examples_spec = examples
        self.examples_count = examples_count
        self._lock = threading.Lock()
        self._latent_map: dict[str, Any] | None = None
        self._examples: dict[str, Any] | None = None

    def latent_map(self) -> dict[str, Any]:
        """Codes (and labels) of a sample of a data set: the package's latent_map section, or else the nodes of
        its latent index (no labels). Blocking (reads files): call it on a compute thread."""
        with self._lock:
            if self._latent_map is None:
                self._latent_map = _read_latent_map(self.model)
            return self._latent_map

    def examples(self) -> dict[str, Any]:
        with self._lock:
            if self._examples is None:
                self._examples = _read_examples(self.model, self.examples_spec, self.examples_count)
            return self._examples


def _read_latent_map(model) -> dict[str, Any]:
    man = model.manifest
    if getattr(man, "latent_map", None):
        from ..interpolation import latent_map

        m = latent_map.read_latent_map(model)
        return {"z": np.asarray(m.codes, np.float32), "labels": None if m.labels is None else np.asarray(m.labels),
                "class_names": list(m.class_names) if m.class_names else None,
                "source": redact_paths(m.source or "the package's latent_map section"),
                "projection": _projection(m.codes, m.projection)}
    if man.latent_index:
        from ..interpolation.index import read_index

        index = read_index(model)
        return {"z": index.codes, "labels": None, "class_names": None,
                "source": f"latent index nodes ({index.n_nodes} of {index.n_codes} codes; no class labels)",
                "projection": _projection(index.codes, None)}
    raise ModelPackageError(
        f"{model.path} has no latent_map (or latent_index) section, so there is no map to draw; add one with "
        f"`vae-infer index build {model.path} --data DATASET` or `vae-infer calibrate {model.path} --data DATASET`"
    )


def _projection(codes, stored) -> dict[str, Any] | None:
    """The 2-D PCA drawing of a latent over 2-D (the stored one, else made now from the codes); None for 2-D."""
    from ..interpolation.latent_map import PLANE, pca_projection

    if codes.shape[1] <= PLANE:
        return None
    p = stored if stored is not None else pca_projection(codes)
    return {"kind": "pca", "mean": p.mean, "components": p.components, "points": p.points}


def _read_examples(model, spec: str | None, count: int) -> dict[str, Any]:
    if spec is None:
        raise DataError("this server offers no example images (started with --examples none)")
    from ..data.datasets import CLASS_NAMES
    from ..data.model_sources import open_for_model

    source = open_for_model(spec, model.manifest, split="test")  # image files read as the model's channels
    n = len(source)
    pick = np.sort(np.random.default_rng(EXAMPLES_SEED).choice(n, size=min(count, n), replace=False))
    images = np.stack([source.read(int(i), int(i) + 1)[0] for i in pick])  # a few rows: read one by one
    labels = source.labels()
    labels = None if labels is None else np.asarray(labels)[pick]
    x = model.as_images(images)  # validated like any input; sent back as uint8 so the page shows them exactly
    pixels = np.clip(np.round(x * model.manifest.input_scale), 0, 255).astype(np.uint8)
    names = CLASS_NAMES.get(str(spec)) or getattr(source, "class_names", None)
    return {"images": pixels, "labels": labels, "class_names": list(names) if names and labels is not None else None,
            "source": redact_paths(f"{source.name} (test split, {len(pixels)} images)")}
