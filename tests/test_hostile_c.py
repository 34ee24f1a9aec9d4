"""Hostile text in a model package never reaches generated C, and nothing in a package runs when it is exported,
compiled or loaded with the C backend.

Every entry of tests/hostile_corpus.py is put into every text field of model.json and every name and string
field of both ONNX graphs (graph, node, tensor, value_info, input, output and initializer names, renamed
consistently so the graph stays valid; doc strings; metadata_props; producer, domain; the batch dim_param),
with model.json's sha256 entries fixed. The C generated from such a package must be byte-identical to the C
generated from the same weights with neutral names. A refusal at load with a clear error is a pass too, but the
generator itself is checked on the hostile graphs directly, so it never relies on the loader refusing.

The slow test takes the combined worst case through `vae-infer export-c --check` for every target, `make`,
the example program and `vae_infer.load(..., backend="c")`, and looks for the file the payloads would create."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fails, needs_binary
from tests.hostile_corpus import CANARY, COMBINED, HOSTILE_TEXT
from vae_infer.errors import InputError, ModelPackageError, VaeInferError

onnx = pytest.importorskip("onnx")  # the native extra

from vae_infer import native  # noqa: E402
from vae_infer.native.ctext import c_string, check_c_text  # noqa: E402
from vae_infer.native.graph import read_graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-model"
GRAPHS = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
NAME_LIMIT = 256  # the loader's longest name (model.json names); longer ones are refused at load
# model.json fields that are not free text: their values are fixed words the loader checks
STRUCTURAL = {"format", "dtype", "likelihood", "prior", "file"}
SURROGATE_STAND_IN = "\ue000"  # a private-use character: same UTF-8 length (3 bytes) as a lone surrogate's bytes
GCC = shutil.which("gcc")
needs_gcc = needs_binary("gcc", "gcc")


@pytest.fixture(scope="module", autouse=True)
def cache_in_tmp(tmp_path_factory):
    """Libraries for backend='c' are built under pytest's tmp folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


# -- a package carrying hostile text everywhere ------------------------------------------------------------


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _serialize(model, text: str) -> bytes:
    """The model's bytes. protobuf refuses strings that are not valid Unicode (lone surrogates): they are set as
    a stand-in of the same UTF-8 length and then swapped for the surrogate's own bytes in the serialized model,
    which is what a hostile writer would do."""
    data = model.SerializeToString()
    surrogates = {c for c in text if 0xD800 <= ord(c) <= 0xDFFF}
    assert len(surrogates) <= 1, "one kind of lone surrogate per text"
    for c in surrogates:
        data = data.replace(SURROGATE_STAND_IN.encode(), c.encode("utf-8", "surrogatepass"))
    return data


def _protobuf_text(text: str) -> str:
    assert SURROGATE_STAND_IN not in text
    return re.sub("[\ud800-\udfff]", SURROGATE_STAND_IN, text)


def hostile_graph(data: bytes, text: str, io_text: str) -> tuple[bytes, dict[str, str]]:
    """The ONNX model `data` with `text` in every name and string field; the graph's inputs and outputs are
    named from io_text (model.json must declare the same names). Returns (bytes, old name -> new name)."""
    t = _protobuf_text(text)
    model = onnx.load_model_from_string(data)
    g = model.graph
    io_names = {v.name for v in (*g.input, *g.output)}
    renamed: dict[str, str] = {}  # old -> new, as model.json spells it
    stored: dict[str, str] = {}  # old -> new, as set in the protobuf

    def new(old: str) -> str:
        if old and old not in renamed:
            base = io_text if old in io_names else text
            renamed[old] = f"{base}{len(renamed)}"
            stored[old] = _protobuf_text(renamed[old])
        return stored.get(old, old)

    for i, node in enumerate(g.node):
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name, node.doc_string = f"{t}node{i}", t
    for init in g.initializer:
        init.name, init.doc_string = new(init.name), t
    for vi in (*g.input, *g.output, *g.value_info):
        vi.name, vi.doc_string = new(vi.name), t
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = t
    g.name, g.doc_string = t, t
    model.doc_string, model.producer_name, model.producer_version, model.domain = t, t, t, t
    entry = model.metadata_props.add()
    entry.key, entry.value = t, t
    return _serialize(model, text + io_text), renamed


def _hostile_fields(node: object, text: str, key: str = "") -> object:
    """Every free-text string of model.json replaced by text (not its fixed words, file names or "batch")."""
    if isinstance(node, dict):
        return {k: v if k == "files" else _hostile_fields(v, text, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_hostile_fields(v, text, key) for v in node]
    if isinstance(node, str) and key not in STRUCTURAL and node != "batch":
        return text
    return node


def hostile_package(dest: Path, text: str | None, name_text: str | None = None, base: Path = TINY) -> Path:
    """A copy of `base` at dest with `text` in every free-text field of model.json and every name and string
    field of both graphs, sha256 entries fixed; name_text (default text) for the names model.json holds (the
    package name, the graphs' inputs and outputs). text None: a plain copy."""
    shutil.copytree(base, dest)
    if text is None:
        return dest
    name_text = text if name_text is None else name_text
    original = json.loads((base / "model.json").read_text())
    manifest = _hostile_fields(original, text)
    manifest["name"] = name_text
    for role, file in GRAPHS.items():
        data, renamed = hostile_graph((base / file).read_bytes(), text, name_text)
        (dest / file).write_bytes(data)
        manifest["files"][file]["sha256"] = _sha(data)
        for kind in ("inputs", "outputs"):
            for tensor, was in zip(manifest["graphs"][role][kind], original["graphs"][role][kind], strict=True):
                tensor["name"] = renamed[was["name"]]
    (dest / "model.json").write_text(json.dumps(manifest, indent=1))  # ensure_ascii: surrogates as \\udc80
    return dest


def edited_package(dest: Path, role: str, edit, base: Path = TINY) -> Path:
    """A copy of base with edit(onnx model) applied to one graph, its sha256 fixed in model.json."""
    shutil.copytree(base, dest)
    file = GRAPHS[role]
    model = onnx.load_model_from_string((dest / file).read_bytes())
    edit(model)
    data = model.SerializeToString()
    (dest / file).write_bytes(data)
    manifest = json.loads((dest / "model.json").read_text())
    manifest["files"][file]["sha256"] = _sha(data)
    (dest / "model.json").write_text(json.dumps(manifest, indent=1))
    return dest


def set_initializer(name: str, change):
    """An edit that applies change(array) to the initializer `name` (a copy) and stores it back."""
    from onnx import numpy_helper

    def edit(model) -> None:
        for i, init in enumerate(model.graph.initializer):
            if init.name == name:
                a = numpy_helper.to_array(init).copy()
                change(a)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, name))
                return
        raise AssertionError(f"no initializer {name}")

    return edit


# -- the one string emitter and the check on every generated file --------------------------------------------

EXTRA_STRINGS = ("??/\n", "??=define x", "a\\\nb", "*/", "/*", "//", "#", "\x00", "\"", "\\", "1\x0012", "\x7f\x80\xff")


def _literal_bytes(literal: str) -> bytes:
    """The bytes a c_string literal stands for, read back the way a C compiler does (three-digit octal escapes)."""
    assert literal[0] == literal[-1] == '"'
    body = literal[1:-1]
    out, i = bytearray(), 0
    while i < len(body):
        if body[i] == "\\":
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(ord(body[i]))
            i += 1
    return bytes(out)


@pytest.mark.parametrize("text", [t for _, t in HOSTILE_TEXT] + list(EXTRA_STRINGS),
                         ids=[label for label, _ in HOSTILE_TEXT] + [f"extra{i}" for i in range(len(EXTRA_STRINGS))])
def test_c_string_writes_any_text_as_plain_bytes_and_three_digit_octal_escapes(text):
    literal = c_string(text)
    assert re.fullmatch(r'"(?:[A-Za-z0-9 _.\-]|\\[0-7]{3})*"', literal), literal
    assert _literal_bytes(literal) == text.encode("utf-8", "surrogatepass")
    check_c_text("a.c", f"static const char s[] = {literal};\n")  # no trigraph, splice or raw control byte


@pytest.mark.slow
@needs_gcc
@pytest.mark.parametrize("std", ["-std=c99", "-std=gnu99"])
def test_c_string_literals_compile_to_exactly_their_bytes(tmp_path, std):
    """One program holding every corpus string as a c_string literal, built with trigraphs on (-std=c99 turns
    them on; -trigraphs for gnu99) and warnings as errors (but the 5000-byte string is over C99's 4095), prints
    each literal's bytes: they are the text's."""
    texts = [t for _, t in HOSTILE_TEXT] + list(EXTRA_STRINGS)
    table = ",\n".join(f"    {{{c_string(t)}, sizeof({c_string(t)}) - 1}}" for t in texts)
    program = (
        "#include <stdio.h>\n#include <stddef.h>\n"
        "struct s { const char *p; size_t n; };\n"
        f"static const struct s texts[] = {{\n{table}\n}};\n"
        "int main(void)\n{\n    size_t i, j;\n"
        "    for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {\n"
        "        for (j = 0; j < texts[i].n; j++)\n            printf(\"%02x\", (unsigned char)texts[i].p[j]);\n"
        "        printf(\"\\n\");\n    }\n    return 0;\n}\n")
    src = tmp_path / "strings.c"
    src.write_text(check_c_text("strings.c", program))
    exe = tmp_path / "strings"
    subprocess.run([GCC, std, "-trigraphs", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wno-overlength-strings",
                    "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert out == [t.encode("utf-8", "surrogatepass").hex() for t in texts]


@pytest.mark.parametrize("text, what", [
    ("int a; /* x ??/\n*/", "trigraph"),
    ("/* x *\\\n/ int a;", "line splice"),
    ("/* caf\u00e9 */", "outside printable ASCII"),
    ("int a;\t/* tab */", "outside printable ASCII"),
    ("/* \x00 */", "outside printable ASCII"),
    ("/* \r */", "outside printable ASCII"),
])
def test_a_generated_file_with_a_splice_trigraph_or_raw_byte_is_refused(text, what):
    with pytest.raises(ValueError, match=rf"internal error: the generated a\.c holds .*{what}"):
        check_c_text("a.c", text)


# -- the corpus: the C is the same as for neutral names ------------------------------------------------------

CORPUS = [pytest.param(text, id=label) for label, text in HOSTILE_TEXT]
FAKE_DIGESTS = {"encode": "0" * 64, "decode": "1" * 64}
# (target, weights) pairs the package-level comparison exports: a Linux target and the firmware, two formats
EXPORTS = (("x86_64", "fp32"), ("cortex-m4", "int8"))


def _generated(graph_bytes: dict[str, bytes], weights: str, block: int) -> tuple[str, ...]:
    from vae_infer.native.example import example_main
    from vae_infer.native.firmware import firmware_main

    graphs = {fname: read_graph(data, role) for (fname, role), data in zip(
        (("encode", "encoder"), ("decode", "decoder")), graph_bytes.values(), strict=True)}
    sources = native.generate(graphs, FAKE_DIGESTS, weights=weights, block=block)
    return sources.header, sources.source, example_main(sources, "vae"), firmware_main(sources, "vae")


@pytest.fixture(scope="module")
def neutral(tmp_path_factory):
    """The neutral package and what is generated from it: C per weight format, exports per target."""
    base = tmp_path_factory.mktemp("neutral")
    pkg = hostile_package(base / "pkg", None)
    graphs = {role: (pkg / file).read_bytes() for role, file in GRAPHS.items()}
    generated = {(weights, block): _generated(graphs, weights, block) for weights, block in (("fp32", 64), ("int8", 1))}
    exports = {}
    for target, weights in EXPORTS:
        out = base / f"{target}-{weights}"
        native.export_c(pkg, out, weights=weights, target=target)
        exports[target, weights] = out
    return {"pkg": pkg, "graphs": graphs, "generated": generated, "exports": exports}


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.slow
def test_the_generator_writes_the_same_c_for_hostile_graphs(text, neutral):
    """The generator on the hostile graphs themselves (no model.json, no loader rules): byte-identical C, or
    the graph reader's clear refusal (names that are not valid UTF-8)."""
    graphs = {role: hostile_graph(data, text, text)[0] for role, data in neutral["graphs"].items()}
    for (weights, block), want in neutral["generated"].items():
        try:
            got = _generated(graphs, weights, block)
        except ModelPackageError as e:
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in text), e  # only text that is not Unicode is refused
            assert "names are not valid UTF-8" in str(e)
            return
        for name, g, w in zip(("vae.h", "vae.c", "main.c", "firmware main.c"), got, want, strict=True):
            assert g == w, f"{name} differs for hostile names"


def _normalized(folder: Path, replace: dict[str, str]) -> dict[str, bytes]:
    files = {}
    for f in sorted(folder.iterdir()):
        text = f.read_bytes()
        for old, new in replace.items():
            text = text.replace(old.encode(), new.encode())
        files[f.name] = text
    return files


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.slow
def test_export_c_of_a_hostile_package_is_byte_identical_or_refused(text, neutral, tmp_path):
    """Every file export-c writes is the neutral package's, once the two things that must differ are mapped
    back: each graph's sha256 (the hash of different bytes) and the package's folder (another path)."""
    pkg = hostile_package(tmp_path / "pkg", text)
    manifest = json.loads((pkg / "model.json").read_text())
    neutral_manifest = json.loads((neutral["pkg"] / "model.json").read_text())
    replace = {manifest["files"][f]["sha256"]: neutral_manifest["files"][f]["sha256"] for f in GRAPHS.values()}
    replace[str(pkg.resolve())] = str(neutral["pkg"].resolve())
    for (target, weights), want_dir in neutral["exports"].items():
        out = tmp_path / f"{target}-{weights}"
        try:
            native.export_c(pkg, out, weights=weights, target=target)
        except VaeInferError as e:  # refused with a clear error, before anything is written
            assert isinstance(e, (ModelPackageError, InputError)), e
            assert not out.exists()
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in text) or len(text) > NAME_LIMIT, e
            return
        got, want = _normalized(out, replace), _normalized(want_dir, {})
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name] == want[name], f"{target} {weights}: {name} differs for hostile text"
        assert CANARY.encode() not in got["vae.c"] + got["vae.h"] + got["main.c"] + got["Makefile"]


# -- the gate: non-finite and unsupported graphs are refused before any file is written ------------------------


def _export_cli(*args: str):
    from click.testing import CliRunner

    from vae_infer.cli import main

    return CliRunner().invoke(main, ["export-c", *args])


@pytest.mark.parametrize("role, name, index, value, where", [
    ("encoder", "mu.bias", 0, np.nan, "encoder layer 1 bias holds 1 NaN or infinite value (of 2)"),
    ("encoder", "hidden.weight", 5, np.inf, "encoder layer 0 weight holds 1 NaN or infinite value (of 25088)"),
    ("decoder", "logits.out.bias", 3, -np.inf, "decoder layer 1 bias holds 1 NaN or infinite value (of 784)"),
])
def test_a_non_finite_weight_is_refused_by_position_and_nothing_is_written(tmp_path, role, name, index, value,
                                                                           where):
    def change(a):
        a.reshape(-1)[index] = value

    pkg = edited_package(tmp_path / "pkg", role, set_initializer(name, change))
    out = tmp_path / "out"
    with pytest.raises(ModelPackageError, match=re.escape(where)) as e:
        native.export_c(pkg, out)
    assert name not in str(e.value)  # the layer's position, not the package's name for the tensor
    assert not out.exists()
    err = fails(_export_cli(str(pkg), "--out", str(out)), where, "finite weights only")
    assert name not in err and not out.exists()


def test_weights_that_overflow_with_alpha_are_refused(tmp_path):
    """Finite initializers, but Gemm's alpha makes the compiled weights infinite: the check is on what is
    compiled."""
    def big(a):
        a.reshape(-1)[0] = 1e38

    def edit(model):
        set_initializer("mu.weight", big)(model)
        node = model.graph.node[2]  # the mu layer
        del node.attribute[[a.name for a in node.attribute].index("alpha")]
        node.attribute.append(onnx.helper.make_attribute("alpha", 10.0))

    pkg = edited_package(tmp_path / "pkg", "encoder", edit)
    with pytest.raises(ModelPackageError, match=r"encoder layer 1 weight holds 1 NaN or infinite value \(of 64\)"):
        native.export_c(pkg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_gcc
def test_the_c_backend_refuses_a_nan_weight_before_compiling(tmp_path):
    import vae_infer

    pkg = edited_package(tmp_path / "pkg", "encoder", set_initializer("mu.bias", lambda a: a.fill(np.nan)))
    with pytest.raises(ModelPackageError, match=r"encoder\.onnx layer 1 bias holds 2 NaN or infinite values"):
        vae_infer.load(pkg, backend="c", threads=1)
    assert not list((Path(os.environ["XDG_CACHE_HOME"]) / "vae-infer" / "native").glob(
        f"{_sha((pkg / 'encoder.onnx').read_bytes())}*"))


def test_an_unsupported_graph_writes_no_file_and_replaces_none(tmp_path):
    def edit(model):
        model.graph.node[1].op_type = "Softplus"

    pkg = edited_package(tmp_path / "pkg", "encoder", edit)
    out = tmp_path / "out"
    out.mkdir()
    (out / "vae.c").write_text("/* an earlier export */\n")
    with pytest.raises(ModelPackageError, match=r"encoder: unsupported operator Softplus"):
        native.export_c(pkg, out)
    assert sorted(p.name for p in out.iterdir()) == ["vae.c"]
    assert (out / "vae.c").read_text() == "/* an earlier export */\n"


# -- the Makefile: the package's folder is quoted for make and the shell ----------------------------------------


@needs_binary("make", "make")
def test_a_package_folder_with_make_and_shell_syntax_is_quoted_in_the_makefile(tmp_path):
    """`make -n check` expands $(MODEL) (and would run a $(shell ...) in it) without running the recipe."""
    folder = tmp_path / f"pk $(shell touch {CANARY}) ;touch {CANARY}; `touch {CANARY}` 'q' #c"
    pkg = hostile_package(folder, None)
    out = tmp_path / "out"
    native.export_c(pkg, out)
    run = subprocess.run(["make", "-n", "-C", str(out), "check"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    words = [line for line in run.stdout.splitlines() if "vae_infer.native.check" in line]
    assert len(words) == 1 and str(pkg.resolve()).replace("'", "'\"'\"'") in words[0], run.stdout
    subprocess.run(["sh", "-c", f"set -- {words[0].split(' -m vae_infer.native.check ')[1]}; "
                    f"test \"$1\" = \"$EXPECTED\""], env={**os.environ, "EXPECTED": str(pkg.resolve())},
                   check=True, cwd=tmp_path)  # the shell reads the path back as one word, unchanged
    assert not list(tmp_path.rglob(CANARY))


def test_a_package_folder_a_makefile_cannot_hold_is_refused_before_writing(tmp_path):
    pkg = hostile_package(tmp_path / "pk\ng", None)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"the model package's path .* holds '\\n', which the Makefile cannot hold"):
        native.export_c(pkg, out)
    assert not out.exists()


# -- the combined worst case, end to end: export --check for every target, make, the example, backend='c' -------


def _target_params() -> list:
    from vae_infer.native.targets import TARGETS

    params = []
    for name, t in TARGETS.items():
        marks = [pytest.mark.slow, needs_binary("make", "make"), needs_binary(t.cc, t.cc_package)]
        if t.emulator:
            marks.append(needs_binary(t.emulator[0], t.emulator_package))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _child_env() -> dict[str, str]:
    """The environment for a child process: this worktree's code first, the test's build cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _no_canary(*folders: Path) -> None:
    for folder in folders:
        found = [p for p in folder.rglob("*") if CANARY in p.name]
        assert not found, f"a payload ran: {found}"


@pytest.mark.parametrize("target", _target_params())
def test_the_combined_worst_case_runs_nothing_on_export_check_make_and_load(target, tmp_path, tiny_images):
    """COMBINED in every field (names model.json holds cut to the loader's limit), exported with --check from a
    temporary working folder, built again with `make`, its example program run, and (x86_64) loaded with
    backend='c' and compared with onnxruntime: results are right and the canary file never appears."""
    from vae_infer.native.targets import TARGETS

    t = TARGETS[target]
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    pkg = hostile_package(tmp_path / "pkg", COMBINED, name_text=COMBINED[: NAME_LIMIT - 3])
    env = _child_env()
    run = subprocess.run([sys.executable, "-m", "vae_infer", "export-c", str(pkg), "--out", str(out), "--target",
                          target, "--check"], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr
    assert f"checked {target}" in run.stdout and "vs onnxruntime" in run.stdout, run.stdout
    assert CANARY not in (out / "vae.c").read_text() + (out / "vae.h").read_text() + (out / "main.c").read_text()
    made = subprocess.run(["make", "-C", str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    if t.bare_metal:
        info = subprocess.run(["make", "-s", "-C", str(out), "run-info"], cwd=cwd, capture_output=True, text=True,
                              timeout=300)
    else:
        info = subprocess.run([*t.emulator, str(out / t.program), "info"], cwd=cwd, capture_output=True, text=True,
                              timeout=300)
    printed = [line for line in (info.stdout + info.stderr).splitlines() if line.startswith("generator=")]
    assert info.returncode == 0 and printed == [printed[0]], info  # semihosting prints to stderr
    assert re.fullmatch(r"generator=vae-infer-native/2; weights=fp32; block=\d+; encode=[0-9a-f]{64} 784 -> 2 2; "
                        r"decode=[0-9a-f]{64} 2 -> 784 784", printed[0]), printed
    if target == "x86_64":
        np.save(tmp_path / "images.npy", tiny_images[:20])
        script = ("import sys, numpy as np, vae_infer\n"
                  "x = np.load(sys.argv[2])\n"
                  "c = vae_infer.load(sys.argv[1], backend='c', threads=1)\n"
                  "o = vae_infer.load(sys.argv[1], threads=1)\n"
                  "(mc, lc), (mo, lo) = c.encode(x), o.encode(x)\n"
                  "xc, xo = c.decode(mc), o.decode(mc)\n"
                  "print(float(np.abs(mc - mo).max()), float(np.abs(lc - lo).max()), float(np.abs(xc - xo).max()),\n"
                  "      mc.shape, type(c.runners['encoder']).__name__)\n")
        loaded = subprocess.run([sys.executable, "-c", script, str(pkg), str(tmp_path / "images.npy")], cwd=cwd,
                                env=env, capture_output=True, text=True, timeout=900)
        assert loaded.returncode == 0, loaded.stderr
        d_mu, d_logvar, d_x, *rest = loaded.stdout.split(maxsplit=3)
        assert max(float(d_mu), float(d_logvar), float(d_x)) <= 1e-5 and "NativeRunner" in rest[0], loaded.stdout
    _no_canary(cwd, out, pkg, tmp_path)
