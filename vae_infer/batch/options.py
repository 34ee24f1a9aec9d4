"""What a batch job computes and how its output is laid out: the options recorded in `_job.json`.

Only what changes the results is here; how the work is spread (engine, workers, threads, batch size) is an
argument of the engine, so a job can be resumed with other workers or on another engine."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..anomaly.scores import SCORE_KINDS, STOCHASTIC_KINDS, check_kind, default_samples
from ..errors import InputError
from ..inputs import as_count, as_seed
from ..work_limits import MAX_SAMPLES

OUTPUTS = ("mu", "logvar", "score", "flag")  # besides `source` and `row`, which every output has
FORMATS = ("parquet", "npz")
PART_ROWS = 1_000_000  # rows per output part: ~35 MB of Parquet with every output, one file a reader can open
CHUNK_ROWS = 8192  # rows per task: ~6 MB of uint8 input (25 MB as float32), big enough that a call costs little


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    outputs: tuple[str, ...] = ("mu", "logvar")  # the columns beside source and row
    kind: str = "nelbo"  # the `score` column's kind: VAEModel.score's default
    samples: int | None = None  # draws of z for nelbo and ic, k for iwae; None: as VAEModel.score (iwae 64, else 1)
    seed: int = 0  # the job's seed: sampled scores draw their noise from (seed, source, row)
    format: str = "parquet"  # "npz" for small jobs without pyarrow
    part_rows: int = PART_ROWS  # rows per part (parts never span two inputs)

    def __post_init__(self) -> None:
        outputs = tuple(dict.fromkeys(self.outputs))
        unknown = [o for o in outputs if o not in OUTPUTS]
        if not outputs or unknown:
            raise InputError(f"outputs must be a non-empty selection of {', '.join(OUTPUTS)}, got "
                             f"{', '.join(map(str, self.outputs)) or 'nothing'}")
        object.__setattr__(self, "outputs", outputs)
        check_kind(self.kind)
        sampled = "score" in self.outputs and self.kind in STOCHASTIC_KINDS
        if self.samples is not None and not sampled:
            what = f"the {self.kind!r} score does not sample" if "score" in self.outputs else "there is no score output"
            raise InputError(f"samples={self.samples} is ignored here ({what}); leave it out, or ask for the score "
                             f"output with a sampled --kind ({', '.join(STOCHASTIC_KINDS)})")
        if self.samples is None:
            object.__setattr__(self, "samples", default_samples(self.kind))
        as_count(self.samples, "samples")
        assert self.samples is not None, "filled with the kind's default above"
        if self.samples > MAX_SAMPLES:
            raise InputError(f"samples must be at most {MAX_SAMPLES} (vae_infer.work_limits.MAX_SAMPLES), got "
                             f"{self.samples}")
        if as_seed(self.seed) is None:
            raise InputError("a batch job needs a seed (a non-negative integer), so that a re-run gives the same "
                             "sampled scores")
        if self.format not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        as_count(self.part_rows, "part_rows")

    @property
    def asked_samples(self) -> int | None:
        """samples when the score samples (what to pass on to another BatchOptions), else None."""
        return self.samples if "score" in self.outputs and self.kind in STOCHASTIC_KINDS else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchOptions:
        d = {**d, "outputs": tuple(d["outputs"])}
        if not ("score" in d["outputs"] and d.get("kind", "nelbo") in STOCHASTIC_KINDS):
            d.pop("samples", None)  # filled with the kind's default when it was made: not asked for
        return cls(**d)


def parse_outputs(text: str) -> tuple[str, ...]:
    """"mu,logvar,score" -> ("mu", "logvar", "score"), for the command line."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


__all__ = ["BatchOptions", "OUTPUTS", "FORMATS", "SCORE_KINDS", "parse_outputs"]
