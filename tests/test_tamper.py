"""Tampered model packages: every file and every manifest field of a copy of the shipped package, damaged.

Each case builds a damaged copy (files truncated, emptied, replaced by garbage, by a FIFO, by a symlink to
/dev/zero or out of the package, by a folder; model.json fields deleted, of the wrong type, out of range;
file names pointing outside the package) and then loads it and uses it: encode, decode, sample, score,
detect, the variants and graph interpolation. Allowed outcomes: a ModelPackageError at load or at first use;
or, for a change that cannot matter (a training figure, or a file rewritten together with its sha256 into
another valid one), a package that still gives finite, correctly shaped results. Never a crash, a hang, NaN,
or a damaged file accepted.

The cases run in one child process (this file run as a script) so that a hang is caught: the child guards
each case with SIGALRM and runs under an address-space limit (a read of /dev/zero cannot take the machine),
and the parent kills it after SUITE_SECONDS. Leftovers of killed writes (vae_infer.atomic) and the
calibration's named-field errors (D10) are tested here too."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
IMAGES = Path(__file__).parent / "fixtures" / "tiny-images.npz"
CASE_SECONDS = 10  # one case's guard inside the child: a load takes ~20 ms
SUITE_SECONDS = 240  # the whole child; it takes ~20 s on 2 busy cores
MEMORY_LIMIT = 6 << 30  # the child's address space: a runaway read fails instead of filling the machine

CONTENT_OPS = ("truncate", "empty", "garbage", "flip", "append")  # the bytes change
SPECIAL_OPS = ("missing", "folder", "fifo", "devzero", "symlink-out", "symlink-in")  # the file is not a plain file
FIELD_MUTATIONS = ("delete", "wrong-type", "out-of-range")  # null and NaN: test_fuzz.py draws them


# -- the cases --------------------------------------------------------------------------------------------------


def _manifest() -> dict:
    return json.loads((SHIPPED / "model.json").read_text())


def _fields(node: object, path: tuple = ()) -> list[tuple]:
    """Every field of model.json as a path of keys and list indices, containers before their contents."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _fields(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _fields(v, path + (i,))
    return out


def _field_id(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def file_cases() -> list[dict]:
    names = sorted(_manifest()["files"])
    cases = [{"id": f"{n}:{op}", "file": n, "op": op, "sha": False} for n in names for op in CONTENT_OPS + SPECIAL_OPS]
    cases += [{"id": f"{n}:{op}+sha256", "file": n, "op": op, "sha": True} for n in names for op in CONTENT_OPS]
    cases += [{"id": f"model.json:{op}", "file": "model.json", "op": op, "sha": False}
              for op in CONTENT_OPS + SPECIAL_OPS + ("deep", "huge", "nan-literal", "not-object", "duplicate-sha")]
    return cases


def field_cases() -> list[dict]:
    return [{"id": f"{_field_id(p)}:{m}", "field": list(p), "mutation": m}
            for p in _fields(_manifest()) for m in FIELD_MUTATIONS]


def escape_cases() -> list[dict]:
    """File names that lead out of the package, each with a sha256 that matches the bytes found there."""
    return [{"id": f"{key}:{how}", "escape": key, "how": how}
            for key in ("graphs.encoder.file", "graphs.decoder.file", "variants.int8.encoder_file",
                        "calibration.reference_file", "latent_index.file")
            for how in ("dotdot", "absolute", "inner-dotdot")]


FILE_CASES, FIELD_CASES, ESCAPE_CASES = file_cases(), field_cases(), escape_cases()


# -- the child: build each damaged copy, use it, report the outcome ---------------------------------------------


def _images() -> tuple[np.ndarray, np.ndarray]:
    with np.load(IMAGES) as z:
        u8 = z["images"][:4].reshape(4, -1)
    return u8, u8.astype(np.float32) / 255.0


def _use(path: Path, parts: str = "all") -> dict[str, np.ndarray]:
    """Load the package and use it: the results that must not change, and checks on the rest. parts: "all",
    or the one section a case changed ("calibration", "variants", "latent_index"; anything else: the graphs
    only), so each case pays only for the uses its change can reach."""
    import vae_infer

    u8, x = _images()
    m = vae_infer.load(path, threads=1)
    mu, logvar = m.encode(x)
    out = {"mu": mu, "logvar": logvar, "decoded": m.decode(np.array([[0.5, -1.0], [0.0, 0.0]], np.float32)),
           "recon": m.score(x, kind="recon")}
    checks = {"sample": (m.sample(3, seed=0), (3, x.shape[1])), "uint8": (m.encode(u8)[0], (4, m.latent_size)),
              "nelbo": (m.score(x, samples=2), (4,))}
    if m.manifest.calibration and parts in ("all", "calibration"):
        flags, scores = m.detect(x)
        checks["detect"] = (scores, (4,))
        checks["detect_q"] = (m.detect(x, kind="recon", quantile=0.5)[1], (4,))
    for name in m.manifest.variants if parts in ("all", "variants") else ():
        checks[f"variant {name}"] = (vae_infer.load(path, variant=name, threads=1).encode(x)[0], (4, m.latent_size))
    if getattr(m.manifest, "latent_map", None) and parts in ("all", "latent_map"):
        from vae_infer.interpolation.latent_map import read_latent_map

        checks["latent map"] = (np.asarray(read_latent_map(m)[0]), None)
    if m.manifest.latent_index and parts in ("all", "latent_index") and _graph_works():
        checks["graph"] = (m.interpolate(x[0], x[1], steps=4, method="graph"), (4, x.shape[1]))
    for what, (value, shape) in checks.items():
        if (shape is not None and value.shape != shape) or not np.isfinite(value).all():
            raise AssertionError(f"{what}: shape {value.shape} (expected {shape}) or non-finite values")
    return out


_GRAPH = {}


def _graph_works() -> bool:
    """Whether graph interpolation works on the untampered package (the index format may be older than the
    runtime while it is being rebuilt): only then is it part of the checks."""
    if "ok" not in _GRAPH:
        import vae_infer

        u8, x = _images()
        try:
            vae_infer.load(SHIPPED, threads=1).interpolate(x[0], x[1], steps=4, method="graph")
            _GRAPH["ok"] = True
        except Exception as e:  # noqa: BLE001  (reported as a note, not a failure of this suite)
            _GRAPH["ok"] = False
            print(json.dumps({"note": f"graph interpolation off: {type(e).__name__}: {e}"}), flush=True)
    return _GRAPH["ok"]


def _set(d: object, path: list, value: object = None, delete: bool = False) -> None:
    for key in path[:-1]:
        d = d[key]
    if delete:
        del d[path[-1]]
    else:
        d[path[-1]] = value


def _get(d: object, path: list) -> object:
    for key in path:
        d = d[key]
    return d


def _mutated(value: object, mutation: str) -> object:
    if mutation == "null":
        return None
    if mutation == "nan":
        return float("nan")
    if mutation == "wrong-type":
        return "abc" if not isinstance(value, str) else 7
    # out of range: a negative number for numbers, an empty container or string otherwise
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return -1 if value != -1 else 10**30
    return type(value)() if isinstance(value, (str, list, dict)) else -1


def _copy(base: Path, dest: Path) -> None:
    """A copy made of hard links (cheap; each damaged file is written as a new file, never through a link)."""
    dest.mkdir()
    for f in base.iterdir():
        os.link(f, dest / f.name)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _write_manifest(pkg: Path, d: object) -> None:
    (pkg / "model.json").unlink()
    (pkg / "model.json").write_text(json.dumps(d, indent=1))


def _damage_file(pkg: Path, outside: Path, case: dict) -> None:
    name, op = case["file"], case["op"]
    path = pkg / name
    data = path.read_bytes()
    path.unlink()
    rng = np.random.default_rng(len(case["id"]))
    if op == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif op == "empty":
        path.write_bytes(b"")
    elif op == "garbage":
        path.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif op == "flip":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])
    elif op == "append":
        path.write_bytes(data + b"\x00junk" * 100)
    elif op == "missing":
        pass
    elif op == "folder":
        path.mkdir()
    elif op == "fifo":
        os.mkfifo(path)
    elif op == "devzero":
        os.symlink("/dev/zero", path)
    elif op == "symlink-out":  # the same bytes, outside the package: the sha256 matches
        target = outside / f"copy-of-{name}"
        target.write_bytes(data)
        os.symlink(target, path)
    elif op == "symlink-in":  # inside the package, but to another file (a symlink is not a regular file)
        os.symlink("model.json" if name != "model.json" else "encoder.onnx", path)
    elif op == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif op == "huge":
        with open(path, "wb") as f:
            f.write(data[:-2] + b', "padding": "' + b"x" * (64 << 20) + b'"}\n')
    elif op == "nan-literal":
        path.write_bytes(data.replace(b'"latent_size": 2', b'"latent_size": NaN'))
    elif op == "not-object":
        path.write_text("[1, 2, 3]")
    elif op == "duplicate-sha":  # JSON with a second "files" key: the last one wins in Python; refuse or not
        path.write_bytes(data[:-2] + b', "files": {}}\n')
    if case.get("sha") and name != "model.json":
        manifest = json.loads((pkg / "model.json").read_text())
        manifest["files"][name]["sha256"] = _sha(path.read_bytes())
        _write_manifest(pkg, manifest)


def _escape(pkg: Path, outside: Path, case: dict) -> None:
    manifest = json.loads((pkg / "model.json").read_text())
    path = case["escape"].split(".")
    name = _get(manifest, path)
    data = (pkg / name).read_bytes()
    target = outside / name
    target.write_bytes(data)
    new = {"dotdot": f"../{outside.name}/{name}", "absolute": str(target),
           "inner-dotdot": f"sub/../../{outside.name}/{name}"}[case["how"]]
    _set(manifest, path, new)
    manifest["files"][new] = {"sha256": _sha(data)}
    _write_manifest(pkg, manifest)


def _outcome(pkg: Path, baseline: dict[str, np.ndarray], parts: str = "all") -> str:
    from vae_infer.errors import ModelPackageError, VaeInferError

    try:
        got = _use(pkg, parts)
    except ModelPackageError as e:
        return f"refused: {_short(e)}"
    except VaeInferError as e:
        return f"other error: {type(e).__name__}: {_short(e)}"
    except TimeoutError:
        return "hang"
    except Exception as e:  # noqa: BLE001  (anything else is what this suite looks for)
        return f"crash: {type(e).__name__}: {_short(e)}"
    same = all(np.array_equal(got[k], baseline[k]) for k in baseline)
    return "accepted" if same else "accepted, results changed"


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 300 else text[:297] + "..."


def _alarm(signum, frame):
    raise TimeoutError("case took too long")


def child(kind: str, work: Path) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _alarm)
    cases = {"files": FILE_CASES, "fields": FIELD_CASES, "escapes": ESCAPE_CASES}[kind]
    base = work / "base"
    shutil.copytree(SHIPPED, base)
    baseline = _use(base)
    for i, case in enumerate(cases):
        pkg, outside = work / f"p{i}" / "pkg", work / f"p{i}" / "outside"
        outside.mkdir(parents=True)
        _copy(base, pkg)
        signal.alarm(CASE_SECONDS)
        try:
            if "file" in case:
                _damage_file(pkg, outside, case)
            elif "field" in case:
                manifest = json.loads((pkg / "model.json").read_text())
                if case["mutation"] == "delete":
                    _set(manifest, case["field"], delete=True)
                else:
                    _set(manifest, case["field"], _mutated(_get(manifest, case["field"]), case["mutation"]))
                _write_manifest(pkg, manifest)
            else:
                _escape(pkg, outside, case)
            outcome = _outcome(pkg, baseline, str(case["field"][0]) if "field" in case else "all")
        except TimeoutError:
            outcome = "hang"
        finally:
            signal.alarm(0)
        print(json.dumps({"id": case["id"], "outcome": outcome}), flush=True)
        shutil.rmtree(work / f"p{i}")


# -- the parent: run the child once per kind of case, then one test per case --------------------------------------


_RESULTS: dict[str, dict[str, str]] = {}


def outcomes(kind: str, tmp_path_factory) -> dict[str, str]:
    if kind not in _RESULTS:
        work = tmp_path_factory.mktemp(f"tamper-{kind}")
        proc = subprocess.Popen([sys.executable, __file__, kind, str(work)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            out, err = proc.communicate(timeout=SUITE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = f"the child was killed after {SUITE_SECONDS} s (a hang?)\n{err}"
        results = {}
        for line in out.splitlines():
            item = json.loads(line)
            if "id" in item:
                results[item["id"]] = item["outcome"]
            elif "note" in item:
                results.setdefault("_notes", "")
                results["_notes"] += item["note"] + "\n"
        results["_stderr"] = err[-3000:]
        _RESULTS[kind] = results
    return _RESULTS[kind]


def _result(kind: str, case_id: str, tmp_path_factory) -> str:
    results = outcomes(kind, tmp_path_factory)
    assert case_id in results, f"no result for {case_id}: the child stopped early: {results['_stderr']}"
    return results[case_id]


# Known failures, to be fixed in the module named: a strict xfail turns into a failure once fixed.
KNOWN: dict[str, str] = {}


def _params(cases: list[dict]) -> list:
    return [pytest.param(c["id"], id=c["id"],
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN[c["id"]])] if c["id"] in KNOWN else [])
            for c in cases]


@pytest.mark.parametrize("case_id", _params([c for c in FILE_CASES if not c["sha"]]))
@pytest.mark.slow
def test_a_damaged_file_is_refused(case_id, tmp_path_factory):
    outcome = _result("files", case_id, tmp_path_factory)
    assert outcome.startswith("refused: "), outcome


@pytest.mark.parametrize("case_id", _params([c for c in FILE_CASES if c["sha"]]))
@pytest.mark.slow
def test_a_file_rewritten_with_its_sha256_is_refused_or_still_works(case_id, tmp_path_factory):
    """The bytes and model.json's sha256 changed together: refused at load or first use, or (a flipped
    byte in a weight) another valid model whose every result is finite. Never a crash or NaN."""
    outcome = _result("files", case_id, tmp_path_factory)
    assert outcome.startswith(("refused: ", "accepted")), outcome
    if case_id.split(":")[1].startswith(("truncate", "empty", "garbage")):
        if case_id.startswith("latent_index") and "graph interpolation off" in _RESULTS["files"].get("_notes", ""):
            pytest.skip("the untampered package's latent index does not load (an older format): rebuild it "
                        "(vae-infer index build) to check graph interpolation on damaged indexes")
        assert outcome.startswith("refused: "), outcome


@pytest.mark.parametrize("case_id", _params(FIELD_CASES))
@pytest.mark.slow
def test_a_changed_manifest_field_is_refused_or_harmless(case_id, tmp_path_factory):
    """A field deleted, null, of the wrong type, out of range or NaN: refused with a ModelPackageError, or
    (a training figure, a tool version) accepted with every result exactly as before."""
    outcome = _result("fields", case_id, tmp_path_factory)
    assert outcome.startswith("refused: ") or outcome == "accepted", outcome


@pytest.mark.parametrize("case_id", _params(ESCAPE_CASES))
@pytest.mark.slow
def test_a_file_outside_the_package_is_refused(case_id, tmp_path_factory):
    outcome = _result("escapes", case_id, tmp_path_factory)
    assert outcome.startswith("refused: "), outcome
    assert "outside" in outcome, outcome


def test_the_suite_covers_every_file_and_field():
    names = set(_manifest()["files"]) | {"model.json"}
    assert {c["file"] for c in FILE_CASES} == names
    assert len(names) >= 11  # graphs, variants, calibration, latent index, manifest
    assert {tuple(c["field"]) for c in FIELD_CASES} == set(_fields(_manifest()))
    assert len(FILE_CASES) + len(FIELD_CASES) + len(ESCAPE_CASES) > 800


# -- the calibration's fields, each named in the error (D10) --------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("calibrated") / "pkg"
    shutil.copytree(SHIPPED, dest)
    return dest


def _recalibrated(src: Path, dest: Path, section=None, arrays=None) -> Path:
    """A copy of src whose calibration section and calibration.npz are replaced, with matching sha256s."""
    shutil.copytree(src, dest)
    cal = json.loads((dest / "model.json").read_text())["calibration"]
    with np.load(dest / "calibration.npz") as z:
        stored = {k: z[k] for k in z.files}
    section = section(json.loads(json.dumps(cal))) if section else cal
    stored = arrays(stored) if arrays else stored
    buf = io.BytesIO()
    np.savez(buf, **stored)
    _force_update(dest, {"calibration.npz": buf.getvalue()}, section)
    return dest


def _force_update(dest: Path, files: dict[str, bytes], section: object) -> None:
    """Write files and the calibration section straight into model.json (update_package would refuse a bad
    section when the loader checks it, which is the point of the tests)."""
    d = json.loads((dest / "model.json").read_text())
    for name, data in files.items():
        (dest / name).write_bytes(data)
        d["files"][name] = {"sha256": _sha(data)}
    d["calibration"] = section
    (dest / "model.json").write_text(json.dumps(d, indent=1))


def _edit(path: list, value=None, delete=False):
    def f(section):
        _set(section, path, value, delete)
        return section
    return f


def _arrays(fn):
    def f(stored):
        fn(stored)
        return stored
    return f


@pytest.mark.parametrize(
    ("section", "arrays", "message"),
    [
        (_edit(["thresholds", "dose"], "abc"), None,
         r"calibration\.thresholds\.dose must be a finite number, found 'abc'"),
        (_edit(["thresholds", "recon"], float("nan")), None,
         r"calibration\.thresholds\.recon must be a finite number|NaN is not a JSON number"),
        (_edit(["dose", "bandwidth"], 0), None, r"calibration\.dose\.bandwidth must be a number from 1e-6 to 1e6"),
        (_edit(["dose", "bandwidth"], -1.0), None, r"calibration\.dose\.bandwidth"),
        (_edit(["dose", "mean"], [1.0, 2.0]), None, r"calibration\.dose\.mean must be a list of 3 finite numbers"),
        (_edit(["dose", "std"], [1.0, 0.0, 1.0]), None,
         r"calibration\.dose\.std must be a list of 3 finite numbers > 0"),
        (_edit(["dose", "statistics"], ["a", "b", "c"]), None, r"calibration\.dose\.statistics must be"),
        (_edit(["dose"], delete=True), None, r"calibration\.dose must be an object with statistics"),
        (_edit(["quantile"], 1.5), None, r"calibration\.quantile must be a number strictly between 0 and 1"),
        (_edit(["samples", "iwae"], 10**9), None, r"calibration\.samples\.iwae must be an integer from 1 to"),
        (_edit(["samples", "iwae"], "64"), None, r"calibration\.samples\.iwae"),
        (_edit(["default_kind"], "bogus"), None, r"calibration\.default_kind must be one of the calibrated kinds"),
        (_edit(["version"], True), None, r"calibration version True, this vae_infer reads 1"),
        (_edit(["examples"], 2.5), None, r"calibration\.examples must be an integer"),
        (_edit(["thresholds"], delete=True), None, r"calibration lacks thresholds"),
        (_edit(["surprise"], 1), None, r"calibration has unknown fields surprise"),
        (None, _arrays(lambda a: a.pop("dose_statistics")), r"lacks the array dose_statistics"),
        (None, _arrays(lambda a: a.pop("scores_iwae")), r"lacks the array scores_iwae"),
        (None, _arrays(lambda a: a.__setitem__("dose_statistics", a["dose_statistics"][:, :2])),
         r"dose_statistics must be floats shaped \(5000, 3\)"),
        (None, _arrays(lambda a: a.__setitem__("scores_recon", a["scores_recon"][:100])),
         r"scores_recon must be floats shaped \(5000,\)"),
        (None, _arrays(lambda a: a["dose_statistics"].__setitem__((7, 1), np.nan)),
         r"dose_statistics holds NaN or inf"),
        (None, _arrays(lambda a: a.__setitem__("scores_nelbo", a["scores_nelbo"].astype(np.int64))),
         r"scores_nelbo must be floats"),
        (None, _arrays(lambda a: a.__setitem__("extra", np.zeros(3))), r"arrays the calibration does not list: extra"),
    ],
)
def test_a_bad_calibration_names_its_field(calibrated, tmp_path, section, arrays, message):
    import vae_infer
    from vae_infer.errors import ModelPackageError

    pkg = _recalibrated(calibrated, tmp_path / "pkg", section, arrays)
    _, x = _images()
    with pytest.raises(ModelPackageError, match=message):  # at load, or at first use
        m = vae_infer.load(pkg, threads=1)
        m.detect(x, kind="dose", quantile=0.5)


def test_garbage_calibration_npz_with_its_sha256_is_refused(calibrated, tmp_path):
    import vae_infer
    from vae_infer.errors import ModelPackageError

    pkg = tmp_path / "pkg"
    shutil.copytree(calibrated, pkg)
    section = json.loads((pkg / "model.json").read_text())["calibration"]
    for data, message in ((b"PK\x03\x04garbage" * 10, "calibration"), (b"", "calibration")):
        _force_update(pkg, {"calibration.npz": data}, section)
        with pytest.raises(ModelPackageError, match=message):
            vae_infer.load(pkg, threads=1).detect(_images()[1])


@pytest.mark.slow
def test_a_calibration_npz_that_unpacks_huge_is_refused_before_reading(tmp_path):
    """A zip member whose header declares far more than it holds, or a member that unpacks past the bound."""
    import zipfile

    from vae_infer.errors import ModelPackageError
    from vae_infer.package.calibration import MAX_CALIBRATION_BYTES, load_calibration_arrays

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("scores_recon.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    with pytest.raises(ModelPackageError, match=r"declares shape \(1099511627776,\), more than it holds"):
        load_calibration_arrays(buf.getvalue(), "calibration.npz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("scores_recon.npy", "w", force_zip64=True) as f:
        chunk = bytes(1 << 20)
        for _ in range((MAX_CALIBRATION_BYTES >> 20) + 1):
            f.write(chunk)
    assert len(buf.getvalue()) < 2 << 20  # a zip bomb: small on disk
    with pytest.raises(ModelPackageError, match=r"unpacks to more than 256 MiB"):
        load_calibration_arrays(buf.getvalue(), "calibration.npz")


def test_validate_calibration_accepts_what_calibrate_writes(calibrated):
    from vae_infer.anomaly.scores import CALIBRATION_FILE, load_calibration_arrays, validate_calibration

    section = json.loads((calibrated / "model.json").read_text())["calibration"]
    arrays = load_calibration_arrays((calibrated / CALIBRATION_FILE).read_bytes(), CALIBRATION_FILE)
    assert validate_calibration(section, arrays) is None
    assert sorted(arrays) == sorted([f"scores_{k}" for k in section["thresholds"]] + ["dose_statistics"])


def test_detect_json_is_valid_json_even_for_nan(monkeypatch):
    """echo_json prints NaN and infinity as null: the output parses with a strict JSON parser."""
    from click.testing import CliRunner

    from vae_infer.cli.base import echo_json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"bare {c}")))

    import click

    @click.command()
    def show():
        echo_json({"scores": np.array([1.5, np.nan, -np.inf]), "threshold": float("nan"), "n": np.int64(3),
                   "nested": {"x": [np.float32(2.0), float("inf")]}, "path": Path("a/b")})

    got = strict(CliRunner().invoke(show).output)
    assert got == {"scores": [1.5, None, None], "threshold": None, "n": 3, "nested": {"x": [2.0, None]},
                   "path": "a/b"}


# -- leftovers of killed writes (vae_infer.atomic) --------------------------------------------------------------

_WRITER = """
import sys, time
from vae_infer.atomic import write_atomically
def write(f):
    f.write(b"half of it")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
write_atomically(sys.argv[1], write)
"""


def _killed_write(path: Path) -> Path:
    """A real process killed (SIGKILL) in the middle of write_atomically: its hidden .tmp file stays."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.vae-infer~tmp~{proc.pid}~")]
    proc.kill()
    proc.wait()
    assert len(leftovers) == 1 and leftovers[0].suffix == ".tmp"
    return leftovers[0]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_later_write_removes_leftovers_of_killed_writes_only(tmp_path):
    from vae_infer.atomic import atomic_write_bytes, temp_folder_prefix, temp_name

    out = tmp_path / "out.npy"
    killed = _killed_write(out)
    live = tmp_path / temp_name(out)  # a writer that is still running: this process
    live.write_bytes(b"in progress")
    old_live = tmp_path / temp_name(out)  # alive, but over an hour old
    old_live.write_bytes(b"stale")
    os.utime(old_live, (time.time() - 7200,) * 2)
    other = tmp_path / temp_name(tmp_path / "other.npy", pid=_dead_pid())  # another file's leftover
    other.write_bytes(b"x")
    dead_pkg = tmp_path / (temp_folder_prefix(out, "new", pid=_dead_pid()) + "abc_1234")  # write_package's
    dead_pkg.mkdir()
    (dead_pkg / "model.json").write_text("{}")
    live_pkg = tmp_path / (temp_folder_prefix(out, "old") + "xyz")
    live_pkg.mkdir()
    # names a person chose, however old and however much they look like temporaries: never removed
    backup = tmp_path / ".out.npy.old-backup"
    unnamed_old = tmp_path / ".out.npy.new-q1w2e3r4"
    forged = tmp_path / (temp_folder_prefix(out, "new", pid=_dead_pid())[:-17] + "0" * 16 + "-x")  # bad TAG
    for folder in (backup, unnamed_old, forged):
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
        os.utime(folder, (time.time() - 7200,) * 2)
    lookalike = tmp_path / f".out.npy.{_dead_pid()}-0badcafe.tmp"  # the old temporary name: not proof of ours
    lookalike.write_bytes(b"keep")
    os.utime(lookalike, (time.time() - 7200,) * 2)

    atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new"
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert not killed.exists() and not old_live.exists() and not dead_pkg.exists()
    assert remaining == sorted(["out.npy", live.name, other.name, live_pkg.name, backup.name, unnamed_old.name,
                                forged.name, lookalike.name])
    assert all((f / "keep.txt").read_text() == "mine" for f in (backup, unnamed_old, forged))


def test_a_write_error_names_the_file_asked_for(tmp_path):
    from vae_infer.atomic import atomic_write_bytes

    target = tmp_path / "folder-in-the-way"
    target.mkdir()
    (target / "x").write_text("occupied")
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"data")  # renaming a file over a non-empty folder fails
    assert info.value.filename == str(target)
    assert ".tmp" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["folder-in-the-way"]  # the temporary file is gone

    def fail(f):
        raise OSError(28, "No space left on device")

    from vae_infer.atomic import write_atomically

    with pytest.raises(OSError, match="No space left on device") as info:
        write_atomically(tmp_path / "full.npy", fail)
    assert info.value.filename == str(tmp_path / "full.npy")


if __name__ == "__main__":
    child(sys.argv[1], Path(sys.argv[2]))
