"""model.json: the manifest of a model package, the one contract between `train` and `vae_infer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ModelPackageError

MANIFEST_NAME = "model.json"
FORMAT_NAME = "vae-infer-model"
FORMAT_VERSION = 1
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
    image_shape: tuple[int, int]  # (height, width); rows are flattened row-major to height * width features
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
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. "int8": other encoder/decoder files
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ModelPackageError(
                f"model.json has format_version {self.format_version}; this vae_infer reads version "
                f"{FORMAT_VERSION}. Re-export the model or install a matching vae_infer"
            )
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
        for section, name in self.referenced_files():
            if name not in self.files:
                raise ModelPackageError(f"model.json: {section} names the file {name!r} but no sha256 is listed for it")

    def referenced_files(self) -> list[tuple[str, str]]:
        """(section, file name) for every file an optional section names under a key ending in "file"."""
        sections = [("latent_index", self.latent_index), ("calibration", self.calibration)]
        sections += [(f"variants.{k}", v) for k, v in self.variants.items()]
        return [
            (section, str(value))
            for section, body in sections
            if body
            for key, value in body.items()
            if key == "file" or key.endswith("_file")
        ]

    @property
    def features(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "name": self.name,
            "input": {
                "image_shape": list(self.image_shape),
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
            **({"variants": self.variants} if self.variants else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelPackageError(f"model.json: expected format {FORMAT_NAME!r}, found {found!r}")
        try:
            graphs = {
                role: GraphSpec(
                    file=str(g["file"]),
                    inputs=tuple(TensorSpec(str(t["name"]), tuple(t["shape"])) for t in g["inputs"]),
                    outputs=tuple(TensorSpec(str(t["name"]), tuple(t["shape"])) for t in g["outputs"]),
                )
                for role, g in d["graphs"].items()
            }
            return cls(
                name=str(d["name"]),
                image_shape=tuple(int(s) for s in d["input"]["image_shape"]),
                latent_size=int(d["latent_size"]),
                encoder=graphs["encoder"],
                decoder=graphs["decoder"],
                files={name: str(v["sha256"]) for name, v in d["files"].items()},
                opset=int(d["opset"]),
                likelihood=str(d["likelihood"]),
                input_scale=float(d["input"].get("uint8_scale", 255.0)),
                hidden_size=d.get("hidden_size"),
                training=dict(d.get("training", {})),
                tools=dict(d.get("tools", {})),
                latent_index=d.get("latent_index"),
                calibration=d.get("calibration"),
                variants=dict(d.get("variants", {})),
                format_version=int(d["format_version"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelPackageError(f"model.json is missing or has a malformed field: {e!r}") from e
