"""The JSON Schema of model.json (vae_infer/package/model.schema.json) and the loader agree: one corpus of manifests,
each accepted by both or refused by both.

The corpus holds the shipped and the test package's manifests and mutations of them: every required field
missing, wrong types (strings, floats, booleans for integers), out-of-range sizes, file names that leave the
folder, bad digests, the name and text limits, hostile but legal text. The checks no JSON Schema can state (a
graph's shapes against image_shape and latent_size, every named file listed in `files`, lengths in UTF-8 bytes,
lone surrogates) are listed in docs/package-format.md and are not in this corpus."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from vae_infer.errors import ModelPackageError  # noqa: E402
from vae_infer.package.manifest import NAME_FIELDS, NAME_LISTS, Manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "vae_infer" / "package" / "model.schema.json").read_text())
BASES = {"shipped": ROOT / "models" / "fashion-mnist" / "model.json",
         "tiny": ROOT / "tests" / "fixtures" / "tiny-model" / "model.json"}


def strict_validator():
    """Draft 2020-12 with JSON integers only: 1.0 is not the integer 1 (the loader's rule)."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(SCHEMA)


VALIDATOR = strict_validator()


def schema_accepts(d: object) -> bool:
    return VALIDATOR.is_valid(d)


def loader_accepts(d: object) -> bool:
    try:
        Manifest.from_dict(d)
    except ModelPackageError:
        return False
    return True


def setter(path: str, value: object) -> Callable[[dict], None]:
    keys = path.split(".")

    def apply(d: dict) -> None:
        node = d
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


def deleter(path: str) -> Callable[[dict], None]:
    keys = path.split(".")

    def apply(d: dict) -> None:
        node = d
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return apply


def renamer_of_first_file(new: str) -> Callable[[dict], None]:
    def apply(d: dict) -> None:
        first = sorted(d["files"])[0]
        d["files"][new] = d["files"].pop(first)
    return apply


def colour_graphs(d: dict) -> None:
    """The graphs' declared widths for RGB images (the loader holds them to image_shape x channels)."""
    h, w = d["input"]["image_shape"]
    for role, key in (("encoder", "inputs"), ("decoder", "outputs")):
        for tensor in d["graphs"][role][key]:
            tensor["shape"] = ["batch", h * w * 3]


LONG_NAME, LONG_TEXT = "n" * 257, "t" * 4097
MUTATIONS: dict[str, Callable[[dict], None]] = {
    "unchanged": lambda d: None,
    **{f"without {key}": deleter(key) for key in
       ("format", "format_version", "name", "input", "latent_size", "opset", "likelihood", "graphs", "files")},
    "without input.image_shape": deleter("input.image_shape"),
    "format other": setter("format", "onnx-model"),
    "format_version 2 without channels": setter("format_version", 2),
    "format_version 3": setter("format_version", 3),
    "version 2 with channels 3": lambda d: (d.update(format_version=2), d["input"].update(channels=3),
                                            colour_graphs(d)),
    "version 2 with channels 1": lambda d: (d.update(format_version=2), d["input"].update(channels=1)),
    "version 2 with channels 2": lambda d: (d.update(format_version=2), d["input"].update(channels=2)),
    "version 2 with channels true": lambda d: (d.update(format_version=2), d["input"].update(channels=True)),
    "version 2 with channels 3.0": lambda d: (d.update(format_version=2), d["input"].update(channels=3.0)),
    "version 1 with channels 1": lambda d: (d.update(format_version=1), d["input"].update(channels=1)),
    "format_version as a string": setter("format_version", "1"),
    "format_version 1.0": setter("format_version", 1.0),
    "format_version true": setter("format_version", True),
    "latent_size 0": setter("latent_size", 0),
    "latent_size a string": setter("latent_size", "2"),
    "opset -1": setter("opset", -1),
    "opset a float": setter("opset", 18.5),
    "hidden_size null": setter("hidden_size", None),
    "hidden_size 0": setter("hidden_size", 0),
    "hidden_size true": setter("hidden_size", True),
    "image_shape of three": setter("input.image_shape", [28, 28, 1]),
    "image_shape 0": setter("input.image_shape", [0, 28]),
    "image_shape too big": setter("input.image_shape", [4097, 28]),
    "image_shape strings": setter("input.image_shape", ["28", "28"]),
    "uint8_scale 0": setter("input.uint8_scale", 0),
    "uint8_scale -1": setter("input.uint8_scale", -1.0),
    "uint8_scale a string": setter("input.uint8_scale", "255"),
    "uint8_scale absent": deleter("input.uint8_scale"),
    "likelihood gaussian": setter("likelihood", "gaussian"),
    "name a number": setter("name", 7),
    "name with markup and escapes": setter("name", "<img src=x onerror=alert(1)>\x1b]0;x\x07 \u202e"),
    "name over 256 characters": setter("name", LONG_NAME),
    "name of 256 characters": setter("name", "n" * 256),
    "a training text of 4096 characters": setter("training.note", "t" * 4096),
    "a training text over 4096 characters": setter("training.note", LONG_TEXT),
    "a key over 256 characters": setter(f"training.{LONG_NAME}", 1),
    "a nested name over 256 characters": setter("training.something.name", LONG_NAME),
    "a name list item over 256 characters": setter("training.class_names", ["a", LONG_NAME]),
    "a _file name over 256 characters": setter("training.weights_file", LONG_NAME),
    "training a list": setter("training", []),
    "tools a string": setter("tools", "torch"),
    "latent_map a list": setter("latent_map", [1, 2]),
    "calibration null": setter("calibration", None),
    "check_images a list": setter("check_images", ["a.npy"]),
    "graphs.encoder not an object": setter("graphs.encoder", "encoder.onnx"),
    "graphs.encoder.inputs not a list": setter("graphs.encoder.inputs", {"name": "x"}),
    "a tensor shape of strings": setter("graphs.encoder.inputs.0.shape", ["batch", "784"]),
    "a tensor without a name": setter("graphs.encoder.inputs.0", {"shape": ["batch", 784]}),
    "graph file absolute": setter("graphs.encoder.file", "/etc/passwd"),
    "graph file with ..": setter("graphs.encoder.file", "../encoder.onnx"),
    "graph file with a backslash": setter("graphs.encoder.file", "a\\encoder.onnx"),
    "graph file empty": setter("graphs.encoder.file", ""),
    "a files key with ..": renamer_of_first_file("../x.onnx"),
    "a files key with a colon": renamer_of_first_file("c:x.onnx"),
    "a files key with NUL": renamer_of_first_file("x\x00.onnx"),
    "a digest too short": lambda d: d["files"][sorted(d["files"])[0]].update(sha256="ab" * 10),
    "a digest in capitals": lambda d: d["files"][sorted(d["files"])[0]].update(
        sha256=d["files"][sorted(d["files"])[0]]["sha256"].upper()),
    "a digest entry not an object": lambda d: d["files"].update({sorted(d["files"])[0]: "ab" * 32}),
    "variants not an object": setter("variants", ["int8"]),
    "a variant without decoder_file": setter("variants", {"int8": {"encoder_file": "encoder.onnx"}}),
}


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_schema_and_loader_agree(base: str, mutation: str):
    d = copy.deepcopy(json.loads(BASES[base].read_text()))
    MUTATIONS[mutation](d)
    by_schema, by_loader = schema_accepts(d), loader_accepts(d)
    assert by_schema == by_loader, (f"{mutation}: the schema {'accepts' if by_schema else 'refuses'} what the "
                                    f"loader {'accepts' if by_loader else 'refuses'}")


def test_the_corpus_holds_both_verdicts():
    """A corpus where everything passed (or failed) would prove nothing."""
    d = json.loads(BASES["shipped"].read_text())
    verdicts = []
    for mutate in MUTATIONS.values():
        m = copy.deepcopy(d)
        mutate(m)
        verdicts.append(loader_accepts(m))
    assert sum(verdicts) >= 5 and len(verdicts) - sum(verdicts) >= 40


def test_the_schema_names_the_loaders_name_fields():
    """The identifier-like fields held to the name rule are the same in the schema and in the loader."""
    props = set(SCHEMA["$defs"]["object"]["properties"])
    assert props == set(NAME_FIELDS) | set(NAME_LISTS)


def test_the_schema_ships_in_the_package_folder():
    assert (ROOT / "vae_infer" / "package" / "model.schema.json").is_file()
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
