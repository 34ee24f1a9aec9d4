"""model.json: the manifest of a model package, the one contract between `train` and `vae_infer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ..errors import ModelPackageError, VaeInferError
from ..text import check_name, check_text

MANIFEST_NAME = "model.json"
FORMAT_NAME = "vae-infer-model"
FORMAT_VERSION = 2  # 2 added input.channels (colour images); version 1 packages are gray and still load
READ_VERSIONS = (1, 2)  # every version this vae_infer reads
CHANNELS = (1, 3)  # gray, or RGB flattened channels-last: (h, w, c) row-major
LIKELIHOODS = ("bernoulli",)
BATCH_AXIS = "batch"  # the symbolic name of the dynamic first axis of every graph input and output


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str | int, ...]  # BATCH_AXIS for the dynamic axis, ints for fixed sizes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True)
class Manifest:
    """What a loaded model promises. Validated when made, so a loaded manifest can be trusted."""

    name: str
    image_shape: tuple[int, int]  # (height, width); rows are (h, w, channels) flattened row-major (channels-last)
    latent_size: int
    encoder: GraphSpec  # x -> (mu, logvar)
    decoder: GraphSpec  # z -> (x_hat, logits)
    files: dict[str, str]  # file name -> sha256 hex digest, for every file the runtime reads
    opset: int
    likelihood: str = "bernoulli"  # p(x|z): independent Bernoulli pixels with means x_hat
    input_scale: float = 255.0  # uint8 inputs are divided by this; float inputs must already lie in [0, 1]
    hidden_size: int | None = None
    training: dict[str, Any] = field(default_factory=dict)  # figures and the command that made the model
    tools: dict[str, str] = field(default_factory=dict)  # versions of the tools that made the package
    # Optional sections added after export (each names its files, which must be listed in `files`):
    latent_index: dict[str, Any] | None = None  # the latent graph for graph-based interpolation
    calibration: dict[str, Any] | None = None  # anomaly-score thresholds from validation data
    latent_map: dict[str, Any] | None = None  # codes and labels of a data sample, for the explorer page
    check_images: dict[str, Any] | None = None  # a few validation images for self-checks (export-c --check)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. "int8": other encoder/decoder files
    format_version: int = FORMAT_VERSION
    # How image files become the model's pixels (vae_infer.data.preprocessing), where training read image files
    preprocessing: dict[str, Any] | None = None
    channels: int = 1  # 1: gray; 3: RGB, each pixel's red, green, blue adjacent (channels-last)

    def __post_init__(self) -> None:
        check_manifest_text(self.to_dict())
        _check_version(self.format_version)
        if self.channels not in CHANNELS or isinstance(self.channels, bool):
            raise ModelPackageError(f"model.json: input.channels must be one of {CHANNELS}, found {self.channels!r}")
        if self.format_version == 1 and self.channels != 1:
            raise ModelPackageError("model.json: format_version 1 holds gray images only; colour needs "
                                    "format_version 2 (input.channels)")
        if self.likelihood not in LIKELIHOODS:
            raise ModelPackageError(f"model.json: unknown likelihood {self.likelihood!r}; expected {LIKELIHOODS}")
        if len(self.image_shape) != 2 or min(self.image_shape) < 1 or self.latent_size < 1:
            raise ModelPackageError(
                f"model.json: bad sizes image_shape={self.image_shape}, latent_size={self.latent_size}"
            )
        expect = {
            "encoder": (self.encoder, [(BATCH_AXIS, self.features)], [(BATCH_AXIS, self.latent_size)] * 2),
            "decoder": (self.decoder, [(BATCH_AXIS, self.latent_size)], [(BATCH_AXIS, self.features)] * 2),
        }
        for role, (graph, ins, outs) in expect.items():
            got_in = [tuple(t.shape) for t in graph.inputs]
            got_out = [tuple(t.shape) for t in graph.outputs]
            if got_in != ins or got_out != outs:
                raise ModelPackageError(
                    f"model.json: the {role} should take {ins} and give {outs}, but it declares {got_in} -> {got_out}"
                )
            if graph.file not in self.files:
                raise ModelPackageError(f"model.json: no sha256 listed for the {role} file {graph.file!r}")
        problem = size_problem(self.features, self.hidden_size, self.latent_size)
        if problem:
            raise ModelPackageError(f"model.json: {problem}")
        if self.preprocessing is not None:
            _check_preprocessing(self.preprocessing, self.image_shape)
        for section, name in self.referenced_files():
            check_file_name(name, section)
            if name not in self.files:
                raise ModelPackageError(f"model.json: {section} names the file {name!r} but no sha256 is listed for it")

    def referenced_files(self) -> list[tuple[str, str]]:
        """(section, file name) for every file an optional section names under a key ending in "file"."""
        sections = [("latent_index", self.latent_index), ("calibration", self.calibration),
                    ("latent_map", self.latent_map), ("check_images", self.check_images)]
        sections += [(f"variants.{k}", v) for k, v in self.variants.items()]
        return [
            (section, value if isinstance(value, str) else repr(value))
            for section, body in sections
            if body
            for key, value in body.items()
            if key == "file" or key.endswith("_file")
        ]

    @property
    def features(self) -> int:
        return self.image_shape[0] * self.image_shape[1] * self.channels

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The shape of one image as arrays hold it: (h, w) for gray, (h, w, channels) for colour."""
        h, w = self.image_shape
        return (h, w) if self.channels == 1 else (h, w, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "name": self.name,
            "input": {
                "image_shape": list(self.image_shape),
                **({"channels": self.channels} if self.format_version >= 2 else {}),
                "features": self.features,
                "dtype": "float32",
                "range": [0.0, 1.0],
                "uint8_scale": self.input_scale,
            },
            "latent_size": self.latent_size,
            "hidden_size": self.hidden_size,
            "likelihood": self.likelihood,
            "prior": "standard-normal",
            "opset": self.opset,
            "graphs": {"encoder": self.encoder.to_dict(), "decoder": self.decoder.to_dict()},
            "files": {name: {"sha256": digest} for name, digest in sorted(self.files.items())},
            "training": self.training,
            "tools": self.tools,
            **({"latent_index": self.latent_index} if self.latent_index else {}),
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"latent_map": self.latent_map} if self.latent_map else {}),
            **({"check_images": self.check_images} if self.check_images else {}),
            **({"variants": self.variants} if self.variants else {}),
            **({"preprocessing": self.preprocessing} if self.preprocessing else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """The manifest from parsed model.json, checked field by field: exact types (no "1" for 1, no true
        for 1, no 2.7 for an integer), ranges, shapes, and file names confined to the package folder.
        Anything else is a ModelPackageError naming the field."""
        if isinstance(d, dict):
            check_manifest_text(d)  # first, so a field's text is refused by the same rule wherever it is
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelPackageError(f"model.json: expected format {FORMAT_NAME!r}, found {found!r}")
        version = _field(d, "format_version", int)
        _check_version(version)
        inp = _field(d, "input", dict)
        shape = _field(inp, "image_shape", list, "input.")
        if len(shape) != 2 or not all(_is_int(s) and 1 <= s <= MAX_SIDE for s in shape):
            raise ModelPackageError(f"model.json: input.image_shape must be [height, width], two integers in "
                                    f"1..{MAX_SIDE}, found {shape!r}")
        if version == 1:  # gray only; a channels field there is a version-2 package mislabelled
            if "channels" in inp:
                raise ModelPackageError("model.json: input.channels needs format_version 2, found format_version 1")
            channels = 1
        else:
            channels = _field(inp, "channels", int, "input.")
            if channels not in CHANNELS:
                raise ModelPackageError(f"model.json: input.channels must be one of {CHANNELS} (gray or RGB), "
                                        f"found {channels!r}")
        scale = inp.get("uint8_scale", 255.0)
        if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
            raise ModelPackageError(f"model.json: input.uint8_scale must be a finite number > 0 (uint8 pixels are "
                                    f"divided by it; 255 for [0, 1]), found {scale!r}")
        latent_size = _field(d, "latent_size", int)
        hidden = d.get("hidden_size")
        if hidden is not None and (not _is_int(hidden) or hidden < 1):
            raise ModelPackageError(f"model.json: hidden_size must be a positive integer or null, found {hidden!r}")
        files_raw = _field(d, "files", dict)
        files = {}
        for name, entry in files_raw.items():
            check_file_name(name, "files")
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ModelPackageError(f"model.json: files[{name!r}] must be {{\"sha256\": 64 hex digits}}, "
                                        f"found {entry!r}")
            files[name] = digest
        graphs = _field(d, "graphs", dict)
        specs = {role: _graph_spec(graphs.get(role), role) for role in ("encoder", "decoder")}
        sections = {}
        for key in ("latent_index", "calibration", "latent_map", "check_images"):
            body = d.get(key)
            if body is not None and not isinstance(body, dict):
                raise ModelPackageError(f"model.json: {key} must be an object or absent, found {type(body).__name__}")
            sections[key] = body
        variants = d.get("variants", {})
        if not isinstance(variants, dict):
            raise ModelPackageError(f"model.json: variants must be an object, found {type(variants).__name__}")
        for vname, body in variants.items():
            if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in VARIANT_FILES):
                raise ModelPackageError(f"model.json: variants[{vname!r}] must name {' and '.join(VARIANT_FILES)}, "
                                        f"found {body!r}")
        for key in ("training", "tools"):
            if not isinstance(d.get(key, {}), dict):
                raise ModelPackageError(f"model.json: {key} must be an object, found {type(d.get(key)).__name__}")
        return cls(
            name=_field(d, "name", str),
            image_shape=(shape[0], shape[1]),
            latent_size=latent_size,
            encoder=specs["encoder"],
            decoder=specs["decoder"],
            files=files,
            opset=_field(d, "opset", int),
            likelihood=_field(d, "likelihood", str),
            input_scale=float(scale),
            hidden_size=hidden,
            training=dict(d.get("training", {})),
            tools=dict(d.get("tools", {})),
            latent_index=sections["latent_index"],
            calibration=sections["calibration"],
            latent_map=sections["latent_map"],
            check_images=sections["check_images"],
            variants=dict(variants),
            format_version=version,
            preprocessing=d.get("preprocessing"),
            channels=channels,
        )


MAX_SIDE = 4096  # largest image side a manifest may declare
# The largest dense model a package may hold, refused before training and when a package loads:
MAX_FEATURES = 256 * 256 * 3  # values per image: a 256x256 colour image (196,608)
MAX_LATENT = 1024  # latent dimensions
MAX_WEIGHTS = 1 << 28  # encoder and decoder weights together (fp32: 1 GiB, far below protobuf's 2 GiB per graph)


def _check_version(version: object) -> None:
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise ModelPackageError(
            f"model.json has format_version {version}; this vae_infer reads version "
            f"{' or '.join(map(str, READ_VERSIONS))}. Re-export the model or install a matching vae_infer"
        )


def dense_weights(features: int, hidden: int, latent: int) -> int:
    """Weights and biases of the course's encoder (features -> hidden -> 2 x latent) and decoder."""
    return (features * hidden + hidden + 2 * (hidden * latent + latent)) + (latent * hidden + hidden
                                                                            + hidden * features + features)


def size_problem(features: int, hidden: int | None, latent: int) -> str | None:
    """What makes a model larger than a package may hold (with the numbers), or None."""
    if features > MAX_FEATURES:
        return (f"images of {features:,} values are more than a package holds ({MAX_FEATURES:,}: 256x256 colour); "
                f"resize them (--image-size H,W)")
    if latent > MAX_LATENT:
        return f"a latent size of {latent:,} is more than a package holds ({MAX_LATENT:,})"
    weights = dense_weights(features, hidden, latent) if hidden else 0
    if weights > MAX_WEIGHTS:
        return (f"{features:,} values per image with {hidden:,} hidden units and latent size {latent:,} make "
                f"{weights:,} weights, more than a package holds ({MAX_WEIGHTS:,}); use a smaller --hidden-size or "
                f"--image-size")
    return None


def _check_preprocessing(body: object, image_shape: tuple[int, int]) -> None:
    from ..data.preprocessing import Preprocessing  # no Pillow: the rules only

    try:
        prep = Preprocessing.from_dict(body)
    except VaeInferError as e:
        raise ModelPackageError(f"model.json: {e}") from None
    if prep.image_size is not None and tuple(prep.image_size) != tuple(image_shape):
        raise ModelPackageError(f"model.json: preprocessing.image_size {list(prep.image_size)} differs from "
                                f"input.image_shape {list(image_shape)}")
VARIANT_FILES = ("encoder_file", "decoder_file")
# The identifier-like fields of model.json and its sections, held to the name rule (check_name); every other
# string is free text (check_text), and every key of every object is a name too.
NAME_FIELDS = frozenset({"name", "file", "format", "likelihood", "prior", "dtype", "metric", "default_kind",
                         "variant", "kernel"})
NAME_LISTS = frozenset({"class_names", "statistics"})  # lists whose items are names


def check_manifest_text(d: object) -> None:
    """Every string of parsed model.json (its sections included), keys too, by the text rules of vae_infer.text:
    valid Unicode, names at most MAX_NAME_CHARS characters, other text at most MAX_TEXT_BYTES. A
    ModelPackageError names the first field that breaks them (`model.json: .latent_map.class_names[3]: ...`).
    Iterative, so a deeply nested training section cannot exhaust the stack."""
    stack: list[tuple[str, object, bool]] = [("", d, False)]
    while stack:
        path, node, is_name = stack.pop()
        if isinstance(node, str):
            (check_name if is_name else check_text)(f"{MANIFEST_NAME}: {path or '.'}", node)
        elif isinstance(node, dict):
            children = []
            for key, value in node.items():
                check_name(f"{MANIFEST_NAME}: {path or '.'}: a key", key)
                name_like = key in NAME_FIELDS or key in NAME_LISTS or key.endswith("_file")
                children.append((path + _path_part(key), value, name_like))
            stack.extend(reversed(children))  # reported in document order
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", value, is_name) for i, value in reversed(list(enumerate(node))))


def _path_part(key: str) -> str:
    """`.key` for a key that reads as one (checked by check_name already), else its repr in brackets."""
    return f".{key}" if key.isidentifier() and key.isascii() else f"[{key!r}]"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KIND_WORDS: dict[type, str] = {str: "a string", dict: "an object", list: "a list"}


def _field(d: dict, key: str, kind: type, where: str = "") -> Any:
    """d[key], which must be of exactly `kind` (ints: not bool; positive where they are sizes)."""
    if key not in d:
        raise ModelPackageError(f"model.json: the field {where}{key} is missing")
    v = d[key]
    ok = _is_int(v) and v >= 1 if kind is int else isinstance(v, kind)
    if not ok:
        what = "a positive integer" if kind is int else _KIND_WORDS[kind]
        raise ModelPackageError(f"model.json: {where}{key} must be {what}, found {v!r}")
    return v


def check_file_name(name: object, where: str) -> str:
    """A file name a manifest may use: a relative path inside the package folder (no absolute path, no
    '..', no empty part). read_verified also refuses symlinks that lead outside and non-regular files."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ModelPackageError(f"model.json: {where}: a file name must be a non-empty string, found {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("\\") or ".." in pure.parts or "\\" in name or ":" in name:
        raise ModelPackageError(f"model.json: {where}: the file {name!r} is outside the package folder; file names "
                                f"must be relative paths inside it")
    return name


def _graph_spec(g: object, role: str) -> GraphSpec:
    if not isinstance(g, dict):
        raise ModelPackageError(f"model.json: graphs.{role} must be an object, found {g!r}")

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        items = g.get(key)
        if not isinstance(items, list):
            raise ModelPackageError(f"model.json: graphs.{role}.{key} must be a list, found {items!r}")
        out = []
        for t in items:
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
                    and all(s == BATCH_AXIS or _is_int(s) for s in t["shape"])):
                raise ModelPackageError(f"model.json: graphs.{role}.{key} entries must be {{name: str, shape: "
                                        f"[{BATCH_AXIS!r} or integers]}}, found {t!r}")
            out.append(TensorSpec(t["name"], tuple(t["shape"])))
        return tuple(out)

    file = check_file_name(g.get("file"), f"graphs.{role}.file")
    return GraphSpec(file=file, inputs=tensors("inputs"), outputs=tensors("outputs"))
