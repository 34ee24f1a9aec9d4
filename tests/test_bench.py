"""The benchmark harness on the tiny model: every field present, numbers positive and consistent.
(Benchmarks measure; no test here asserts a time.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vae_infer import InputError, bench
from vae_infer.cli import main

ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = {"operation", "batch", "calls", "seconds_total", "examples_per_second", "latency_p50_us",
              "latency_p90_us", "latency_p99_us"}


def _check_row(r: dict) -> None:
    assert ROW_FIELDS <= set(r)
    assert r["calls"] >= bench.MIN_CALLS
    assert 0 < r["latency_p50_us"] <= r["latency_p90_us"] <= r["latency_p99_us"]
    # throughput x time = examples
    assert r["examples_per_second"] * r["seconds_total"] == pytest.approx(r["batch"] * r["calls"])


def test_run_benchmark_report(tiny_package):
    report = bench.run_benchmark(tiny_package, [1, 8], threads=[1, 2], operations=["encode", "decode"],
                                 min_seconds=0.01)
    assert {"cpu", "cpu_flags", "cores_available", "onnxruntime", "numpy", "python", "vae_infer"} <= set(
        report["environment"])
    rows = report["results"]
    assert [(r["threads"], r["operation"], r["batch"]) for r in rows] == [
        (t, op, b) for t in (1, 2) for b in (1, 8) for op in ("encode", "decode")
    ]
    for r in rows:
        _check_row(r)
        assert r["engine"] == "onnxruntime" and r["variant"] == "fp32" and r["load_seconds"] > 0
    table = bench.to_markdown(report).splitlines()
    assert table[2].startswith("| engine | device | variant | threads | operation | batch | examples/s")
    assert len(table) == 4 + len(rows)


def test_bad_benchmark_arguments(tiny_package, tiny_model):
    with pytest.raises(InputError, match=r"unknown operation\(s\) \['train'\]"):
        bench.bench_model(tiny_model, [1], operations=["train"])
    with pytest.raises(InputError, match=r"batch sizes must be positive integers, got \[0\]"):
        bench.run_benchmark(tiny_package, [0])


def test_graph_flops_counted_from_the_graph(tiny_package):
    pytest.importorskip("onnx")
    data = (tiny_package / "encoder.onnx").read_bytes()
    # hidden 32: 784 -> 32 -> (2, 2), two FLOPs per multiply-add
    assert bench.graph_flops(data) == 2 * (784 * 32 + 32 * 2 + 32 * 2)


def test_matmul_flops_is_consistent():
    m = bench.matmul_flops(n=128, min_seconds=0.01)
    assert m["flop_per_call"] == 2 * 128**3
    assert m["flop_per_second"] == pytest.approx(m["flop_per_call"] / m["seconds_median"])


@pytest.mark.slow
def test_bench_cli_writes_json_markdown_and_plot(tiny_package, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", str(tiny_package), "--batch-sizes", "1,4", "--threads", "1",
                                  "--operations", "encode", "--seconds", "0.01", "--json", str(out),
                                  "--markdown", str(tmp_path / "b.md"), "--plot", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert [(x["operation"], x["batch"]) for x in report["results"]] == [("encode", 1), ("encode", 4)]
    assert (tmp_path / "b.md").read_text() == r.output
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--batch-sizes", "1,x"], 2, "expected comma-separated integers"),
    (["--batch-sizes", "0"], 2, "expected positive integers"),
    (["--device", "tpu"], 2, "expected some of cpu, cuda, auto"),
    (["--json", "out.txt"], 1, "expected an output file ending in .json, found '.txt'"),
])
def test_bench_cli_bad_options(tiny_package, args, code, message):
    r = CliRunner().invoke(main, ["bench", str(tiny_package), *args])
    assert r.exit_code == code and message in r.output and "Traceback" not in r.output


def test_bench_cli_unknown_variant_is_one_line(tiny_package):
    r = CliRunner().invoke(main, ["bench", str(tiny_package), "--variant", "int8", "--seconds", "0.01"])
    assert r.exit_code == 1 and "has no variant 'int8'" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_side_by_side_script_on_the_tiny_model(tiny_package, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "benchmarks/run.py", str(tiny_package), "--compare", "torch,ort",
                    "--batch-sizes", "1,256", "--operations", "encode", "--seconds", "0.01", "--threads", "1",
                    "--json", str(out), "--markdown", str(tmp_path / "r.md")],
                   cwd=ROOT, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert {r["engine"] for r in report["results"]} == {"torch", "ort"}
    for r in report["results"]:
        _check_row(r)
    what = [r["what"] for r in report["ratios"]]
    assert what == ["encode batch-1 p50 latency, ort / torch",
                    "encode batch-256 throughput, ort / torch",
                    "encode batch-256 ort fp32 FLOP/s / numpy matmul FLOP/s"]
    assert all(r["value"] > 0 for r in report["ratios"])
    assert "## Targets (ratios from this run)" in (tmp_path / "r.md").read_text()
