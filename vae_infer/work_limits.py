"""The most work one call may ask for, shared by the Python API, the CLI, batch jobs and the server.

Each bound is checked before any work starts, with an error that names the option, the value and the maximum.
The numbers are sized on the course model (about 0.8 MFLOP per decode, roughly 150k decodes/s on two cores):
MAX_WORK decodes are about two minutes of one machine's time, so no single call can run for hours."""

from __future__ import annotations

from .errors import InputError

MAX_SAMPLES = 1024  # draws of z per image (nelbo, ic) or k of the iwae bound
MAX_STEPS = 256  # points of one interpolation path, both ends included
MAX_DENOISE_STEPS = 100  # encode-decode rounds of denoise; more only converges to the model's fixed points
MAX_WORK = 1 << 24  # rows x samples (or rows x steps): decoder evaluations one call may cost
# Path refinement solves a (points x latent)^2 Gauss-Newton system per iteration and decodes latent x points
# probes for it: a path of MAX_STEPS points is as fine as any result can show, and the default is 6 iterations
# (it stops early once a step gains less than 1e-4 of the energy), so 100 is far past where it has converged.
MAX_REFINE_POINTS = MAX_STEPS
MAX_REFINE_ITERATIONS = 100
MAX_FINE = 64  # parts each segment of a path is split into to measure its length (default 16)
MAX_ATTACH = 256  # graph nodes each endpoint of a graph path attaches to (default: the index's k, 12)


def check_at_most(value: int, maximum: int, option: str, what: str) -> int:
    """`value` (already a positive int) when it is at most `maximum`, else an InputError naming the option,
    the value and the maximum. what: the unit, as in "draws of z per image"."""
    if value > maximum:
        raise InputError(f"{option}={value} is above the maximum of {maximum} ({what}) one call may ask for; "
                         f"pass {option} <= {maximum}")
    return value


def check_work(rows: int, per_row: int, option: str, what: str) -> None:
    """Refuse, before any work, a call whose rows x per_row (decoder evaluations) exceeds MAX_WORK."""
    work = int(rows) * int(per_row)
    if work > MAX_WORK:
        most = max(MAX_WORK // int(per_row), 1)
        raise InputError(f"{what}: {rows} images x {option}={per_row} is {work} decoder evaluations, more than one "
                         f"call may cost (MAX_WORK = {MAX_WORK}); pass at most {most} images at {option}={per_row} "
                         f"per call, or a smaller {option} (`vae-infer batch` runs large jobs)")
