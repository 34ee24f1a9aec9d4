"""The latent map of a model package: the latent means of a sample of a data set, with their class labels, for
drawing the latent space (the explorer page, the README's picture).

    from vae_infer.interpolation.latent_map import read_latent_map
    m = read_latent_map(model)      # LatentMap(codes, labels, class_names, source)
    m.codes                         # (n, latent_size) float32, finite
    m.labels                        # (n,) int64 in 0..len(class_names) - 1, or None when the data had no labels
    m.class_names                   # tuple of str (empty without labels)
    m.projection                    # Projection(mean, components, points) when latent_size > 2, else None

A latent of more than 2 dimensions is drawn through a 2-D PCA projection of the codes, stored with the map:
`mean` (latent_size,), `components` W (latent_size, 2) with orthonormal columns (the two principal directions,
largest variance first), and `points` (n, 2) = (codes - mean) @ W. A point p on the drawing stands for the code
mean + W @ p, the point of the PCA plane under it. 1-D and 2-D latents are drawn as they are (no projection).

Stored as `latent_map.npz` (arrays `codes`, when labelled `labels`, and for latents over 2-D `pca_mean`,
`pca_components` and `pca_points`; no pickles) and the `latent_map` section of model.json: {"file", "format",
"points", "latent_size", "class_names", "labelled", "projection" ("pca" or null), "source", "seed", "bytes"},
the file listed with its sha256. `vae-infer index build` writes it beside the latent index; reading verifies the
sha256, the format, every array's shape and dtype, finiteness, the label range and the section's counts, and
refuses anything else with a ModelPackageError that says how to rebuild it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, ModelPackageError

MAP_FILE = "latent_map.npz"
MAP_FORMAT = 1
DEFAULT_POINTS = 10_000
PLANE = 2  # the drawing's dimensions: latents larger than this are projected
PCA_TOLERANCE = 1e-4  # |W^T W - I| and |points - (codes - mean) @ W| / max(1, |point|) a stored projection may show


class Projection(NamedTuple):
    mean: NDArray[np.float32]  # (latent_size,)
    components: NDArray[np.float32]  # (latent_size, 2): W, orthonormal columns
    points: NDArray[np.float32]  # (n, 2) = (codes - mean) @ W

    def lift(self, p: NDArray) -> NDArray[np.float32]:
        """The codes mean + W @ p of plane points p (..., 2): the PCA plane's points under them."""
        return (self.mean + np.asarray(p, np.float64) @ self.components.T.astype(np.float64)).astype(np.float32)


def pca_projection(codes: NDArray) -> Projection:
    """The 2-D PCA projection of codes (n, d), d > 2: the mean, the two directions of largest variance (from the
    eigenvectors of the d x d scatter matrix, so n never enters the cost beyond one pass), each signed so that its
    largest entry is positive (the same codes always give the same drawing)."""
    x = np.asarray(codes, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    w = vectors[:, ::-1][:, :PLANE].copy()  # (d, 2), largest variance first
    w *= np.where(w[np.abs(w).argmax(axis=0), range(PLANE)] < 0, -1.0, 1.0)
    mean32, w32 = mean.astype(np.float32), w.astype(np.float32)
    points = ((x - mean32.astype(np.float64)) @ w32.astype(np.float64)).astype(np.float32)
    return Projection(mean32, w32, points)


class LatentMap(NamedTuple):
    codes: NDArray[np.float32]  # (n, latent_size)
    labels: NDArray[np.int64] | None  # (n,) or None
    class_names: tuple[str, ...]  # names of labels 0..; () without labels
    source: str | None  # where the images came from
    projection: Projection | None = None  # the 2-D PCA drawing of a latent over 2-D; None for 1-D and 2-D


def build_latent_map(model, images: object, labels: object | None = None,
                     class_names: tuple[str, ...] | list[str] | None = None, points: int = DEFAULT_POINTS,
                     seed: int = 0, source: str | None = None) -> LatentMap:
    """Encode a seeded random sample of `points` images (all of them when there are fewer) to their latent means.

    images: (n, features) or (n, h, w), uint8 or floats in [0, 1]. labels: (n,) integers, or None. class_names:
    the names of labels 0..; default "0", "1", ... up to the largest label."""
    from ..inputs import as_count, as_seed

    points = as_count(points, "points")
    arr = np.asarray(images)
    if arr.ndim not in (2, 3):
        model.as_images(arr)  # raises the usual shape error
    n = len(arr)
    if n == 0:
        raise InputError("a latent map needs at least one image, got none")
    rng = np.random.default_rng(as_seed(seed))
    pick = np.sort(rng.choice(n, points, replace=False)) if n > points else np.arange(n)
    codes = model.encode(arr[pick])[0]  # encode converts and runs in chunks of model.chunk_size itself
    lab = None
    names: tuple[str, ...] = ()
    if labels is not None:
        all_labels = np.asarray(labels)
        if all_labels.shape != (n,) or not np.issubdtype(all_labels.dtype, np.integer):
            raise InputError(f"labels: expected ({n},) integers, one per image, got {all_labels.dtype} "
                             f"{all_labels.shape}")
        lab = all_labels[pick].astype(np.int64)
        if lab.min() < 0:
            raise InputError(f"labels: expected integers >= 0, found {int(lab.min())}")
        names = tuple(str(c) for c in class_names) if class_names is not None else tuple(
            str(i) for i in range(int(all_labels.max()) + 1))
        if lab.max() >= len(names):
            raise InputError(f"labels: found label {int(lab.max())} but only {len(names)} class names")
    projection = pca_projection(codes) if codes.shape[1] > PLANE else None
    result = LatentMap(codes, lab, names, source, projection)
    _check(result, model.latent_size, "latent map", InputError)
    return result


def to_bytes(latent_map: LatentMap) -> bytes:
    buf = io.BytesIO()
    arrays = {"format": np.int32(MAP_FORMAT), "codes": latent_map.codes}
    if latent_map.labels is not None:
        arrays["labels"] = latent_map.labels
    if latent_map.projection is not None:
        arrays.update(pca_mean=latent_map.projection.mean, pca_components=latent_map.projection.components,
                      pca_points=latent_map.projection.points)
    np.savez(buf, **arrays)
    return buf.getvalue()


def manifest_section(latent_map: LatentMap, file_name: str = MAP_FILE, seed: int | None = None) -> dict[str, Any]:
    return {"file": file_name, "format": MAP_FORMAT, "points": int(len(latent_map.codes)),
            "latent_size": int(latent_map.codes.shape[1]), "class_names": list(latent_map.class_names),
            "labelled": latent_map.labels is not None,
            "projection": "pca" if latent_map.projection is not None else None, "source": latent_map.source,
            "seed": seed}


def save_latent_map(package_dir: str | Path, latent_map: LatentMap, seed: int | None = None,
                    file_name: str = MAP_FILE):
    """Store the map in a model package (atomically, with its sha256 in model.json); returns the new manifest."""
    from ..package.files import update_package

    data = to_bytes(latent_map)
    section = manifest_section(latent_map, file_name, seed)
    section["bytes"] = len(data)
    return update_package(package_dir, {file_name: data}, latent_map=section)


def read_latent_map(model) -> LatentMap:
    """The latent map stored in a loaded model's package, sha256-checked and validated."""
    from ..package.files import read_verified

    section = model.manifest.latent_map
    rebuild = f"rebuild it with `vae-infer index build {model.path} --data DATASET`"
    if not section:
        raise ModelPackageError(f"{model.path}: model.json has no latent_map section; {rebuild}")
    if not isinstance(section, dict):
        raise ModelPackageError(f"{model.path}: the latent_map section is {type(section).__name__}, expected an "
                                f"object; {rebuild}")
    name = section.get("file")
    if not isinstance(name, str) or name not in model.manifest.files:
        raise ModelPackageError(f"{model.path}: latent_map names the file {name!r}, which model.json does not list")
    data = read_verified(model.path, model.manifest, name)
    return parse_latent_map(data, section, model.latent_size, str(Path(model.path) / name), rebuild)


def parse_latent_map(data: bytes, section: dict, latent_size: int, origin: str, rebuild: str) -> LatentMap:
    """The map in a (verified) latent_map.npz, checked against its model.json section and a model whose latent has
    `latent_size` dimensions: every array's shape, dtype and finiteness, the labels' range, the section's counts.
    The package loader calls it too, so a bad map is refused when the package loads."""
    names = section.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise ModelPackageError(f"{origin}: class_names in model.json is {names!r}, expected a list of strings; "
                                f"{rebuild}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except Exception as e:  # numpy raises several types for a corrupt or pickled file
        raise ModelPackageError(f"{origin}: expected a numpy .npz of map arrays, cannot read it: {e}; {rebuild}") from e
    if "codes" not in arrays or "format" not in arrays:
        raise ModelPackageError(f"{origin}: expected arrays format and codes, found {sorted(arrays)}; {rebuild}")
    if (arrays["format"].shape != () or arrays["format"].dtype.kind not in "iu"
            or int(arrays["format"]) != MAP_FORMAT):
        raise ModelPackageError(f"{origin}: map format {arrays['format']!r}, this vae_infer reads {MAP_FORMAT}; "
                                f"{rebuild}")
    nonfinite = sorted(key for key, arr in arrays.items() if arr.dtype.kind in "fc" and not np.isfinite(arr).all())
    if nonfinite:
        raise ModelPackageError(f"{origin} is malformed: the array(s) {', '.join(nonfinite)} hold NaN or inf; "
                                f"{rebuild}")
    pca = [key for key in PCA_ARRAYS if key in arrays]
    if pca and len(pca) != len(PCA_ARRAYS):
        raise ModelPackageError(f"{origin}: expected all of {', '.join(PCA_ARRAYS)} or none, found only "
                                f"{', '.join(pca)}; {rebuild}")
    projection = Projection(*(arrays[key] for key in PCA_ARRAYS)) if pca else None
    result = LatentMap(arrays["codes"], arrays.get("labels"), tuple(names), section.get("source"), projection)
    _check(result, latent_size, origin, ModelPackageError, rebuild)
    problems = []
    # a map written before projections were stored has no "projection" key: drawn with a PCA made when read
    said = section.get("projection")
    if said not in (None, "pca") or (said == "pca") != (projection is not None) or (
            said == "pca" and latent_size <= PLANE):
        problems.append(f"model.json says projection={said!r} for a {latent_size}-D latent, the file "
                        f"{'holds' if projection is not None else 'has no'} PCA arrays (expected \"pca\" with "
                        f"them for a latent over {PLANE}-D, else null without them)")
    if section.get("points") != len(result.codes):
        problems.append(f"model.json says {section.get('points')!r} points, the file holds {len(result.codes)}")
    if bool(section.get("labelled")) != (result.labels is not None):
        problems.append(f"model.json says labelled={section.get('labelled')!r}, the file "
                        f"{'holds' if result.labels is not None else 'has no'} labels")
    if problems:
        raise ModelPackageError(f"{origin} does not match model.json: " + "; ".join(problems) + f"; {rebuild}")
    return result


def _check(m: LatentMap, latent_size: int, origin: str, error: type, rebuild: str = "") -> None:
    """Shapes, dtypes, finiteness and the label range."""
    problems = []
    codes, labels = m.codes, m.labels
    if codes.dtype != np.float32 or codes.ndim != 2 or codes.shape[1:] != (latent_size,) or len(codes) == 0:
        problems.append(f"codes are {codes.dtype} {codes.shape}, expected float32 (n >= 1, {latent_size})")
    elif not np.isfinite(codes).all():
        problems.append("codes hold NaN or inf")
    if labels is not None:
        if labels.dtype != np.int64 or labels.shape != (len(codes),):
            problems.append(f"labels are {labels.dtype} {labels.shape}, expected int64 ({len(codes)},)")
        elif len(labels) and (labels.min() < 0 or labels.max() >= len(m.class_names)):
            problems.append(f"labels range over {int(labels.min())}..{int(labels.max())}, expected "
                            f"0..{len(m.class_names) - 1} ({len(m.class_names)} class names)")
    if m.projection is not None and not problems:
        problems += _projection_problems(m.projection, codes)
    if problems:
        raise error(f"{origin} is malformed: " + "; ".join(problems) + (f"; {rebuild}" if rebuild else ""))


PCA_ARRAYS = ("pca_mean", "pca_components", "pca_points")


def _projection_problems(p: Projection, codes: NDArray) -> list[str]:
    """A stored projection must be the one its codes give: shapes and dtypes, W orthonormal, points on it."""
    n, d = codes.shape
    want = {"pca_mean": (d,), "pca_components": (d, PLANE), "pca_points": (n, PLANE)}
    bad = [f"{key} is {arr.dtype} {arr.shape}, expected float32 {want[key]}"
           for key, arr in zip(PCA_ARRAYS, p, strict=True) if arr.dtype != np.float32 or arr.shape != want[key]]
    if bad:
        return bad
    if not all(np.isfinite(arr).all() for arr in p):
        return ["the PCA arrays hold NaN or inf"]
    w = p.components.astype(np.float64)
    gram = float(np.abs(w.T @ w - np.eye(PLANE)).max())
    if gram > PCA_TOLERANCE:
        return [f"pca_components are not orthonormal (|W^T W - I| = {gram:.3g} > {PCA_TOLERANCE})"]
    on_plane = (codes.astype(np.float64) - p.mean.astype(np.float64)) @ w
    off = float((np.abs(on_plane - p.points) / np.maximum(1.0, np.abs(on_plane))).max())
    if off > PCA_TOLERANCE:
        return [f"pca_points differ from (codes - pca_mean) @ pca_components by {off:.3g} (> {PCA_TOLERANCE})"]
    return []
