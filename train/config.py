"""Typed configurations for the model and for a training run; every size is derived from here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from vae_infer.data.preprocessing import Preprocessing, parse_image_size
from vae_infer.package.manifest import size_problem


@dataclass(frozen=True)
class ModelConfig:
    """The architecture. Defaults are the course's VAE."""

    # MNIST-format images; (h, w) gray or (h, w, 3) RGB, which the model sees flattened channels-last
    image_shape: tuple[int, ...] = (28, 28)
    hidden_size: int = 512  # the course's one hidden layer, in the encoder and in the decoder
    latent_size: int = 2  # 2-D so the latent space can be drawn and walked

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape)
        if len(shape) not in (2, 3) or min(shape) < 1 or (len(shape) == 3 and shape[2] not in (1, 3)):
            raise ValueError(f"image_shape must be (height, width) or (height, width, 1 or 3 channels), got {shape}")
        if len(shape) == 3 and shape[2] == 1:  # one channel is gray: the manifest's version-1 form
            object.__setattr__(self, "image_shape", shape[:2])
        if self.hidden_size < 1 or self.latent_size < 1:
            raise ValueError(
                f"hidden_size and latent_size must be positive, got {self.hidden_size}, {self.latent_size}"
            )
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        problem = size_problem(self.input_size, self.hidden_size, self.latent_size)
        if problem:  # refused before training, not after hours of it
            raise ValueError(problem)

    @property
    def input_size(self) -> int:
        return math.prod(self.image_shape)

    @property
    def channels(self) -> int:
        return self.image_shape[2] if len(self.image_shape) == 3 else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "image_shape" else v) for k, v in d.items() if k in names})


SCHEDULES = ("constant", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are what the shipped model was trained with (see README)."""

    dataset: str = "fashion-mnist"  # a named dataset, or a path to IDX / .npy / .npz files
    epochs: int = 30  # the plain course recipe; the shipped model uses more (README)
    batch_size: int = 128  # the course's batch size; small batches regularise a little
    lr: float = 1e-3  # Adam's usual rate; the peak rate when schedule is onecycle
    schedule: str = "constant"  # "onecycle" anneals to ~0 at the end, worth ~2 nats on this model
    kl_warmup_epochs: int = 0  # ramps beta from 0 to its value; guards against early posterior collapse
    beta: float = 1.0  # weight on the KL; 1.0 is the true ELBO
    validation_size: int = 5000  # held out of the training set for early stopping; the test set stays untouched
    train_limit: int = 0  # use only the first N training examples (0: all); for quick runs and tests
    seed: int = 0  # one seed drives the split, the initialisation, the batch order and the noise
    iw_samples: int = 200  # k for the final importance-weighted bound on the test set
    threads: int = 0  # torch intra-op threads (0: the cores this process may use)
    noise: str = ""  # a denoising VAE: corrupt each input batch with this spec (gaussian:0.3, ...); targets stay clean
    # Image files only (recorded in the package, so the runtime reads files as training did):
    image_size: str = ""  # "H,W": resize every image; empty: every image must have the first image's size
    resize_filter: str = "bicubic"  # Pillow's default resampling filter
    image_fit: str = "stretch"  # stretch to image_size, or crop the centre to its aspect ratio first
    alpha: str = "refuse"  # transparent pixels: refused (nothing guessed), or composited over black or white
    to_gray: bool = False  # colour images made gray (luma); without it they are refused
    exif_orientation: bool = True  # photos turned upright as their EXIF tag says

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.beta < 0 or self.kl_warmup_epochs < 0 or self.validation_size < 0 or self.train_limit < 0:
            raise ValueError("beta, kl_warmup_epochs, validation_size and train_limit must not be negative")
        if self.iw_samples < 1:
            raise ValueError(f"iw_samples must be at least 1, got {self.iw_samples}")
        if self.noise:
            from vae_infer.anomaly.corruptions import parse_noise

            parse_noise(self.noise)  # raises InputError (a ValueError) naming what it expected
        size = self.preprocessing().image_size  # raises DataError naming the bad option
        problem = size_problem(size[0] * size[1], None, 1) if size else None
        if problem:  # before a single image is resized to it
            raise ValueError(f"--image-size {self.image_size}: {problem}")

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=parse_image_size(self.image_size), resize_filter=self.resize_filter,
                             fit=self.image_fit, exif_orientation=self.exif_orientation, alpha=self.alpha,
                             to_gray=self.to_gray)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def option_name(field_name: str) -> str:
    """The command-line option of a configuration field (`batch_size` is `--batch-size`)."""
    return "--" + field_name.replace("_", "-")


def changed_options(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`--NAME BEFORE -> NOW` for every field whose value differs between two configurations (as dicts)."""
    return [f"{option_name(k)} {before.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]

