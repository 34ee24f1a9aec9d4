"""The figures in the README and the docs pages equal the JSON they come from (models/fashion-mnist/model.json,
benchmarks/*.json), rounded as the text writes them. "README" below means README.md and every docs/*.md page:
a figure may move from one to another without its row changing.

Each row of FIGURES is a README fragment, the JSON file, the JSON path of each figure and its format. In the
fragment `{}` marks a checked figure and `{*}` any number this row does not check. After a new benchmark run,
write the new figures into the README; a row only changes when the README's wording or the JSON's layout does.
To check another figure, copy its README line into a new row and replace its numbers with `{}`.

Paths: keys joined by dots ("quoted" where a key holds a dot); `list[key=value&key=value]` picks the one list
item with those values, `list[0]` the first; a callable (data -> value) computes a figure from several (a
median, the low end of a range). Formats: a format spec ("{:.2f}", "{:,.0f}") or a callable (value -> str);
scaled(1e6, "{:.2f}") divides first (bytes -> MB). A value within a hair of half a unit may be rounded either
way (3.15 is stored as 3.1499999...; a README may write 3.2)."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def documentation() -> str:
    """README.md and every page of the docs site, as one text."""
    return "\n".join(path.read_text() for path in [README, *sorted(DOCS.glob("*.md"))])
MODEL = "models/fashion-mnist/model.json"
SPEED = "benchmarks/RESULTS.json"
ANOMALY = "benchmarks/anomaly.json"
INTERPOLATION = "benchmarks/interpolation.json"
NATIVE = "benchmarks/native.json"
SERVE = "benchmarks/serve.json"
BATCH = "benchmarks/batch.json"

NUMBER = r"[-+]?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?"
# How the README writes what a format spec cannot: typographic minus signs and spaces.
TYPOGRAPHY = {"−": "-", "\u2009": " ", "\u202f": " ", "\xa0": " "}


def scaled(divisor: float, spec: str) -> Callable[[float], str]:
    return lambda v: spec.format(v / divisor)


def split_path(path: str) -> list[tuple[str, str | None]]:
    """(key, selector or None) per step of a path: keys joined by dots, "quoted" where a key holds a dot."""
    steps, i = [], 0
    while i < len(path):
        if path[i] == '"':
            end = path.index('"', i + 1)
            key, i = path[i + 1 : end], end + 1
        else:
            key = re.match(r"[^.\[]*", path[i:]).group()
            i += len(key)
        selector = None
        if path[i : i + 1] == "[":
            end = path.index("]", i)
            selector, i = path[i + 1 : end], end + 1
        steps.append((key, selector))
        if i < len(path):
            if path[i] != ".":
                raise ValueError(f"bad path {path!r} at {i}")
            i += 1
    return steps


def get(data, path: str):
    """The value at a path; `name[k=v&k2=v2]` selects the one list item with those values, `name[2]` the third."""
    value = data
    for key, selector in split_path(path):
        if key:
            value = value[key]
        if selector is not None and selector.isdigit():
            value = value[int(selector)]
        elif selector is not None:
            wanted = dict(pair.split("=", 1) for pair in selector.split("&"))
            hits = [item for item in value if all(str(item.get(k)) == v for k, v in wanted.items())]
            if len(hits) != 1:
                raise KeyError(f"{path}: {len(hits)} items match [{selector}]")
            value = hits[0]
    return value


def sci(digits: int) -> Callable[[float], str]:
    """1.4e-6 as the README writes it (Python writes 1.4e-06)."""
    return lambda v: re.sub(r"e([-+]?)0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2),
                            f"{v:.{digits}e}")


def ratio(what: str) -> str:
    return f"ratios[what={what}].value"


def lowest(*paths: str) -> Callable:
    return lambda d: min(get(d, p) for p in paths)


def highest(*paths: str) -> Callable:
    return lambda d: max(get(d, p) for p in paths)


def speed(engine: str, operation: str, batch: int, field: str) -> str:
    return f"results[engine={engine}&operation={operation}&batch={batch}].{field}"


def c_latency(backend: str, operation: str) -> str:
    return f"speed[backend={backend}&operation={operation}&batch=1]"


NATIVE_BACKENDS = ("torch eager", "onnxruntime fp32", "onnxruntime int8", "C fp32", "C fp16", "C int8")


ENGINES = ("torch", "ort", "ort-spin", "ort-int8")
US, K = "{:.0f}", scaled(1e3, "{:,.0f}")
MB = scaled(1e6, "{:.2f}")
FP32_NELBO = lambda d: d["variants"]["int8"]["test_nelbo"] - d["variants"]["int8"]["test_nelbo_change"]  # noqa: E731
SPIN_LATENCY = [ratio(f"{op} batch-1 p50 latency, ort-spin / torch") for op in ("encode", "decode")]
ORT_LATENCY = [ratio(f"{op} batch-1 p50 latency, ort / torch") for op in ("encode", "decode")]

FIGURES: list[tuple[str, str, str | Callable | tuple, str | Callable | tuple]] = [
    # the shipped model (model.json, training and variants)
    ("| test −ELBO | **{}** (target", MODEL, "training.test_nelbo", "{:.2f}"),
    ("| reconstruction (BCE) | {} |", MODEL, "training.test_recon", "{:.2f}"),
    ("| KL | {} |", MODEL, "training.test_kl", "{:.2f}"),
    ("importance-weighted bound on −log p(x), k = {} | {} |", MODEL,
     ("training.iw_samples", "training.test_iw_nll"), ("{}", "{:.2f}")),
    ("| best validation −ELBO ({} held-out training images) | {} (epoch {} of {}) |", MODEL,
     ("training.validation_examples", "training.validation_nelbo", "training.best_epoch", "training.epochs_run"),
     ("{:,}", "{:.2f}", "{}", "{}")),
    ("| fp32 | {} MB | {} | | |", MODEL, ("variants.int8.fp32_bytes", FP32_NELBO), (MB, "{:.2f}")),
    *[(f"| {v} | {{}} MB | {{}} | {{}} | {{}}, {{}} |", MODEL,
       tuple(f"variants.{v}.{k}" for k in ("bytes", "test_nelbo", "test_nelbo_change", "mean_abs_diff_vs_fp32.mu",
                                             "mean_abs_diff_vs_fp32.x_hat")),
       (MB, "{:.2f}", "{:+.3f}" if v != "ort" else "{:g}", "{:.2g}", "{:.2g}")) for v in ("int8", "fp16", "ort")],
    # speed (benchmarks/run.py)
    *[(f"| {op} p50 latency | 1 | {{}} µs | {{}} µs | {{}} µs | {{}} µs |", SPEED,
       tuple(speed(e, op, 1, "latency_p50_us") for e in ENGINES), (US,) * 4) for op in ("encode", "decode")],
    *[(f"| {op} examples/s | {b} | {{}}k | {{}}k | {{}}k | {{}}k |", SPEED,
       tuple(speed(e, op, b, "examples_per_second") for e in ENGINES), (K,) * 4)
      for b in (256, 4096) for op in ("encode", "decode")],
    ("numpy's large-matmul FLOP/s ({} GFLOP/s)", SPEED, "matmul.flop_per_second", scaled(1e9, "{:.0f}")),
    ("| ort {}–{}×; ort-spin {}–{}× | no", SPEED,
     (lowest(*ORT_LATENCY), highest(*ORT_LATENCY), lowest(*SPIN_LATENCY), highest(*SPIN_LATENCY)), ("{:.1f}",) * 2
     + ("{:.2f}",) * 2),
    ("| encode {}×, decode {}×; {*} nats |", SPEED,
     (ratio("encode batch-256 throughput, int8 / fp32"), ratio("decode batch-256 throughput, int8 / fp32")),
     ("{:.2f}", "{:.2f}")),
    ("| encode {*}×, decode {*}×; {} nats |", MODEL, "variants.int8.test_nelbo_change", "{:+.3f}"),
    ("| {} ms ({} ms with interpreter start) |", SPEED,
     ("cold_start.import_to_first_batch_s_median", "cold_start.process_wall_s_median"), (scaled(1e-3, "{:.0f}"),) * 2),
    ("| {} MB vs {} MB ({}) |", SPEED,
     ("footprint.bytes.runtime", "footprint.bytes.runtime+train", "footprint.ratio_runtime_to_train"),
     (scaled(1e6, "{:,.0f}"), scaled(1e6, "{:,.0f}"), "{:.3f}")),
    # anomaly scores (benchmarks/anomaly.py)
    ("handwritten digits an AUROC of {}; dose {}.", ANOMALY,
     ("ood.sets.handwritten digits.nelbo.auroc", "ood.sets.handwritten digits.dose.auroc"), ("{:.3f}",) * 2),
    ("upside-down test images {}, rotated {},", ANOMALY,
     ("ood.sets.upside down.dose.auroc", "ood.sets.rotated 90 degrees.dose.auroc"), ("{:.3f}",) * 2),
    ("average {} against\n−ELBO's {}:", ANOMALY, ("holdout.mean.dose.auroc", "holdout.mean.nelbo.auroc"),
     ("{:.3f}",) * 2),
    ("+{} dB at Gaussian σ 0.3 and +{} dB at salt-and-pepper 0.2, but loses {} dB at σ 0.1", ANOMALY,
     ('denoise.noises."gaussian 0.3"."denoising, steps 1".gain_db',
      'denoise.noises."salt-pepper 0.2"."denoising, steps 1".gain_db',
      lambda d: -get(d, 'denoise.noises."gaussian 0.1"."denoising, steps 1".gain_db')), ("{:.1f}",) * 3),
    ("input ({} dB) is already better", ANOMALY, 'denoise.noises."gaussian 0.1".noisy_psnr', "{:.1f}"),
    # graph interpolation (benchmarks/interpolation.py)
    *[(f"| {label} | {{}}{unit} | {{}}{unit} | {{}}{unit} |", INTERPOLATION,
       tuple(f"quality.{m}.{key}" for m in ("graph", "linear", "slerp")), (fmt,) * 3)
      for label, key, unit, fmt in (("brightness ratio, mean", "brightness_mean", "", "{:.2f}"),
                                    ("lowest frame (mean over pairs)", "brightness_lowest", "", "{:.2f}"),
                                    ("frames under half the endpoints' brightness", "faint_share", "%",
                                     scaled(0.01, "{:.1f}")),
                                    ("realism: cosine distance to the nearest training image", "realism", "",
                                     "{:.4f}"),
                                    ("length (chordal)", "length", "", "{:.2f}"))],
    ("{}× linear's cosine distance to real images (target ≤ 0.80; slerp {}×) and {}× slerp's length",
     INTERPOLATION, ("quality.graph.realism_vs_linear", "quality.slerp.realism_vs_linear",
                     "quality.graph.length_vs_slerp"), ("{:.3f}",) * 3),
    ("without the fade penalty paths are {}× slerp's length but their lowest frame averages {};", INTERPOLATION,
     (lambda d: d["sweep"][0]["length_vs_slerp"], lambda d: d["sweep"][0]["brightness_lowest"]), ("{:.2f}",) * 2),
    ("Index build {} s (median of 3), {} MB on disk; a query (steps=10) {} ms at p50", INTERPOLATION,
     (lambda d: statistics.median(d["build"]["seconds"]), "build.bytes", "timing.graph.p50_ms"),
     ("{:.2f}", MB, "{:.1f}")),
    ("({} nodes for the {} training codes)", INTERPOLATION, ("build.n_nodes", "build.n_codes"), ("{:,}",) * 2),
    # the C backend (benchmarks/native.py)
    *[(f"| {op}, batch 1 | {{}} µs | {{}} µs | {{}} µs | {{}} µs | {{}} µs | {{}} µs |", NATIVE,
       tuple(f"{c_latency(b, op)}.median_us" for b in NATIVE_BACKENDS), ("{:.1f}",) * 6)
      for op in ("encode", "decode")],
    *[(f"| {w} | {{}} | {{}} | {{}} | {{}} | {{}} |", NATIVE,
       tuple(f"footprint[target={t}&weights={w}].{k}" for t, k in (
           ("cortex-m4", "flash_bytes"), ("cortex-m4", "ram_bytes"), ("cortex-m4", "worst_case_stack_bytes"),
           ("aarch64-linux", "flash_bytes"), ("aarch64-linux", "worst_case_stack_bytes"))), ("{:,}",) * 5)
      for w in ("fp32", "fp16", "int8")],
    ("test −ELBO {} against {} for onnxruntime fp32,\n+{} nats", NATIVE,
     tuple(f"parity[target=cortex-m4&weights=int8].{k}" for k in ("nelbo_target", "nelbo_onnxruntime_fp32",
                                                                  "nelbo_change")), ("{:.3f}",) * 3),
    ("(max |diff| from onnxruntime on the 10,000 test images: mu {}, x_hat {}; test", NATIVE,
     ("accuracy[backend=C fp32].mu_max_abs_diff", "accuracy[backend=C fp32].x_hat_max_abs_diff"), (sci(1),) * 2),
    # the HTTP server (benchmarks/serve.py)
    ("batch-1 JSON encode {} requests/s at 8 connections, {}× the no-op endpoint's\n{} (target", SERVE,
     ("http.encode_batch1.8.rps", lambda d: get(d, "http.encode_batch1.8.rps") / get(d, "http.noop.8.rps"),
      "http.noop.8.rps"), ("{:,.0f}", "{:.2f}", "{:,.0f}")),
    ("p50 {} ms and p99 {} ms", SERVE, ("http.encode_batch1.8.p50_ms", "http.encode_batch1.8.p99_ms"),
     ("{:.1f}",) * 2),
    ("own p99 was {} ms at one connection and {} ms at 8", SERVE, ("http.noop.1.p99_ms", "http.noop.8.p99_ms"),
     ("{:.1f}",) * 2),
    ("256-row `.npy` encode: {} requests/s ({}k images/s) at 8", SERVE,
     ("http.encode_256_npy.8.rps", lambda d: get(d, "http.encode_256_npy.8.rps") * 256), ("{:,.0f}", K)),
    ("The in-process API: {} ms per batch-1 encode, {} ms for 256 rows.", SERVE,
     ("in_process.encode_batch1.p50_ms", "in_process.encode_256_rows.p50_ms"), ("{:.3f}", "{:.2f}")),
    ("server RSS {} MiB after warm-up, {} and {} MiB after each round", SERVE,
     ("memory.after_warmup.rss_mib", lambda d: d["memory"]["after_each_round"][0]["rss_mib"],
      lambda d: d["memory"]["after_each_round"][1]["rss_mib"]), ("{:.0f}", "{:.1f}", "{:.1f}")),
    ("one\ndecoded frame takes {} ms at p50 (a 15 × 15 grid {} ms)", SERVE,
     ("browser.single_frame_p50_ms", "browser.grid_225_frames_p50_ms"), ("{:.2f}", "{:.0f}")),
    # batch jobs (benchmarks/batch.py)
    ("| in-memory `model.encode`, the ceiling | {} | 1 | |", BATCH, "results.ceiling.rows_per_s", "{:,.0f}"),
    *[(f"| local engine, {label} | {{}} | {{}} | {{}} s", BATCH,
       (f"results.{key}.rows_per_s", lambda d, key=key: d["results"][key]["rows_per_s"]
        / d["results"]["ceiling"]["rows_per_s"], f"results.{key}.first_rows_s"), ("{:,.0f}", "{:.2f}", "{:.2f}"))
      for key, label in (("local_1", "1 worker x 2 threads"), ("local_2", "2 workers x 1 thread"))],
    ("| {} end to end; {} after the first rows | {} | `ray.init` {} s + {} s to the first rows |", BATCH,
     ("results.ray.rows_per_s", "results.ray.after_first_rows_per_s",
      lambda d: d["results"]["ray"]["rows_per_s"] / d["results"]["ceiling"]["rows_per_s"],
      "results.ray.startup_s", "results.ray.first_rows_s"), ("{:,.0f}", "{:,.0f}", "{:.2f}", "{:.1f}", "{:.1f}")),
    ("within each round {}, {}, {}):", BATCH, tuple(f"targets.local_vs_ceiling.rounds[{i}]" for i in range(3)),
     ("{:.2f}",) * 3),
    ("(after the first rows {}x, per round {}, {}, {};", BATCH,
     ("targets.ray_vs_local.value", *(f"targets.ray_vs_local.rounds[{i}]" for i in range(3))), ("{:.2f}",) * 4),
    ("Memory flat within 20% ({}%)", BATCH, lambda d: 100 * d["targets"]["memory_spread"]["value"], "{:.0f}"),
    ("job's driver spends {} µs of CPU a row", BATCH, "results.ray.driver_cpu_us_per_row", "{:.2f}"),
    ("(peak RssAnon {} MB at", BATCH, lambda d: max(m["peak_rss_anon_mb"] for m in d["results"]["memory"]), "{:.0f}"),
]


def normalize(text: str) -> str:
    for a, b in TYPOGRAPHY.items():
        text = text.replace(a, b)
    return text


def _literal(part: str) -> str:
    words = part.split()
    if not words:
        return r"\s+" if part else ""
    return ((r"\s+" if part[0].isspace() else "") + r"\s+".join(map(re.escape, words))
            + (r"\s+" if part[-1].isspace() else ""))


def fragment_regex(fragment: str) -> re.Pattern:
    """`{}` becomes a captured number, `{*}` an uncaptured one; the rest matches literally, any run of
    whitespace matching any other (so a line break moved by an edit does not matter)."""
    parts = re.split(r"(\{\*?\})", normalize(fragment))
    return re.compile("".join(f"({NUMBER})" if p == "{}" else f"(?:{NUMBER})" if p == "{*}" else _literal(p)
                              for p in parts))


def rounded(value, fmt) -> tuple[str, set[str]]:
    """The figure as the format writes it, and every way a README may round it: a value a hair from half a
    unit (3.15 is 3.1499999... in binary) may be written rounded either way."""
    def write(v) -> str:
        return normalize(fmt(v) if callable(fmt) else fmt.format(v))

    text = write(value)
    if isinstance(value, float):
        return text, {text, write(value * (1 + 1e-9)), write(value * (1 - 1e-9))}
    return text, {text}


def expected_texts(data, paths, formats) -> list[tuple[str, set[str]]]:
    paths = paths if isinstance(paths, tuple) else (paths,)
    formats = formats if isinstance(formats, tuple) else (formats,)
    assert len(paths) == len(formats), "one format per path"
    return [rounded(path(data) if callable(path) else get(data, path), fmt)
            for path, fmt in zip(paths, formats, strict=True)]


def check(readme: str, rows, load: Callable[[str], dict]) -> list[str]:
    """A line per problem: a fragment the README no longer has, a path the JSON no longer has, or a figure
    that differs from its JSON value as rounded in the README."""
    text = normalize(readme)
    problems = []
    for fragment, source, paths, formats in rows:
        pattern = fragment_regex(fragment)
        found = list(pattern.finditer(text))
        if not found:
            problems.append(f"README no longer has {fragment!r}: update its row in tests/test_readme.py")
            continue
        try:
            want = expected_texts(load(source), paths, formats)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            problems.append(f"{source} has no {e} (README {fragment!r})")
            continue
        for match in found:
            got = list(match.groups())
            if not all(g in accepted for g, (_, accepted) in zip(got, want, strict=True)):
                problems.append(f"README {fragment!r} says {got}, {source} gives {[text for text, _ in want]}")
    return problems


def load_json(source: str) -> dict:
    return json.loads((ROOT / source).read_text())


def test_readme_figures_equal_the_json_they_come_from():
    assert check(documentation(), FIGURES, load_json) == []


def test_every_figure_row_reads_a_file_that_exists():
    assert {source for _, source, _, _ in FIGURES} == {MODEL, SPEED, ANOMALY, INTERPOLATION, NATIVE, SERVE, BATCH}
    for source in {source for _, source, _, _ in FIGURES}:
        assert isinstance(load_json(source), dict), source


# -- the checker fails where it should ----------------------------------------------------------------------

DATA = {"training": {"test_nelbo": 258.3098625, "epochs": 200},
        "results": [{"engine": "ort", "batch": 1, "us": 76.4}, {"engine": "ort", "batch": 256, "us": 816.2}],
        "bytes": 883952, "change": -0.00027}
ROWS = [
    ("| test −ELBO | **{}** (of {*} epochs) |", "m.json", "training.test_nelbo", "{:.2f}"),
    ("latency {} µs and {} MB", "m.json", ("results[engine=ort&batch=1].us", "bytes"), ("{:.0f}", MB)),
    ("change {} nats", "m.json", "change", "{:+.3f}"),
]


def test_the_checker_accepts_figures_that_match():
    readme = "| test −ELBO | **258.31** (of 200 epochs) |\nlatency 76 µs\nand 0.88 MB, change −0.000 nats\n"
    assert check(readme, ROWS, lambda source: DATA) == []


@pytest.mark.parametrize(
    ("readme", "problem"),
    [
        ("| test −ELBO | **258.35** (of 200 epochs) |\nlatency 76 µs and 0.88 MB, change −0.000 nats",
         "README '| test −ELBO | **{}** (of {*} epochs) |' says ['258.35'], m.json gives ['258.31']"),
        ("| test −ELBO | **258.31** (of 200 epochs) |\nlatency 76 µs and 0.88 MB, change −0.000 nats\n"
         "and again: latency 77 µs and 0.88 MB", "says ['77', '0.88'], m.json gives ['76', '0.88']"),
        ("| test −ELBO | **258.31** (of 200 epochs) |\nlatency 76 µs and 0.88 MB, change +0.000 nats",
         "says ['+0.000'], m.json gives ['-0.000']"),
        ("| test −ELBO | 258.31 |\nlatency 76 µs and 0.88 MB, change −0.000 nats",
         "README no longer has '| test −ELBO | **{}** (of {*} epochs) |'"),
    ],
)
def test_the_checker_reports_a_figure_that_differs_or_a_fragment_that_is_gone(readme, problem):
    problems = check(readme, ROWS, lambda source: DATA)
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_value_on_a_half_unit_may_be_rounded_either_way_but_no_further():
    rows = [("p50 {} ms", "s.json", "p50", "{:.1f}")]
    for readme, problems in (("p50 3.2 ms", 0), ("p50 3.1 ms", 0), ("p50 3.3 ms", 1), ("p50 3.0 ms", 1)):
        assert len(check(readme, rows, lambda source: {"p50": 3.15})) == problems, readme
    assert len(check("p50 3.2 ms", rows, lambda source: {"p50": 3.14})) == 1


def test_the_checker_reports_a_path_the_json_lacks():
    rows = [("latency {} µs", "m.json", "results[engine=torch&batch=1].us", "{:.0f}")]
    assert check("latency 76 µs", rows, lambda source: DATA) == [
        "m.json has no 'results[engine=torch&batch=1].us: 0 items match [engine=torch&batch=1]' "
        "(README 'latency {} µs')"]
