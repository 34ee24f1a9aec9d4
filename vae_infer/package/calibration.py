"""What a valid anomaly calibration is: model.json's `calibration` section and calibration.npz, checked field by
field (types, ranges, shapes, finite values) and read with bounds, so nothing an edited or damaged package holds
reaches the scores unchecked. vae_infer.anomaly.scores writes them (calibrate) and checks them at first use; the
package loader may check them at load (validate_calibration, load_calibration_arrays)."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelPackageError, VaeInferError

SCORE_KINDS = ("nelbo", "recon", "mse", "iwae", "excess", "ic", "dose")
STOCHASTIC_KINDS = ("nelbo", "iwae", "ic")  # the kinds that draw z; the others are deterministic
CALIBRATION_VERSION = 1
DOSE_STATISTICS = ("log1p_recon_plus_kl", "log1p_png_bits", "log1p_excess")
MIN_CALIBRATION_IMAGES = 10
# Bounds on what a (possibly edited) calibration may ask for: draws of z per image at detect, and the
# unpacked size of calibration.npz (60,000 calibration images take ~5 MB).
MAX_CALIBRATION_SAMPLES = 10_000
MAX_CALIBRATION_BYTES = 256 * 2**20
CALIBRATION_KEYS = ("version", "source", "examples", "variant", "quantile", "default_kind", "samples", "seed",
                    "thresholds", "reference_file", "dose")
REQUIRED_CALIBRATION_KEYS = ("version", "examples", "quantile", "default_kind", "thresholds", "reference_file")
DOSE_KEYS = ("statistics", "mean", "std", "bandwidth", "kernel")


def validate_calibration(section: object, arrays: Mapping[str, np.ndarray] | None = None,
                         where: str = "model.json") -> None:
    """Raise ModelPackageError naming the field unless `section` (model.json's `calibration`) and, when given,
    `arrays` (calibration.npz, as load_calibration_arrays reads it) are what calibrate writes: every field of
    the right type and range, every statistic present, finite and of the right shape. `where` prefixes the
    messages (the package's model.json)."""
    fix = "the package is corrupt or was edited; calibrate it again (vae-infer calibrate MODEL --data SOURCE)"

    def bad(field: str, expected: str, found: object) -> ModelPackageError:
        text = repr(found) if len(repr(found)) <= 80 else repr(found)[:77] + "..."
        return ModelPackageError(f"{where}: calibration{field} must be {expected}, found {text}; {fix}")

    if not isinstance(section, dict):
        raise bad("", "an object", type(section).__name__)
    missing = [k for k in REQUIRED_CALIBRATION_KEYS if k not in section]
    if missing:
        raise ModelPackageError(f"{where}: calibration lacks {', '.join(missing)}; {fix}")
    unknown = sorted(set(map(str, section)) - set(CALIBRATION_KEYS))
    if unknown:
        raise ModelPackageError(f"{where}: calibration has unknown fields {', '.join(unknown)}; {fix}")
    if not _is_int(section["version"]) or section["version"] != CALIBRATION_VERSION:
        raise ModelPackageError(f"{where}: calibration version {section['version']!r}, this vae_infer reads "
                                f"{CALIBRATION_VERSION}; calibrate the model again")
    n = section["examples"]
    if not _is_int(n) or n < MIN_CALIBRATION_IMAGES:
        raise bad(".examples", f"an integer >= {MIN_CALIBRATION_IMAGES}", n)
    if not _is_number(section["quantile"]) or not 0.0 < section["quantile"] < 1.0:
        raise bad(".quantile", "a number strictly between 0 and 1", section["quantile"])
    thresholds = section["thresholds"]
    if not isinstance(thresholds, dict) or not thresholds:
        raise bad(".thresholds", "an object of score kind -> number", thresholds)
    for kind, value in thresholds.items():
        if kind not in SCORE_KINDS:
            raise bad(".thresholds", f"keyed by score kinds ({', '.join(SCORE_KINDS)})", kind)
        if not _is_number(value):
            raise bad(f".thresholds.{kind}", "a finite number", value)
    if not isinstance(section["default_kind"], str) or section["default_kind"] not in thresholds:
        raise bad(".default_kind", f"one of the calibrated kinds ({', '.join(thresholds)})", section["default_kind"])
    samples = section.get("samples", {})
    if not isinstance(samples, dict):
        raise bad(".samples", "an object of score kind -> draws", samples)
    for kind, k in samples.items():
        if kind not in SCORE_KINDS:
            raise bad(".samples", f"keyed by score kinds ({', '.join(SCORE_KINDS)})", kind)
        if not _is_int(k) or not 1 <= k <= MAX_CALIBRATION_SAMPLES:
            raise bad(f".samples.{kind}", f"an integer from 1 to {MAX_CALIBRATION_SAMPLES}", k)
    seed = section.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise bad(".seed", "a non-negative integer or null", seed)
    for key in ("source", "variant"):
        if section.get(key) is not None and not isinstance(section[key], str):
            raise bad(f".{key}", "a string or null", section[key])
    if not isinstance(section["reference_file"], str) or not section["reference_file"]:
        raise bad(".reference_file", "a file name", section["reference_file"])
    if "dose" in thresholds or "dose" in section:
        _validate_dose(section.get("dose"), bad)
    if arrays is not None:
        _validate_calibration_arrays(section, arrays, f"{where}: calibration ({section['reference_file']})", fix)


def _validate_dose(dose: object, bad) -> None:
    d = len(DOSE_STATISTICS)
    if not isinstance(dose, dict) or sorted(map(str, dose)) != sorted(DOSE_KEYS):
        raise bad(".dose", f"an object with {', '.join(DOSE_KEYS)}", dose)
    if dose["statistics"] != list(DOSE_STATISTICS):
        raise bad(".dose.statistics", f"{list(DOSE_STATISTICS)}", dose["statistics"])
    for key, positive in (("mean", False), ("std", True)):
        v = dose[key]
        if not (isinstance(v, list) and len(v) == d and all(_is_number(a) and (a > 0 or not positive) for a in v)):
            raise bad(f".dose.{key}", f"a list of {d} finite numbers{' > 0' if positive else ''}", v)
    if not _is_number(dose["bandwidth"]) or not 1e-6 <= dose["bandwidth"] <= 1e6:
        raise bad(".dose.bandwidth", "a number from 1e-6 to 1e6", dose["bandwidth"])
    if dose["kernel"] != "gaussian":
        raise bad(".dose.kernel", "'gaussian'", dose["kernel"])


def _validate_calibration_arrays(section: dict, arrays: Mapping[str, np.ndarray], where: str, fix: str) -> None:
    n, d = section["examples"], len(DOSE_STATISTICS)
    expected: dict[str, tuple[int, ...]] = {f"scores_{k}": (n,) for k in section["thresholds"]}
    if "dose" in section["thresholds"]:
        expected["dose_statistics"] = (n, d)
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise ModelPackageError(f"{where} holds arrays the calibration does not list: {', '.join(unknown)}; {fix}")
    for name, shape in expected.items():
        a = arrays.get(name)
        if a is None:
            raise ModelPackageError(f"{where} lacks the array {name} ({' x '.join(map(str, shape))} floats); {fix}")
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != shape:
            found = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ModelPackageError(f"{where}: {name} must be floats shaped {shape} (examples = {n}), found {found}; "
                                    f"{fix}")
        if not np.isfinite(a).all():
            raise ModelPackageError(f"{where}: the array {name} holds NaN or inf; {fix}")


def check_calibration_file(section: object, data: bytes, package_dir: str) -> dict[str, NDArray]:
    """The calibration section and its (verified) arrays file, checked as validate_calibration does; the package
    loader calls it, so a bad calibration (a NaN score among them) is refused when the package loads."""
    validate_calibration(section, where=f"{package_dir}/model.json")
    assert isinstance(section, dict), "validate_calibration refuses anything but an object"
    arrays = load_calibration_arrays(data, f"{package_dir}/{section['reference_file']}")
    validate_calibration(section, arrays, where=f"{package_dir}/model.json")
    return arrays


def load_calibration_arrays(data: bytes, where: str) -> dict[str, NDArray]:
    """The arrays of calibration.npz from its (verified) bytes, read with bounds: numeric .npy members only,
    at most MAX_CALIBRATION_BYTES unpacked, each member's header checked against its size before reading.
    Anything else is a ModelPackageError naming `where`."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if sum(i.file_size for i in infos) > MAX_CALIBRATION_BYTES:
                raise ModelPackageError(f"{where}: unpacks to more than {MAX_CALIBRATION_BYTES >> 20} MiB; "
                                        f"expected calibration scores of a few MB")
            out = {}
            for info in infos:
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ModelPackageError(f"{where}: {info.filename} has .npy format {version}; expected 1.0")
                    head = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = head(f)
                    if dtype.hasobject or dtype.names is not None:
                        raise ModelPackageError(f"{where}: {info.filename} holds {dtype}; expected float arrays")
                    if math.prod(shape) * dtype.itemsize > info.file_size:
                        raise ModelPackageError(f"{where}: {info.filename} declares shape {shape}, more than it "
                                                f"holds; the file is truncated or corrupt")
                with zf.open(info) as f:
                    out[info.filename.removesuffix(".npy")] = fmt.read_array(f, allow_pickle=False)
            return out
    except VaeInferError:
        raise
    except Exception as e:  # zipfile and numpy report bad bytes in many ways (BadZipFile, zlib, EOF, Value...)
        raise ModelPackageError(f"{where}: cannot read the calibration arrays (corrupt or truncated): "
                                f"{type(e).__name__}: {e}") from e


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False
