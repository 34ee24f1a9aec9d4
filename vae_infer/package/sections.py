"""The optional sections of a model package (calibration, latent index, latent map, check images), checked when
the package loads: each section's file parsed by its own reader (bounded, no pickles) and every array checked for shape,
range and finite values, so a damaged or edited section is refused at load with the section and the array
named, not at first use. The readers live with their sections; this module only ties them to the loader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ModelPackageError
from ..interpolation.index import parse_index
from ..interpolation.latent_map import parse_latent_map
from .calibration import check_calibration_file, validate_calibration
from .check_images import parse_check_images
from .manifest import MANIFEST_NAME, Manifest

Check = Callable[[bytes], object]


def section_checks(package_dir: str | Path, manifest: Manifest) -> dict[str, list[Check]]:
    """file name -> the checks of the sections that name it, each a function of the file's verified bytes (for
    package.verify_all, which reads each file once)."""
    package_dir = Path(package_dir)
    if manifest.calibration is not None:
        validate_calibration(manifest.calibration, where=str(package_dir / MANIFEST_NAME))  # names the bad field
    rebuild = f"rebuild it with `vae-infer index build {package_dir} --data DATASET`"
    lmap: dict = manifest.latent_map or {}
    parsers: dict[str, tuple[dict | None, str, Callable[[bytes, str], object]]] = {
        "calibration": (manifest.calibration, "reference_file",
                        lambda data, origin: check_calibration_file(manifest.calibration, data, str(package_dir))),
        "latent_index": (manifest.latent_index, "file",
                         lambda data, origin: parse_index(data, manifest.latent_size, origin)),
        "latent_map": (manifest.latent_map, "file",
                       lambda data, origin: parse_latent_map(data, lmap, manifest.latent_size, origin, rebuild)),
        "check_images": (manifest.check_images, "file",
                         lambda data, origin: parse_check_images(data, manifest.check_images or {}, manifest.features,
                                                                 origin)),
    }
    checks: dict[str, list[Check]] = {}
    for section_name, (section, key, parse) in parsers.items():
        if not section:
            continue
        name = section.get(key)
        if not isinstance(name, str) or name not in manifest.files:
            raise ModelPackageError(f"{package_dir / MANIFEST_NAME}: the {section_name} section names the file "
                                    f"{name!r} under {key!r}, which model.json does not list")
        origin = f"{package_dir / name} ({section_name})"
        checks.setdefault(name, []).append(_bound(parse, origin))
    return checks


def _bound(parse: Callable[[bytes, str], object], origin: str) -> Check:
    return lambda data: parse(data, origin)
