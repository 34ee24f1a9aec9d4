"""The throughput harness on the tiny model: every field present, numbers positive and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_harness_reports_consistent_numbers(tiny_package, tmp_path):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    subprocess.run(
        [sys.executable, "benchmarks/throughput.py", str(tiny_package), "--batch-sizes", "1,8", "--threads", "1",
         "--json", str(out_json), "--markdown", str(out_md)],
        cwd=ROOT, check=True, capture_output=True,
    )
    report = json.loads(out_json.read_text())
    assert report["threads"] == 1 and report["load_seconds"] > 0
    assert {"cpu", "cores_available", "onnxruntime", "numpy", "python"} <= set(report["environment"])
    rows = report["results"]
    assert [(r["operation"], r["batch"]) for r in rows] == [
        (op, b) for b in (1, 8) for op in ("encode", "decode", "reconstruct")
    ]
    for r in rows:
        assert r["calls"] >= 20
        assert 0 < r["latency_p50_us"] <= r["latency_p90_us"] <= r["latency_p99_us"]
        assert r["examples_per_second"] * r["seconds_total"] == pytest.approx(r["batch"] * r["calls"])
    table = out_md.read_text().splitlines()
    assert table[2].startswith("| operation | batch | examples/s")
    assert len(table) == 4 + len(rows)
