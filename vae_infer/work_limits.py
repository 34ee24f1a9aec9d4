"""The most work one call may ask for, shared by the Python API, the CLI, batch jobs and the server.

Each bound is checked before any work starts, with an error that names the option, the value and the maximum.
The numbers are sized on the course model (about 0.8 MFLOP per decode, roughly 150k decodes/s on two cores):
MAX_WORK decodes are about two minutes of one machine's time, so no single call can run for hours."""

from __future__ import annotations

MAX_SAMPLES = 1024  # draws of z per image (nelbo, ic) or k of the iwae bound
MAX_STEPS = 256  # points of one interpolation path, both ends included
MAX_DENOISE_STEPS = 100  # encode-decode rounds of denoise; more only converges to the model's fixed points
MAX_WORK = 1 << 24  # rows x samples (or rows x steps): decoder evaluations one call may cost
