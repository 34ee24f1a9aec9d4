"""What every benchmark script shares: the repository's paths, the environment record kept beside every
result, and the one way reports are written (JSON and markdown, each written atomically).

A script beside this file starts with `import common` (its own folder is on sys.path when it runs as
`python benchmarks/NAME.py`); importing it puts the repository root on sys.path, so `train` (which is not
installed) and the checkout's `vae_infer` import the same way from every script."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SHIPPED_MODEL = ROOT / "models" / "fashion-mnist"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vae_infer.atomic import atomic_write_bytes  # noqa: E402
from vae_infer.bench import environment as runtime_environment  # noqa: E402


def environment(**extra: object) -> dict:
    """The machine and library versions, with the load average, recorded beside every result."""
    return {**runtime_environment(), "load_average": list(os.getloadavg()), **extra}


def write_report(report: dict, json_path: str | Path | None = None, markdown: str | None = None,
                 markdown_path: str | Path | None = None) -> None:
    """Write the report as JSON and its markdown table, each atomically; either path may be None."""
    if json_path is not None:
        atomic_write_bytes(Path(json_path), (json.dumps(report, indent=1) + "\n").encode())
    if markdown_path is not None and markdown is not None:
        atomic_write_bytes(Path(markdown_path), markdown.encode())


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; numbers are written as given (format them before)."""
    align = ["---"] + ["---:"] * (len(header) - 1)  # the first column names the row; numbers align right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
