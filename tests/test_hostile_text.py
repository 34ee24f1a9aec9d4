"""Hostile text and non-finite numbers in a model package: at load, through the CLI, and out of the API.

Every entry of tests/hostile_corpus.py goes into every text field of model.json (the calibration, latent index
and latent map sections included): load refuses it with a ModelPackageError naming the field, or loads it as
data. `vae-infer info` of a hostile package (a real subprocess, its bytes captured) prints no control, bidi or
zero-width character. A NaN or inf weight in the encoder (its sha256 fixed) loads, and every call that would
return codes, images or scores from it refuses instead; a NaN or inf in any array of a section is refused at
load, naming the section and the array."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import vae_infer
from tests.conftest import TINY_IMAGES, TINY_PACKAGE
from tests.hostile_corpus import HOSTILE_TEXT
from vae_infer.errors import ModelPackageError
from vae_infer.text import MAX_NAME_CHARS, MAX_TEXT_BYTES, check_name, check_text, terminal_text

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"class {i}" for i in range(10)]
# Fields where any text that passes the rules must load and come back unchanged (the rest are checked by
# stricter rules too: a file name must name a listed file, a tensor name must match the graph).
FREE_FIELDS = (("name",), ("training", "note"), ("tools", "python"), ("calibration", "source"),
               ("latent_index", "source"), ("latent_map", "source"), ("latent_map", "class_names", 0))
NAME_FIELDS = {("name",), ("latent_map", "class_names", 0)}
KEY_FIELDS = (("training",), ("tools",))  # objects whose keys are free: a hostile key is added to each
# Terminal-safe output: no character of these categories except the newline.
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


# -- a tiny package with every section ---------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images() -> tuple[np.ndarray, np.ndarray]:
    with np.load(TINY_IMAGES) as z:
        return z["images"], z["labels"]


@pytest.fixture(scope="module")
def sectioned(tmp_path_factory) -> Path:
    """The tiny model with a calibration, a latent index and a labelled latent map (each from its real writer)."""
    from vae_infer.anomaly.scores import calibrate
    from vae_infer.interpolation.build import build_index
    from vae_infer.interpolation.index import save_index
    from vae_infer.interpolation.latent_map import build_latent_map, save_latent_map

    pkg = tmp_path_factory.mktemp("sectioned") / "pkg"
    shutil.copytree(TINY_PACKAGE, pkg)
    x, labels = _images()
    calibrate(vae_infer.load(pkg, threads=1), x, kinds=("recon", "dose"), source="tiny images")
    save_index(pkg, build_index(vae_infer.load(pkg, threads=1), x, k=4), source="tiny images")
    model = vae_infer.load(pkg, threads=1)
    save_latent_map(pkg, build_latent_map(model, x, labels, class_names=CLASSES, source="tiny images"))
    return pkg


@pytest.fixture
def pkg_copy(sectioned, tmp_path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(sectioned, dest)
    return dest


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / "model.json").read_text())


def _write_manifest(pkg: Path, d: dict) -> None:
    # ensure_ascii: lone surrogates are written as \udcNN escapes, as a hostile writer would
    (pkg / "model.json").write_text(json.dumps(d, indent=1, ensure_ascii=True))


def _set(d: object, path: tuple, value: object) -> None:
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value


def _get(d: object, path: tuple) -> object:
    for key in path:
        d = d[key]
    return d


def _string_fields(node: object, path: tuple = ()) -> list[tuple]:
    if isinstance(node, str):
        return [path]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [p for k, v in items for p in _string_fields(v, path + (k,))]


def _field_text(path: tuple) -> str:
    """How the loader names a field: `.a.b[0]`, and `['key']` for keys that are not identifiers."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if p.isidentifier() and p.isascii() else f"[{p!r}]"
    return out


def _rewrite(pkg: Path, name: str, data: bytes) -> None:
    """Replace a package file and fix its sha256 in model.json, as whoever writes a package can."""
    (pkg / name).write_bytes(data)
    d = _manifest(pkg)
    d["files"][name] = {"sha256": _sha(data)}
    _write_manifest(pkg, d)


def _refused_by_rules(label: str, text: str, path: tuple) -> bool:
    """Whether the text rules refuse this text in this field (lone surrogates anywhere; long text anywhere; names
    over MAX_NAME_CHARS in name fields)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return len(text.encode()) > MAX_TEXT_BYTES or (path in NAME_FIELDS and len(text) > MAX_NAME_CHARS)


# -- the text rules themselves -----------------------------------------------------------------------------------


def test_check_name_and_check_text_name_the_field_and_say_what_was_found():
    assert check_name("w", "x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS
    assert check_text("w", "é" * (MAX_TEXT_BYTES // 2)) == "é" * (MAX_TEXT_BYTES // 2)  # 2 bytes each: at the limit
    with pytest.raises(ModelPackageError, match=r"^model.json: \.name: expected a name of at most 256 characters, "
                                                r"found 257 characters \('xxx"):
        check_name("model.json: .name", "x" * (MAX_NAME_CHARS + 1))
    with pytest.raises(ModelPackageError, match=r"^w: expected text of at most 4096 bytes \(UTF-8\), found 4098 bytes"):
        check_text("w", "é" * (MAX_TEXT_BYTES // 2 + 1))
    with pytest.raises(ModelPackageError, match=r"^w: expected a name in valid Unicode, found a lone surrogate "
                                                r"\\udc80 at character 4 of 'name\\udc80'"):
        check_name("w", "name\udc80")
    with pytest.raises(ModelPackageError, match=r"^w: expected text \(a string\), found int"):
        check_text("w", 5)
    assert check_name("w", "<b onclick='x'>$(rm -rf ~)</b>") == "<b onclick='x'>$(rm -rf ~)</b>"  # data, kept


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b]0;title\x07\x1b[2J", "\\x1b]0;title\\x07\\x1b[2J"),
    ("a\x7fb\x9bc\x00d\re\nf\tg", "a\\x7fb\\x9bc\\x00d\\x0de\\x0af\\x09g"),
    ("model\u202egnp.exe\u2066x\u2069", "model\\u202egnp.exe\\u2066x\\u2069"),
    ("mo\u200bdel\u200d\ufeff\u2028", "mo\\u200bdel\\u200d\\ufeff\\u2028"),
    ("name\udc80", "name\\udc80"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("Modèle ✓ 模型 𝔘 a\u00a0b \\x1b", "Modèle ✓ 模型 𝔘 a\u00a0b \\x1b"),  # text, and a literal backslash, kept
])
def test_terminal_text_shows_controls_as_escapes(text, shown):
    assert terminal_text(text) == shown
    assert terminal_text(shown) == shown  # escaping twice changes nothing more


# -- every hostile text in every text field, at load -------------------------------------------------------------


def _text_cases() -> list:
    return [pytest.param(label, text, id=label) for label, text in HOSTILE_TEXT]


@pytest.mark.parametrize(("label", "text"), _text_cases())
@pytest.mark.slow
def test_hostile_text_in_every_field_is_refused_naming_it_or_loaded_as_data(sectioned, tmp_path, label, text):
    pkg = tmp_path / "pkg"
    shutil.copytree(sectioned, pkg)
    base = _manifest(sectioned)
    fields = _string_fields(base)
    assert len(fields) > 40 and set(FREE_FIELDS) <= set(fields)
    outcomes = {"refused": 0, "loaded": 0}
    for path in fields:
        d = json.loads(json.dumps(base))
        _set(d, path, text)
        _write_manifest(pkg, d)
        where = f"model.json: {_field_text(path)}"
        try:
            m = vae_infer.load(pkg, threads=1)
        except ModelPackageError as e:
            outcomes["refused"] += 1
            if _refused_by_rules(label, text, path) or path not in FREE_FIELDS:
                if _refused_by_rules(label, text, path):
                    assert where in str(e), (path, str(e))
                continue
            pytest.fail(f"{path}: {label} refused although it passes the text rules: {e}")
        outcomes["loaded"] += 1
        assert not _refused_by_rules(label, text, path), f"{path}: {label} loaded"
        if path in FREE_FIELDS:
            assert _get(m.manifest.to_dict(), path) == text  # data, kept exactly
    if _refused_by_rules(label, text, ("training", "note")):
        assert outcomes["loaded"] == 0
    else:
        assert outcomes["loaded"] >= len(FREE_FIELDS)


@pytest.mark.parametrize(("label", "text"), _text_cases())
def test_hostile_keys_are_refused_naming_the_object_or_loaded(sectioned, tmp_path, label, text):
    pkg = tmp_path / "pkg"
    shutil.copytree(sectioned, pkg)
    for path in KEY_FIELDS:
        d = _manifest(sectioned)
        _get(d, path)[text] = "value"
        _write_manifest(pkg, d)
        long = len(text) > MAX_NAME_CHARS
        if _refused_by_rules(label, text, ()) or long:
            with pytest.raises(ModelPackageError, match=rf"^model.json: \.{path[0]}: a key: expected a name"):
                vae_infer.load(pkg, threads=1)
        else:
            assert _get(vae_infer.load(pkg, threads=1).manifest.to_dict(), path)[text] == "value"


def test_a_manifest_made_in_code_is_held_to_the_same_rules(tiny_copy):
    import dataclasses

    from vae_infer.package.files import read_manifest

    man = read_manifest(tiny_copy)
    with pytest.raises(ModelPackageError, match=r"^model.json: \.training\.note: expected text of at most 4096"):
        dataclasses.replace(man, training={"note": "t" * 5000})
    with pytest.raises(ModelPackageError, match=r"^model.json: \.latent_map\.class_names\[1\]: expected a name in "
                                                r"valid Unicode"):
        dataclasses.replace(man, latent_map={"class_names": ["a", "b\udcff"]})


# -- the CLI prints text, never terminal commands ----------------------------------------------------------------


def _unsafe(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "vae_infer", *args], capture_output=True, env=env, timeout=120,
                          cwd=ROOT)


def _folder_name(text: str) -> str:
    """The text as a folder name (as much of it as a file name can hold): the path is printed too."""
    return "pkg-" + text.replace("/", "_").replace("\x00", "_")[:60]


def _hostile_package(sectioned: Path, tmp_path: Path, text: str) -> Path:
    """A copy of the sectioned package in a folder named by the text, holding it in every free field."""
    pkg = tmp_path / _folder_name(text)
    shutil.copytree(sectioned, pkg)
    d = _manifest(pkg)
    for path in FREE_FIELDS:
        _set(d, path, text)
    _write_manifest(pkg, d)
    return pkg


def _check_info_output(label: str, text: str, pkg: Path, flag: str, code: int, out_bytes: bytes,
                       err_bytes: bytes) -> None:
    """What `vae-infer info PKG [--full | --json]` (flag) printed for a package holding `text`: valid UTF-8 with
    no character a terminal could obey; the text shown escaped (or as JSON escapes), or one line of refusal naming
    the field."""
    out, err = out_bytes.decode("utf-8"), err_bytes.decode("utf-8")  # strict: valid UTF-8 only
    assert not _unsafe(out) and not _unsafe(err), (label, flag, _unsafe(out + err))
    if _refused_by_rules(label, text, ("name",)):
        assert code == 1 and out == "", (label, code)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: model.json: .name: expected a name"), err
        return
    assert code == 0 and err == "", (label, err)
    if flag == "--json":
        info = json.loads(out)
        assert info["name"] == text and info["path"] == str(pkg) and info["latent_map"]["source"] == text
        assert out.isascii() and "\x7f" not in out
        return
    assert f"{'name:':<13} {terminal_text(text)}\n" in out
    if not flag:  # the short form: the name and the sections, no training record
        assert "sections:     " in out and "note:" not in out
        return
    assert f"{'path:':<13} {terminal_text(str(pkg))}\n" in out
    assert f"  note: {terminal_text(text)}\n" in out
    if label == "terminal-osc":
        assert "name:         \\x1b]0;vae_infer_canary_pwned\\x07\\x1b[2J\n" in out  # shown, not obeyed


INFO_FLAGS = ("", "--full", "--json")  # the short form, the whole and the JSON


@pytest.mark.parametrize(("label", "text"), _text_cases())
def test_info_of_a_hostile_package_prints_no_control_characters(sectioned, tmp_path, label, text):
    """In process (click's runner, bytes captured), for speed: every entry, plain and --json."""
    from click.testing import CliRunner

    from vae_infer.cli import main

    pkg = _hostile_package(sectioned, tmp_path, text)
    for flag in INFO_FLAGS:
        result = CliRunner().invoke(main, ["info", str(pkg), *([flag] if flag else [])])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        _check_info_output(label, text, pkg, flag, result.exit_code, result.stdout_bytes, result.stderr_bytes)


SUBPROCESS_CASES = ("terminal-osc", "bidi-override", "del-and-c0", "lone-surrogate", "long-name")


@pytest.mark.parametrize(("label", "text"), [p for p in _text_cases() if p.values[0] in SUBPROCESS_CASES])
@pytest.mark.slow
def test_vae_infer_info_in_a_real_terminal_process_prints_no_control_characters(sectioned, tmp_path, label, text):
    pkg = _hostile_package(sectioned, tmp_path, text)
    for flag in INFO_FLAGS:
        run = _run_cli("info", str(pkg), *([flag] if flag else []))
        _check_info_output(label, text, pkg, flag, run.returncode, run.stdout, run.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("label", "text"), [p for p in _text_cases() if p.values[0] not in SUBPROCESS_CASES])
def test_vae_infer_info_process_for_every_other_entry(sectioned, tmp_path, label, text):
    test_vae_infer_info_in_a_real_terminal_process_prints_no_control_characters(sectioned, tmp_path, label, text)


@pytest.mark.slow
def test_a_lone_surrogate_path_and_click_errors_are_escaped(tmp_path):
    missing = tmp_path / "nope\udc80\x1b[2J"  # not UTF-8 (a surrogate escape) and an escape sequence
    run = _run_cli("info", str(missing))
    err = run.stderr.decode("utf-8")
    assert run.returncode == 1 and not _unsafe(err)
    assert err.count("\n") == 1 and "nope\\udc80\\x1b[2J" in err and "UnicodeEncodeError" not in err
    folder = tmp_path / "pkg\udc80\x1b[2J"  # a real package in such a folder: its path printed escaped
    shutil.copytree(TINY_PACKAGE, folder)
    run = _run_cli("info", str(folder), "--full")
    out = run.stdout.decode("utf-8")
    assert run.returncode == 0 and not _unsafe(out) and f"path:         {tmp_path}/pkg\\udc80\\x1b[2J\n" in out
    run = _run_cli("sample", str(tmp_path), "-n", "\x1b]0;x\x07", "--out", "o.npy")  # click's own error
    err = run.stderr.decode("utf-8")
    assert run.returncode == 2 and not _unsafe(err) and "\\x1b]0;x\\x07" in err


# -- a NaN or inf weight in the encoder: loads, and nothing returns non-finite values ------------------------------


def _poison_encoder(pkg: Path, output: str, value: float) -> None:
    """Set the bias of the node that computes `output` in encoder.onnx to `value`, sha256 fixed."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    graph_file = _manifest(pkg)["graphs"]["encoder"]["file"]
    model = onnx.load_from_string((pkg / graph_file).read_bytes())
    node = next(n for n in model.graph.node if output in n.output)
    init = next(i for i in model.graph.initializer if i.name == node.input[2])
    bias = numpy_helper.to_array(init).copy()
    bias[0] = value
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    _rewrite(pkg, graph_file, model.SerializeToString())


@pytest.mark.parametrize(("output", "value"), [("mu", np.nan), ("logvar", np.inf), ("linear", np.nan)])
def test_a_non_finite_encoder_weight_loads_but_nothing_returns_non_finite_values(pkg_copy, output, value):
    _poison_encoder(pkg_copy, output, value)
    m = vae_infer.load(pkg_copy, threads=1)  # the base install cannot read weights: the outputs are the check
    x, _ = _images()
    shown = "mu" if output != "logvar" else "logvar"
    refusal = rf"the package's encoder produced non-finite values \(NaN or inf\) in {shown} for a valid image"
    calls = {
        "encode": lambda: m.encode(x),
        "encode one": lambda: m.encode(x[:1]),
        "encode many": lambda: m.encode(np.tile(x, (5, 1, 1))),  # 160 rows: the numpy sum, not Python's
        "reconstruct": lambda: m.reconstruct(x),
        "denoise": lambda: m.denoise(x),
        "detect": lambda: m.detect(x),
        "interpolate linear": lambda: m.interpolate(x[0], x[1], steps=4),
        "interpolate graph": lambda: m.interpolate(x[0], x[1], steps=4, method="graph"),
        **{f"score {kind}": (lambda kind=kind: m.score(x, kind=kind)) for kind in ("nelbo", "recon", "iwae", "dose")},
    }
    for name, call in calls.items():
        with pytest.raises(ModelPackageError, match=refusal):
            result = call()
            pytest.fail(f"{name} returned {result!r}")
    # the decoder is untouched: decode and sample still work, and are finite
    assert np.isfinite(m.sample(5, seed=0)).all() and np.isfinite(m.decode(np.zeros((2, 2), np.float32))).all()


@pytest.mark.slow
def test_the_cli_refuses_a_nan_encoder_in_one_line(pkg_copy, tmp_path):
    _poison_encoder(pkg_copy, "mu", np.nan)
    run = _run_cli("encode", str(pkg_copy), str(TINY_IMAGES) + ":images", "--out", str(tmp_path / "z.npy"))
    err = run.stderr.decode()
    assert run.returncode == 1 and err.count("\n") == 1
    assert err.startswith("Error: ") and "encoder produced non-finite values (NaN or inf) in mu" in err
    assert not (tmp_path / "z.npy").exists()


# -- a NaN or inf in any array of a section: refused at load, naming the section and the array ---------------------


def _float_arrays(pkg: Path, name: str) -> list[str]:
    with np.load(pkg / name) as z:
        return sorted(k for k in z.files if z[k].dtype.kind == "f")


SECTION_FILES = {"calibration": "calibration.npz", "latent_index": "latent_index.npz", "latent_map": "latent_map.npz"}


def _section_cases() -> list:
    # every float array each writer stores (asserted below, so a new array cannot go untested)
    arrays = {
        "calibration": ["dose_statistics", "scores_dose", "scores_recon"],
        "latent_index": ["alt_dist", "cell", "codes", "cost", "distance", "edge_cost", "field", "field_cell",
                         "field_origin", "realism_ref", "realism_weight"],
        "latent_map": ["codes"],
    }
    return [pytest.param(section, array, value, id=f"{section}-{array}-{value}")
            for section, names in arrays.items() for array in names for value in (np.nan, np.inf)
            if not (array == "alt_dist" and value == np.inf)]  # +inf there means "unreachable", by design


def test_the_section_cases_cover_every_float_array(sectioned):
    covered = {(s, a) for s, a, _ in (p.values for p in _section_cases())}
    stored = {(s, a) for s, f in SECTION_FILES.items() for a in _float_arrays(sectioned, f)}
    assert covered == stored


@pytest.mark.parametrize(("section", "array", "value"), _section_cases())
def test_a_non_finite_section_array_is_refused_at_load_naming_it(pkg_copy, section, array, value):
    name = SECTION_FILES[section]
    with np.load(pkg_copy / name) as z:
        stored = {k: z[k].copy() for k in z.files}
    a = stored[array]
    if a.ndim == 0:
        stored[array] = np.array(value, a.dtype)
    else:
        a.reshape(-1)[a.size // 2] = value
    buf = io.BytesIO()
    np.savez(buf, **stored)
    _rewrite(pkg_copy, name, buf.getvalue())
    with pytest.raises(ModelPackageError) as info:
        vae_infer.load(pkg_copy, threads=1)
    message = str(info.value)
    assert section in message and array in message and ("NaN" in message or "nan" in message), message


def test_a_sectioned_package_loads_and_its_sections_read(sectioned):
    from vae_infer.interpolation.index import read_index
    from vae_infer.interpolation.latent_map import read_latent_map

    m = vae_infer.load(sectioned, threads=1)
    assert read_latent_map(m).class_names == tuple(CLASSES) and read_index(m).n_nodes > 2
    flags, scores = m.detect(_images()[0])
    assert np.isfinite(scores).all() and flags.shape == scores.shape


@pytest.mark.parametrize("argv", [["\x1b[2Jx"], ["--\x1b[2J"], ["index", "\x1b]0;t\x07"], ["info", "\u202emodel\x9b"]])
def test_click_usage_errors_quote_the_command_line_escaped(argv):
    from click.testing import CliRunner

    from vae_infer.cli import main

    result = CliRunner().invoke(main, argv)
    err = result.stderr_bytes.decode("utf-8")
    assert result.exit_code in (1, 2) and not _unsafe(err) and terminal_text(argv[-1]) in err, err
    assert err.strip().splitlines()[-1].startswith("Error: ")
