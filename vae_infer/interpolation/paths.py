"""Interpolation through the latent space: linear, spherical (slerp), and graph-based; and path metrics.

    codes = interpolate_codes(model, z_a, z_b, steps=10, method="graph")  # (steps, latent) float32
    path = model.interpolate(image_a, image_b, steps=10, method="graph")    # (steps, features), decoded
    info = model.path_metrics(codes, reference=train_images)              # per frame and summarised

method="linear" follows the straight line between the two codes, "slerp" the spherical arc (great-circle
direction, norm interpolated), and "graph" a shortest path through the latent graph index stored in the model
package (interpolation.index, built by interpolation.build, searched by interpolation.search):

1. The nodes are codes of real training images that decode well. Each endpoint attaches to its nearest nodes;
   A* (or Dijkstra) finds the path of least weight, an edge weighing the chordal distance between the unit-length
   decoded images of its ends (change of shape, not of brightness) times a realism cost from the index's cost
   field (cosine distance of decoded images to the nearest real image nearby, with a penalty for faint ones) at
   both ends and the midpoint, raised to realism_weight; nodes fainter than fade_floor times the dimmer endpoint
   weigh more still, so the path does not fade through ghosts.
2. Refinement (vae_infer.interpolation.refine.relax): the path, resampled to `refine_points` codes, is moved to minimise
   sum_i c_i ** (2 realism_weight) * ||u(z[i+1]) - u(z[i])||^2 (u: the unit-length decoded image, c: the cost
   field), which shortens it in the decoder's metric while keeping it where decoded images look real. A step
   that would take a point fainter than the searched path's faintest (or than 0.85 of the endpoints' blend), or
   where the cost field is higher than anywhere on the searched path, is refused: the refinement may not cut
   through faint regions nor leave the data.
3. Every method's path is resampled to `steps` codes at equal arc length of the decoded images in data space
   (spacing="data", the default), so the steps look even; spacing="latent" gives equal latent steps. A graph
   path's frame that would land on a faint image (where the path must cross between two garments) moves along
   the path by up to 0.45 of a step to a brighter place: the path stays the same, the frames step over the
   crossing.

The first and last codes are always exactly z_a and z_b (for images: their latent means mu).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..inputs import as_array, as_latents, check_output_rows
from ..work_limits import (
    MAX_ATTACH,
    MAX_FINE,
    MAX_REFINE_ITERATIONS,
    MAX_REFINE_POINTS,
    MAX_STEPS,
    check_at_most,
)
from .realism import Reference, brightness_ratio, unit_rows
from .refine import REFINE_ITERATIONS, relax

METHODS = ("linear", "slerp", "graph")
SPACINGS = ("data", "latent")
FINE = 16  # subdivisions per segment when a path is decoded finely (arc length, length metric)
REFINE_POINTS = 32
REFINE_FLOOR = 0.85  # refinement keeps every point's brightness ratio above this (or the searched path's) ...
FADE_SLACK = 0.02  # ... less this
SNAP_BELOW = 0.9  # a graph path's frame fainter than this (brightness ratio) ...
SNAP_REACH = 0.45  # ... may move along the path by up to this fraction of a step (probed at SNAP_PROBES places
SNAP_PROBES = 4  # on each side) to a brighter place

__all__ = ["METHODS", "SPACINGS", "Reference", "interpolate", "interpolate_codes", "linear_codes", "path_metrics",
           "relax", "resample", "slerp_codes", "subdivide"]


# -- inputs ---------------------------------------------------------------------------------------------------


def _one_image(model, image: object, name: str) -> NDArray[np.float32]:
    """One image as a (1, features) row: accepts (h, w), (features,), or a batch of one of either."""
    try:
        arr = as_array(image, "images")
    except InputError as e:
        raise InputError(f"{name}: {e}") from e
    shape = tuple(model.image_shape)  # (h, w) gray or (h, w, c) colour
    features = int(np.prod(shape))
    one = f"{shape}".replace(",)", ")")
    if arr.shape in (shape, (features,)):
        arr = arr[None]
    elif len(shape) == 2 and arr.ndim == 3 and arr.shape[:2] == shape and arr.shape[2] in (3, 4):
        raise InputError(f"{name}: expected one grayscale image shaped {one} or ({features},), got {arr.shape} "
                         f"(colour channels?); convert it to gray first")
    rows_fit = (arr.ndim == 2 and arr.shape[1] == features) or (arr.ndim == len(shape) + 1 and arr.shape[1:] == shape)
    if not rows_fit and arr.ndim in (2, len(shape) + 1) and len(arr) == 1:
        return model.as_images(arr)  # a batch of one of the wrong size: the model's own shape message
    if not rows_fit:  # one image of another size (29 x 29), or something else: not a count of images
        raise InputError(f"{name}: expected one image shaped {one} or ({features},) or a batch of one, "
                         f"got an array shaped {arr.shape}")
    if arr.shape[0] != 1:
        raise InputError(f"{name}: expected one image shaped {one} or ({features},) or a batch of one, "
                         f"got {arr.shape[0]} images {arr.shape}")
    return model.as_images(arr)


def _steps(steps: object, model) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise InputError(f"steps must be an integer >= 2 (the path includes both endpoints), got {steps!r}")
    check_at_most(int(steps), MAX_STEPS, "steps", "points of one path")
    check_output_rows(int(steps), model.manifest.features, "interpolate")  # the frames are decoded
    return int(steps)


def _code(model, z: object, name: str) -> NDArray[np.float32]:
    """One latent code as a (latent_size,) float32 vector: accepts (latent_size,) or (1, latent_size)."""
    arr = as_array(z, f"{name} (a latent code)")
    d = model.latent_size
    if arr.shape not in ((d,), (1, d)):
        raise InputError(f"{name}: expected one latent code shaped ({d},) or (1, {d}), got {arr.shape}")
    try:
        return as_latents(arr.reshape(1, d), d)[0]
    except InputError as e:
        raise InputError(f"{name}: {e}") from e


# -- latent paths -------------------------------------------------------------------------------------------------


def linear_codes(za: NDArray, zb: NDArray, n: int) -> NDArray[np.float32]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    out = (1 - t) * za[None].astype(np.float64) + t * zb[None].astype(np.float64)
    out[0], out[-1] = za, zb
    return out.astype(np.float32)


def slerp_codes(za: NDArray, zb: NDArray, n: int) -> NDArray[np.float32]:
    """Spherical interpolation: the direction turns at constant angular speed on the great circle through both
    codes (in their plane) while the norm changes linearly. Antipodal codes turn counter-clockwise in 2-D (the
    arc is otherwise ambiguous); a zero code falls back to the straight line."""
    a, b = za.astype(np.float64), zb.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    t = np.linspace(0.0, 1.0, n)[:, None]
    if na < 1e-12 or nb < 1e-12:
        return linear_codes(za, zb, n)
    ua, ub = a / na, b / nb
    cos = float(np.clip(ua @ ub, -1.0, 1.0))
    omega = math.acos(cos)
    if omega < 1e-6:
        dirs = np.repeat(ua[None], n, axis=0)
    else:
        perp = ub - cos * ua
        if np.linalg.norm(perp) < 1e-9:  # antipodal: pick a perpendicular
            perp = np.array([-ua[1], ua[0]] + [0.0] * (len(ua) - 2)) if len(ua) >= 2 else np.zeros_like(ua)
        perp /= np.linalg.norm(perp)
        ang = t * omega
        dirs = np.cos(ang) * ua[None] + np.sin(ang) * perp[None]
    out = dirs * ((1 - t) * na + t * nb)
    out[0], out[-1] = za, zb
    return out.astype(np.float32)


def subdivide(codes: NDArray, per: int = FINE) -> NDArray[np.float32]:
    """Each segment of a latent polyline split into `per` equal parts: (per * (n - 1) + 1, d)."""
    z = np.asarray(codes, dtype=np.float64)
    t = (np.arange(per) / per)[None, :, None]
    seg = z[:-1, None] + t * (z[1:] - z[:-1])[:, None]
    return np.concatenate([seg.reshape(-1, z.shape[1]), z[-1:]]).astype(np.float32)


def resample(codes: NDArray, points: NDArray, n: int) -> NDArray[np.float32]:
    """n codes at equal arc length of the polyline through `points` (e.g. the decoded codes), interpolating the
    latent codes linearly between the given ones; the ends are kept exactly."""
    s = _arc(points)
    z = np.asarray(codes, dtype=np.float64)
    if s[-1] <= 0:
        return linear_codes(z[0], z[-1], n)
    out = _at_arc(z, s, np.linspace(0.0, s[-1], n))
    out[0], out[-1] = z[0], z[-1]
    return out.astype(np.float32)


def _arc(points: NDArray) -> NDArray[np.float64]:
    """Cumulative arc length along a polyline of points, starting at 0."""
    seg = np.linalg.norm(np.diff(np.asarray(points, dtype=np.float64), axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _at_arc(z: NDArray, s: NDArray, t: NDArray) -> NDArray[np.float64]:
    """The codes at arc lengths t along the polyline z whose cumulative arc lengths are s."""
    j = np.clip(np.searchsorted(s, t, side="right") - 1, 0, len(s) - 2)
    span = s[j + 1] - s[j]
    f = np.where(span > 0, (t - s[j]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    return z[j] + f * (z[j + 1] - z[j])


def _snap(model, codes: NDArray, points: NDArray, n: int, info: dict) -> NDArray[np.float32]:
    """n codes at about equal arc length of the polyline through `points`, each interior one moved by up to
    SNAP_REACH of a step when that keeps it from landing on a faint frame: a frame whose brightness ratio
    (over the endpoints' blend at its position) is below SNAP_BELOW goes to the nearest brighter place within
    reach that is at least SNAP_BELOW, or else the brightest. The path is unchanged; only where its frames fall
    on it: where it must cross between two garments, the frames step over the crossing instead of showing it."""
    s = _arc(points)
    z = np.asarray(codes, dtype=np.float64)
    even = resample(codes, points, n)
    if n < 3 or s[-1] <= 0:
        return even
    step = s[-1] / (n - 1)
    offsets = np.linspace(-SNAP_REACH, SNAP_REACH, 2 * SNAP_PROBES + 1)
    t = np.linspace(0.0, s[-1], n)[1:-1, None] + offsets[None] * step
    candidates = _at_arc(z, s, t.reshape(-1)).astype(np.float32)
    ends = model.decode(even[[0, -1]]).astype(np.float64).mean(1)
    pos = np.linspace(0.0, 1.0, n)[1:-1, None]
    blend = (1 - pos) * ends[0] + pos * ends[1]
    ratio = model.decode(candidates).astype(np.float64).mean(1).reshape(t.shape) / np.maximum(blend, 1e-12)
    out = even.copy()
    moved = 0
    for i in range(n - 2):
        r = ratio[i]
        if r[SNAP_PROBES] >= SNAP_BELOW:
            continue
        ok = np.flatnonzero(r >= SNAP_BELOW)
        k = ok[np.argmin(np.abs(ok - SNAP_PROBES))] if len(ok) else int(np.argmax(r))
        if r[k] > r[SNAP_PROBES]:
            out[i + 1] = candidates.reshape(t.shape + (-1,))[i, k]
            moved += 1
    info["frames_snapped"] = moved
    return out


# -- the public functions ---------------------------------------------------------------------------------------


def interpolate_codes(model, z_a: object, z_b: object, steps: int = 10, method: str = "linear", *,
                      spacing: str = "data", search: str | None = None, realism_weight: float | None = None,
                      refine: bool | None = None, refine_points: int | None = None,
                      refine_iterations: int | None = None, attach: int | None = None,
                      fade_floor: float | None = None, fade_weight: float | None = None,
                      info: dict | None = None) -> NDArray[np.float32]:
    """Latent codes along a path from code z_a to code z_b: (steps, latent_size) float32, z_a first, z_b last.

    z_a, z_b: latent codes shaped (latent_size,) or (1, latent_size), finite.
    method: "linear", "slerp" or "graph" (needs the package's latent index: `vae-infer index build`).
    spacing: "data" (default) puts the codes at equal arc length of their decoded images (Euclidean, in data
    space); "latent" at equal latent steps.
    Graph options (refused with another method, which would ignore them): search ("astar", the default, or
    "dijkstra"), realism_weight (exponent of the cost field in edge weights and refinement; default the index's),
    refine (relax the path after the search; default True), refine_points (default 32), refine_iterations
    (default 6), attach (nodes each endpoint attaches to; default the index's k), fade_floor and fade_weight
    (the penalty on nodes fainter than fade_floor times the dimmer endpoint; 0 turns it off).
    info: a dict to fill with details (graph nodes on the path, search weight, refinement energies).
    Maxima (vae_infer.work_limits), checked before any work: steps <= MAX_STEPS (256), refine_points <=
    MAX_REFINE_POINTS (256), refine_iterations <= MAX_REFINE_ITERATIONS (100), attach <= MAX_ATTACH (256).
    Raises InputError for bad input (including z_a == z_b: there is no path between a code and itself)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    graph_options = {"search": search, "realism_weight": realism_weight, "refine": refine,
                     "refine_points": refine_points, "refine_iterations": refine_iterations, "attach": attach,
                     "fade_floor": fade_floor, "fade_weight": fade_weight}
    given = [name for name, value in graph_options.items() if value is not None]
    if method != "graph" and given:
        raise InputError(f"{', '.join(given)}: options of method='graph' only, which method={method!r} would "
                         f"ignore; leave them out or use method='graph'")
    if spacing not in SPACINGS:
        raise InputError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    steps = _steps(steps, model)
    za, zb = _code(model, z_a, "z_a"), _code(model, z_b, "z_b")
    if np.array_equal(za, zb):
        raise InputError(
            "the two endpoints have the same latent code (identical or indistinguishable images), so there is "
            "no path between them; pass two different images or codes"
        )
    info = {} if info is None else info
    info["method"] = method
    if method == "graph":
        return _graph_codes(model, za, zb, steps, spacing, info, search=search or "astar",
                            realism_weight=realism_weight, refine=True if refine is None else refine,
                            refine_points=REFINE_POINTS if refine_points is None else refine_points,
                            refine_iterations=REFINE_ITERATIONS if refine_iterations is None else refine_iterations,
                            attach=attach, fade_floor=fade_floor, fade_weight=fade_weight)
    make = linear_codes if method == "linear" else slerp_codes
    if spacing == "latent":
        return make(za, zb, steps)
    return resample(*_fine_points(model, make(za, zb, 65)), steps)


def interpolate(model, image_a: object, image_b: object, steps: int = 10, method: str = "linear", *,
                return_codes: bool = False, **options):
    """Decoded images along a latent path from image_a to image_b: (steps, features) float32 in [0, 1].

    The path runs between the two images' latent means (interpolate_codes, whose options and maxima it takes:
    spacing, search, realism_weight, refine, refine_points, refine_iterations, attach, fade_floor, fade_weight,
    info; steps <= MAX_STEPS, 256).
    return_codes: also return the latent codes, as (images, codes)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    steps = _steps(steps, model)
    xa, xb = _one_image(model, image_a, "image_a"), _one_image(model, image_b, "image_b")
    mu, _ = model.encode(np.concatenate([xa, xb]))
    if np.array_equal(mu[0], mu[1]):
        raise InputError(
            "image_a and image_b have the same latent code (identical or indistinguishable images), so there is "
            "no path between them; pass two different images"
        )
    codes = interpolate_codes(model, mu[0], mu[1], steps=steps, method=method, **options)
    images = model.decode(codes)
    return (images, codes) if return_codes else images


def _fine_points(model, codes: NDArray, per: int = 4) -> tuple[NDArray, NDArray]:
    """The codes subdivided, and their decoded images (where data-space arc length is measured)."""
    fine = subdivide(codes, per)
    return fine, model.decode(fine)


def _faintest(model, codes: NDArray, per: int = 4) -> float:
    """The smallest brightness ratio along a path, decoded finely (`per` points per segment)."""
    return float(brightness_ratio(model.decode(subdivide(codes, per) if per > 1 else codes)).min())


def _graph_codes(model, za, zb, steps, spacing, info, *, search, realism_weight, refine, refine_points,
                 refine_iterations, attach, fade_floor, fade_weight) -> NDArray[np.float32]:
    from ..inputs import as_count
    from .search import DEFAULT_FADE_FLOOR, DEFAULT_FADE_WEIGHT, load_graph

    if attach is not None:
        attach = check_at_most(as_count(attach, "attach"), MAX_ATTACH, "attach", "graph nodes per endpoint")
    if refine:
        refine_points = check_at_most(as_count(refine_points, "refine_points"), MAX_REFINE_POINTS, "refine_points",
                                      "points of a refined path")
        if refine_points < 3:
            raise InputError(f"refine_points must be >= 3, got {refine_points}")
        refine_iterations = check_at_most(as_count(refine_iterations, "refine_iterations"), MAX_REFINE_ITERATIONS,
                                          "refine_iterations", "Gauss-Newton iterations")
    graph = load_graph(model)
    found = graph.shortest_path(
        za, zb, search=search, realism_weight=realism_weight, attach=attach,
        fade_floor=DEFAULT_FADE_FLOOR if fade_floor is None else fade_floor,
        fade_weight=DEFAULT_FADE_WEIGHT if fade_weight is None else fade_weight)
    info.update({"graph_nodes": found["nodes"], "search_weight": found["weight"], "graph_length": found["length"],
                 "search": search})
    codes = found["codes"]
    q = graph.q if realism_weight is None else float(realism_weight)
    if refine:
        # start from the graph path at equal latent arc length, then relax (the relaxation evens the steps)
        start = resample(codes, codes, refine_points)
        # the refinement may not cut through faint regions or leave the data: no step may take a point of the
        # path below REFINE_FLOOR times the endpoints' blend (or below the searched path's faintest point, if
        # lower), nor where the cost field is higher than anywhere on the searched path
        limit = min(_faintest(model, start, 1), REFINE_FLOOR) - FADE_SLACK
        worst = float(graph.cost_at(start).max()) * (1 + 1e-6)
        last: dict = {}

        def points(z: NDArray) -> NDArray:
            # relax evaluates a trial (its decoded points) and then asks accept about the same codes: decode once
            decoded = model.decode(z)
            last["z"], last["decoded"] = z, decoded
            return unit_rows(decoded)[0] if graph.index.metric == "cosine" else graph.points(z)

        def accept(z: NDArray) -> bool:
            if graph.cost_at(z).max() > worst:
                return False
            decoded = last["decoded"] if last.get("z") is not None and np.array_equal(last["z"], z) else (
                model.decode(z))
            return float(brightness_ratio(decoded).min()) >= limit

        codes, stats = relax(points, start, cost=graph.cost_at, power=2 * q,
                             iterations=refine_iterations, accept=accept)
        info.update({f"refine_{k}": v for k, v in stats.items()})
    if spacing == "latent":
        return resample(codes, codes, steps)
    return _snap(model, *_fine_points(model, codes, 4 if refine else FINE), steps, info)


def _fine(fine: object) -> int:
    if isinstance(fine, bool) or not isinstance(fine, numbers.Integral) or fine < 1:
        raise InputError(f"fine must be an integer >= 1 (parts each segment of a path of codes is split into), "
                         f"got {fine!r}")
    return check_at_most(int(fine), MAX_FINE, "fine", "parts per segment")


def path_metrics(model, path: object, *, reference: object | None = None, fine: int | None = None) -> dict[str, Any]:
    """Length, brightness and realism of a path, per frame and summarised.

    path: latent codes (n, latent size), e.g. from interpolate_codes, or images (n, features) / (n, h, w), n >= 2.
    reference: real images (e.g. the training set) or a vae_infer.interpolation.realism.Reference, for realism.
    fine: with codes, each segment is split into `fine` parts (default 16) and decoded to measure the length
    (integer >= 1, at most MAX_FINE = 64; the decoded points at most 2 GiB, vae_infer.inputs.MAX_OUTPUT_BYTES).
    A path of images is measured as given: fine is refused with one, which would ignore it.

    Returns:
    - "points", "kind" ("codes" or "images");
    - "length": the sum of chordal distances ||u(x[i+1]) - u(x[i])|| (u: the image scaled to unit length, so it
      measures change of shape and is blind to brightness) between successive decoded images of the finely
      subdivided path (with images only: between the given images, a lower bound); "length_l2" the same in
      plain Euclidean distance; "largest_step", "mean_step", "step_evenness" (largest / mean) of the chordal
      steps between the given points;
    - "frames": per frame (n,) arrays: "brightness" (mean pixel value), "brightness_ratio" (over the linear
      blend of the endpoints' brightness at the frame's position), "realism" (cosine distance to the nearest
      reference image; None without reference) and "realism_l2" (Euclidean distance to it; None without);
    - summaries over the interior frames (all frames of a 2-point path): "brightness_ratio_mean",
      "brightness_ratio_min", "faint_share" (share of frames under 0.5), "realism" (mean cosine distance;
      lower is more realistic; None without reference) and "realism_l2" (its Euclidean counterpart, kept for
      comparison: it rewards dim images, see vae_infer.interpolation.realism)."""
    arr = as_array(path, "a path (latent codes or images)")
    if arr.ndim == 2 and arr.shape[1] == model.latent_size and model.latent_size != model.manifest.features:
        fine = FINE if fine is None else _fine(fine)
        codes = as_latents(arr, model.latent_size)
        if len(codes) < 2:
            raise InputError(f"a path needs at least 2 points, got {len(codes)}")
        check_output_rows(fine * (len(codes) - 1) + 1, model.manifest.features, "path_metrics (fine)")
        points = model.decode(codes)
        fine_points = model.decode(subdivide(codes, fine)) if fine > 1 else points
        kind = "codes"
    else:
        if fine is not None:
            raise InputError(f"fine={fine!r} applies to a path of latent codes (it splits their segments); a path of "
                             f"images is measured as given: leave fine out")
        points = model.as_images(arr)
        if len(points) < 2:
            raise InputError(f"a path needs at least 2 points, got {len(points)}")
        fine_points = points
        kind = "images"
    unit, _ = unit_rows(points)
    steps = np.linalg.norm(np.diff(unit.astype(np.float64), axis=0), axis=1)
    fine_unit, _ = unit_rows(fine_points)
    length = float(np.linalg.norm(np.diff(fine_unit.astype(np.float64), axis=0), axis=1).sum())
    length_l2 = float(np.linalg.norm(np.diff(fine_points.astype(np.float64), axis=0), axis=1).sum())
    ratio = brightness_ratio(points)
    inner = slice(1, -1) if len(points) > 2 else slice(None)
    frames: dict[str, Any] = {"brightness": points.astype(np.float64).mean(1), "brightness_ratio": ratio,
                              "realism": None, "realism_l2": None}
    out: dict[str, Any] = {
        "points": len(points), "kind": kind, "length": length, "length_l2": length_l2,
        "largest_step": float(steps.max()), "mean_step": float(steps.mean()),
        "step_evenness": float(steps.max() / max(steps.mean(), 1e-12)),
        "brightness_ratio_mean": float(ratio[inner].mean()), "brightness_ratio_min": float(ratio[inner].min()),
        "faint_share": float((ratio[inner] < 0.5).mean()), "realism": None, "realism_l2": None, "frames": frames,
    }
    if reference is not None:
        ref = reference if isinstance(reference, Reference) else Reference(model, reference)
        near = ref.nearest(points)
        frames["realism"], frames["realism_l2"] = near["cosine"], near["l2"]
        out["realism"] = float(near["cosine"][inner].mean())
        out["realism_l2"] = float(near["l2"][inner].mean())
    return out
