"""export-c: a model package as C99 sources for a target, with an example program, a Makefile and the
memory report script.

    export_c("models/fashion-mnist", "build/m4", weights="int8", target="cortex-m4", flash="1M", ram="64K")

Linux targets get <prefix>.h, <prefix>.c, main.c (the example program), Makefile and memory.py;
cortex-m4 also startup.c and link.ld.in (the board's memory map). A bare-metal target whose weight tables
alone exceed its flash is refused here, before anything is written.

No text from the package reaches these files: its name, graph and tensor names, doc strings and metadata
are not written (the C names everything by position, the Makefile names the package by the folder the user
gave). Every graph passes vae_infer.native.graph's checks (operators, attributes, shapes, finite weights)
and every file's text is generated before the first file is written."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, ModelPackageError
from ..package.manifest import GraphSpec
from .abi import Sources
from .ctext import check_c_text
from .factory import check_weights
from .graph import read_graph
from .targets import DEFAULT_TARGET, Target, get_target, parse_size
from .writer import generate

ROLES = {"encode": "encoder", "decode": "decoder"}


@dataclass
class Export:
    out_dir: Path
    files: list[Path]
    weights: str
    weight_bytes: int
    functions: dict[str, str]
    digests: dict[str, str] = field(default_factory=dict)
    target: str = DEFAULT_TARGET
    flash_bytes: int | None = None
    ram_bytes: int | None = None


def generate_package(package_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
                     block: int | None = None, rows: int | None = None) -> tuple[Sources, dict[str, str]]:
    """C sources for a model package: <prefix>_encode and <prefix>_decode; returns (sources, sha256 per function)."""
    from ..package.files import read_manifest, read_verified
    from .weights import DEFAULT_BLOCK

    check_weights(weights)
    manifest = read_manifest(package_dir)
    graphs, digests = {}, {}
    for fname, role in ROLES.items():
        spec: GraphSpec = getattr(manifest, role)
        data = read_verified(package_dir, manifest, spec.file)
        graphs[fname] = read_graph(data, role)  # errors name the role and positions, not the package's names
        digests[fname] = hashlib.sha256(data).hexdigest()
        declared = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        found = ([graphs[fname].input[0]], graphs[fname].output_names)
        if declared != found:
            raise ModelPackageError(f"{role}: the graph's inputs and outputs are {found!r} but model.json "
                                    f"declares {declared!r}; the package is mismatched")
    try:
        sources = generate(graphs, digests, weights=weights, prefix=prefix, block=block or DEFAULT_BLOCK,
                           rows=rows)
    except ValueError as e:
        raise InputError(str(e)) from e
    return sources, digests


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def table_estimate(manifest, weights: str) -> tuple[int, int] | None:
    """(at least, about) the bytes of a model's constant tables in `weights`, from model.json's sizes alone
    (None when it records no hidden size): the weight matrices at their storage size, then, for "about",
    biases, and int8's per-row and per-input scales, as fp32."""
    if not manifest.hidden_size:
        return None
    f, hid, lat = manifest.features, manifest.hidden_size, manifest.latent_size
    layers = [(f, hid), (hid, lat), (hid, lat), (lat, hid), (hid, f)]  # (inputs, outputs) of each dense layer
    matrices = sum(i * o for i, o in layers) * BYTES_PER_WEIGHT[weights]
    small = sum(o + (o + i if weights == "int8" else 0) for i, o in layers) * 4
    return matrices, matrices + small


def _fit_hint(manifest, weights: str, flash: int) -> str:
    """What a smaller storage would take, and whether it fits the flash."""
    if weights == "int8" or manifest is None:
        return "use a larger --flash, or a smaller model (--hidden-size, --image-size)"
    est = table_estimate(manifest, "int8")
    if est is None:
        return "use smaller weights (--weights int8 stores a quarter of fp32) or a larger --flash"
    verdict = "fits" if est[1] <= flash else "does not fit either"
    return (f"--weights int8 would take about {est[1]:,} bytes, which {verdict}"
            + ("" if est[1] <= flash else "; use a larger --flash, or a smaller model (--hidden-size, --image-size)"))


def _shape_words(manifest) -> str:
    if manifest is None:
        return ""
    h, w = manifest.image_shape
    return f" ({h}x{w}x{manifest.channels} images, {manifest.hidden_size} hidden units, latent {manifest.latent_size})"


def check_flash(sources: Sources, target: Target, flash: int | None, manifest=None) -> None:
    """Refuse a bare-metal export whose constant tables alone do not fit the flash, with the numbers and
    whether int8 weights would fit."""
    if target.bare_metal and flash is not None and sources.weight_bytes > flash:
        raise InputError(
            f"the model{_shape_words(manifest)} is too big for {target.name}: its {sources.weights} weight tables "
            f"take {sources.weight_bytes:,} bytes but the flash holds {flash:,} (--flash); "
            f"{_fit_hint(manifest, sources.weights, flash)}"
        )


def check_flash_early(manifest, weights: str, target: Target, flash: int | None) -> None:
    """check_flash before any C is generated, from model.json's sizes: refuses when the weight matrices alone
    exceed the flash (the generated tables take at least that)."""
    est = table_estimate(manifest, weights) if target.bare_metal and flash is not None else None
    if est is not None and flash is not None and est[0] > flash:
        raise InputError(
            f"the model{_shape_words(manifest)} is too big for {target.name}: its {weights} weight tables take "
            f"{est[0]:,} bytes but the flash holds {flash:,} (--flash), counting the weight matrices alone; "
            f"{_fit_hint(manifest, weights, flash)}"
        )


def export_c(package_dir: str | Path, out_dir: str | Path, weights: str = "fp32", prefix: str = "vae",
             block: int | None = None, rows: int | None = None, target: str = DEFAULT_TARGET,
             flash: int | str | None = None, ram: int | str | None = None) -> Export:
    """Write the C sources, the example program, a Makefile and memory.py for a model package and a target
    into out_dir (created if missing; these files are replaced, others are left alone).

    block: outputs per weight block (default: the target's; 64 suits SIMD CPUs, 1 gives plain dot products
    for scalar microcontrollers); rows: a default VAE_ROWS (rows per tile) instead of the target's choice.
    flash, ram: bytes (or "1M", "64K") for bare-metal targets, defaulting to the board's; refused elsewhere."""
    from ..atomic import atomic_write_bytes
    from . import firmware, memory_report
    from .example import example_main
    from .makefile import makefile

    t = get_target(target)
    flash_bytes, ram_bytes = parse_size(flash, "--flash"), parse_size(ram, "--ram")
    if not t.bare_metal and (flash_bytes is not None or ram_bytes is not None):
        raise InputError(f"--flash and --ram set a bare-metal target's budget; {t.name} runs under Linux "
                         f"(use --target cortex-m4)")
    if t.bare_metal:
        flash_bytes = flash_bytes or t.flash_bytes
        ram_bytes = ram_bytes or t.ram_bytes
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; expected a folder for the C sources")
    from ..package.files import read_manifest

    manifest = read_manifest(package_dir)
    check_weights(weights)
    check_flash_early(manifest, weights, t, flash_bytes)  # before seconds of generating C for nothing
    sources, digests = generate_package(package_dir, weights, prefix, block or t.block,
                                        rows if rows is not None else t.rows)
    check_flash(sources, t, flash_bytes, manifest)
    model = str(Path(package_dir).resolve())
    try:
        main_c = firmware.firmware_main(sources, prefix) if t.bare_metal else example_main(sources, prefix)
        texts = {
            f"{prefix}.h": sources.header,
            f"{prefix}.c": sources.source,
            "main.c": check_c_text("main.c", main_c),
            "Makefile": makefile(prefix, t, model, weights, flash_bytes, ram_bytes),
            "memory.py": Path(memory_report.__file__).read_text(),
        }
        if t.bare_metal:
            texts["startup.c"] = check_c_text("startup.c", firmware.STARTUP)
            texts["link.ld.in"] = firmware.LINKER_TEMPLATE
    except ValueError as e:
        raise InputError(str(e)) from e
    files = []
    for name, text in texts.items():
        data = text.encode()
        files.append(atomic_write_bytes(out / name, data))
    return Export(out, files, weights, sources.weight_bytes, sources.functions, digests, t.name, flash_bytes,
                  ram_bytes)
