"""Pinned inputs: what every part is computed from is the bytes each input held when the job started.

When a job starts (a new one or a resume) every input is read once and each block of PIN_ROWS rows of each
part gets a digest (sha256 of the rows as stored, first DIGEST_HEX hex digits); the lists go into
`_job.json` with the input's size and modification time, and their digest is the input's content digest. A
task reads the whole blocks that cover its rows and checks each one against its pin before it computes
anything, so a part only ever holds rows of the pinned contents: an input rewritten in the middle of a run
(or truncated) stops the job with an InputChanged error naming the file, and the part being written is
discarded (its temporary file removed). A resume pins again: an input whose content digest differs from the
record, even with its size and modification time put back, is refused, naming it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .readers import InputChanged

PIN_ROWS = 4096  # rows per pinned block: ~3 MB of uint8 images, ~13 MB of float32 ones
DIGEST_HEX = 32  # 128 bits of sha256 per block
CHANGED = "input changed: "  # how a task's problem says that its input changed (it stops the job)


def digest(block: np.ndarray) -> str:
    """The digest of rows as stored (dtype and byte order included)."""
    data = np.ascontiguousarray(block)
    h = hashlib.sha256(data.dtype.str.encode() + str(data.shape[1:]).encode())
    h.update(data.data.cast("B") if data.size else b"")
    return h.hexdigest()[:DIGEST_HEX]


def content_digest(parts: Sequence[Sequence[str]]) -> str:
    """One digest for an input (or a part) from its block digests."""
    return hashlib.sha256(",".join(d for p in parts for d in p).encode()).hexdigest()


def pin_part(reader, origin: int, end: int) -> list[str]:
    """The block digests of rows [origin, end) of `reader`, read PIN_ROWS rows at a time."""
    return [digest(reader.read(s, min(s + PIN_ROWS, end))) for s in range(origin, end, PIN_ROWS)]


def read_checked(reader, start: int, stop: int, origin: int, end: int, pins: Sequence[str]) -> np.ndarray:
    """Rows [start, stop) of the part [origin, end), after checking every block that covers them against the
    part's pins. InputChanged, naming the file, when one differs or the file has become shorter. No pins (a job
    run with pinning off, only to measure its cost: run_batch(pin_inputs=False)): the rows as read."""
    if start == stop or not pins:
        return reader.read(start, stop)
    k0, k1 = (start - origin) // PIN_ROWS, -(-(stop - origin) // PIN_ROWS)
    b0, b1 = origin + k0 * PIN_ROWS, min(origin + k1 * PIN_ROWS, end)
    block = reader.read(b0, b1)
    for k in range(k0, k1):
        lo = (k - k0) * PIN_ROWS
        rows = block[lo : lo + PIN_ROWS]
        if k >= len(pins) or digest(rows) != pins[k]:
            first = origin + k * PIN_ROWS
            raise InputChanged(f"{reader.where}: rows [{first}, {first + len(rows)}) are not what they were when "
                               f"the job started (their digest differs): the file changed while the job ran")
    return block[start - b0 : stop - b0]
