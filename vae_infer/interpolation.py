"""Interpolation between two images through the latent space: linear, spherical (slerp), and graph-based.

    path = model.interpolate(image_a, image_b, steps=10, method="graph")   # (steps, features)
    info = model.path_metrics(path)                                         # length, largest step, realism

method="linear" follows the straight line between the two latent means, "slerp" the spherical arc
(great-circle direction, norm interpolated), and "graph" a shortest path through the latent graph index
stored in the model package (vae_infer.latent_graph), refined afterwards:

1. Each endpoint's code attaches to its nearest graph nodes; networkx's A* (or Dijkstra) finds the
   shortest path between them, edge weight = decoded distance * mean node cost ** realism_weight.
2. Refinement ("relaxation"): the path, resampled to `refine_points` latent points, is moved to minimise
   the discrete energy  sum_i c_i ** p * ||dec(z[i+1]) - dec(z[i])||^2  with p = 2 * realism_weight and c
   the index's cost field (c ~ 1 near realistic decoded images, larger where decoded images look like
   nothing in the data, largest off the data), by damped Gauss-Newton steps whose decoder Jacobians come
   from finite differences in the latent space (two extra decodes per point). The endpoints stay fixed.
   An energy minimiser moves at constant speed, so this shortens the path in data space and keeps it
   where the decoded images are close to real ones.
3. Every method's path is resampled to `steps` points at equal arc length in data space (spacing="data",
   the default), so the steps look even; spacing="latent" gives equal steps in the latent space instead.

The first and last codes are always exactly the two images' latent means (mu).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import InputError

METHODS = ("linear", "slerp", "graph")
SPACINGS = ("data", "latent")
FINE = 16  # subdivisions per segment when a path is decoded finely (arc length, length metric)
REFINE_POINTS = 32
REFINE_ITERATIONS = 6
FD_STEP = 1e-2  # latent finite-difference step for the decoder Jacobian
REALISM_CHUNK = 8192  # reference images per matrix product in realism distances


# -- inputs ---------------------------------------------------------------------------------------------------


def _one_image(model, image: object, name: str) -> NDArray[np.float32]:
    """One image as a (1, features) row: accepts (h, w), (features,), or a batch of one of either."""
    arr = np.asarray(image)
    h, w = model.image_shape
    if arr.shape in ((h, w), (h * w,)):
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[:2] == (h, w) and arr.shape[2] in (3, 4):
        raise InputError(f"{name}: expected one grayscale image shaped ({h}, {w}) or ({h * w},), got {arr.shape} "
                         f"(colour channels?); convert it to gray first")
    if arr.ndim >= 1 and arr.shape[0] != 1 and arr.ndim in (2, 3):
        raise InputError(f"{name}: expected one image shaped ({h}, {w}) or ({h * w},) or a batch of one, "
                         f"got {arr.shape[0]} images {arr.shape}")
    return model.as_images(arr)


def _steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise InputError(f"steps must be an integer >= 2 (the path includes both endpoints), got {steps!r}")
    return int(steps)


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
    seg = np.linalg.norm(np.diff(np.asarray(points, dtype=np.float64), axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    z = np.asarray(codes, dtype=np.float64)
    if s[-1] <= 0:
        return linear_codes(z[0], z[-1], n)
    t = np.linspace(0.0, s[-1], n)
    j = np.clip(np.searchsorted(s, t, side="right") - 1, 0, len(s) - 2)
    span = s[j + 1] - s[j]
    f = np.where(span > 0, (t - s[j]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    out = z[j] + f * (z[j + 1] - z[j])
    out[0], out[-1] = z[0], z[-1]
    return out.astype(np.float32)


# -- refinement ---------------------------------------------------------------------------------------------------


def relax(to_points, codes: NDArray, cost=None, power: float = 0.0, iterations: int = REFINE_ITERATIONS,
          h: float = FD_STEP, tol: float = 1e-4) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Minimise E = sum_i w_i ||x[i+1] - x[i]||^2 over the inner codes, x = to_points(z) (the decoder), w_i the
    mean of cost(z) ** power at the segment's two ends (cost(z, grad=True) -> (values, gradients)).

    Damped Gauss-Newton (Levenberg-Marquardt): each residual s_i (x[i+1] - x[i]) is linearised with
    finite-difference Jacobians of the decoder, so a step solves one small block-tridiagonal system. A step is
    taken only when it lowers E. Returns the codes and {"energy_start", "energy", "iterations"}."""
    z = np.asarray(codes, dtype=np.float64).copy()
    n, d = z.shape
    m = n - 2
    if m < 1:
        return z.astype(np.float32), {"energy_start": 0.0, "energy": 0.0, "iterations": 0}
    weighted = cost is not None and power != 0

    def evaluate(z):
        x = to_points(z.astype(np.float32)).astype(np.float64)
        if weighted:
            c, gc = cost(z, grad=True)
            rho = c**power
            drho = (power * c ** (power - 1))[:, None] * gc  # (n, d)
        else:
            rho, drho = np.ones(n), np.zeros((n, d))
        wbar = 0.5 * (rho[:-1] + rho[1:])
        diff = np.diff(x, axis=0)
        return float((wbar * (diff * diff).sum(1)).sum()), x, drho, wbar, diff

    e, x, drho, wbar, diff = evaluate(z)
    start, lam, done = e, 1e-3, 0
    eye = np.eye(d)
    jac = np.zeros((n, d, x.shape[1]))  # transposed Jacobians, zero at the fixed endpoints
    for it in range(iterations):
        inner = z[1:-1]
        probes = np.concatenate([inner + h * eye[a] for a in range(d)]).astype(np.float32)
        xp = to_points(probes).astype(np.float64).reshape(d, m, -1)
        jac[1:-1] = np.swapaxes((xp - x[None, 1:-1]) / h, 0, 1)  # (m, d, features)
        # The residual of segment i is r_i = s_i (x[i+1] - x[i]) with s_i = sqrt(w_i); its Jacobians are
        # A_i = -s_i J_i + D_i u_i^T (on z_i) and B_i = s_i J_{i+1} + D_i v_i^T (on z_{i+1}), u, v = d s_i.
        s = np.sqrt(wbar)
        u = drho[:-1] / (4 * s[:, None])
        v = drho[1:] / (4 * s[:, None])
        jtj = jac @ np.swapaxes(jac, 1, 2)  # (n, d, d)
        j01 = jac[:-1] @ np.swapaxes(jac[1:], 1, 2)  # J_i^T J_{i+1}
        jda = (jac[:-1] @ diff[:, :, None])[..., 0]  # J_i^T D_i
        jdb = (jac[1:] @ diff[:, :, None])[..., 0]  # J_{i+1}^T D_i
        dd = (diff * diff).sum(1)
        s2 = (s * s)[:, None, None]
        sc = s[:, None, None]
        out = lambda p, q: p[:, :, None] * q[:, None, :]  # noqa: E731  (batched outer product)
        AA = s2 * jtj[:-1] - sc * (out(jda, u) + out(u, jda)) + dd[:, None, None] * out(u, u)
        BB = s2 * jtj[1:] + sc * (out(jdb, v) + out(v, jdb)) + dd[:, None, None] * out(v, v)
        AB = -s2 * j01 - sc * out(jda, v) + sc * out(u, jdb) + dd[:, None, None] * out(u, v)
        ga = -(s * s)[:, None] * jda + (s * dd)[:, None] * u
        gb = (s * s)[:, None] * jdb + (s * dd)[:, None] * v
        H = np.zeros((n, d, n, d))
        g = np.zeros((n, d))
        idx = np.arange(n - 1)
        H[idx, :, idx, :] += AA
        H[idx + 1, :, idx + 1, :] += BB
        H[idx, :, idx + 1, :] += AB
        H[idx + 1, :, idx, :] += np.swapaxes(AB, 1, 2)
        g[:-1] += ga
        g[1:] += gb
        H = H[1:-1, :, 1:-1, :].reshape(m * d, m * d)
        g = g[1:-1].reshape(-1)
        diag = np.diag(H).copy() + 1e-12
        improved = False
        while lam < 1e8:
            step = np.linalg.solve(H + lam * np.diag(diag), -g).reshape(m, d)
            trial = z.copy()
            trial[1:-1] += step
            res = evaluate(trial)
            if res[0] < e:
                gain = (e - res[0]) / max(e, 1e-300)
                z = trial
                e, x, drho, wbar, diff = res
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        done = it + 1
        if not improved or gain < tol:
            break
    return z.astype(np.float32), {"energy_start": start, "energy": e, "iterations": done}


# -- the public functions ---------------------------------------------------------------------------------------


def interpolate(model, image_a: object, image_b: object, steps: int = 10, method: str = "linear", *,
                spacing: str = "data", return_codes: bool = False, search: str = "astar",
                realism_weight: float | None = None, refine: bool = True, refine_points: int = REFINE_POINTS,
                refine_iterations: int = REFINE_ITERATIONS, attach: int | None = None, info: dict | None = None):
    """Decoded images along a latent path from image_a to image_b: (steps, features) float32 in [0, 1].

    method: "linear", "slerp" or "graph" (needs the package's latent index: `vae-infer index build`).
    spacing: "data" (default) puts the steps at equal arc length in data space; "latent" at equal latent steps.
    return_codes: also return the latent codes, as (images, codes).
    Graph options: search ("astar" or "dijkstra"), realism_weight (the exponent q of the cost field in edge
    weights and of refinement, default the index's), refine (relax the path after the search), refine_points,
    refine_iterations, attach (nodes each endpoint attaches to; default the index's k).
    info: a dict to fill with details (graph nodes on the path, search weight, refinement energies)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if spacing not in SPACINGS:
        raise InputError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    steps = _steps(steps)
    xa, xb = _one_image(model, image_a, "image_a"), _one_image(model, image_b, "image_b")
    mu, _ = model.encode(np.concatenate([xa, xb]))
    za, zb = mu[0], mu[1]
    if np.array_equal(za, zb):
        raise InputError(
            "image_a and image_b have the same latent code (identical or indistinguishable images), so there is "
            "no path between them; pass two different images"
        )
    info = {} if info is None else info
    info["method"] = method
    if method == "graph":
        codes = _graph_codes(model, za, zb, steps, spacing, info, search=search, realism_weight=realism_weight,
                             refine=refine, refine_points=refine_points, refine_iterations=refine_iterations,
                             attach=attach)
    else:
        make = linear_codes if method == "linear" else slerp_codes
        if spacing == "latent":
            codes = make(za, zb, steps)
        else:
            codes = resample(*_fine_decoded(model, make(za, zb, 65)), steps)
    images = model.decode(codes)
    return (images, codes) if return_codes else images


def _fine_decoded(model, codes: NDArray) -> tuple[NDArray, NDArray]:
    fine = subdivide(codes, 4)
    return fine, model.decode(fine)


def _graph_codes(model, za, zb, steps, spacing, info, *, search, realism_weight, refine, refine_points,
                 refine_iterations, attach) -> NDArray[np.float32]:
    from .inputs import as_count
    from .latent_graph import load_graph

    graph = load_graph(model)
    if attach is not None:
        attach = as_count(attach, "attach")
    found = graph.shortest_path(za, zb, search=search, realism_weight=realism_weight, attach=attach)
    info.update({"graph_nodes": found["nodes"], "search_weight": found["weight"], "graph_length": found["length"],
                 "search": search})
    codes = found["codes"]
    q = graph.q if realism_weight is None else float(realism_weight)
    if refine:
        refine_points = as_count(refine_points, "refine_points")
        if refine_points < 3:
            raise InputError(f"refine_points must be >= 3, got {refine_points}")
        # start from the graph path at equal latent arc length, then relax (the relaxation evens the steps)
        start = resample(codes, codes, refine_points)
        codes, stats = relax(graph.points, start, cost=graph.cost_at, power=2 * q,
                             iterations=as_count(refine_iterations, "refine_iterations"))
        info.update({f"refine_{k}": v for k, v in stats.items()})
    if spacing == "latent":
        return resample(codes, codes, steps)
    fine = subdivide(codes, 4 if refine else FINE)
    return resample(fine, model.decode(fine), steps)


class Reference:
    """Real images to measure realism against, prepared once (float32 rows and their squared norms)."""

    def __init__(self, model, images: object) -> None:
        arr = np.asarray(images)
        self.images = np.concatenate([model.as_images(arr[s : s + REALISM_CHUNK])
                                      for s in range(0, len(arr), REALISM_CHUNK)]) if len(arr) else model.as_images(arr)
        self.sq = (self.images * self.images).sum(1)

    def __len__(self) -> int:
        return len(self.images)

    def nearest(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Distance from each row of x to its nearest reference image."""
        x = np.asarray(x, dtype=np.float32)
        xsq = (x * x).sum(1)
        best = np.full(len(x), np.inf)
        for s in range(0, len(self.images), REALISM_CHUNK):
            ref = self.images[s : s + REALISM_CHUNK]
            d2 = xsq[:, None] + self.sq[None, s : s + REALISM_CHUNK] - 2.0 * (x @ ref.T)
            best = np.minimum(best, d2.min(1))
        return np.sqrt(np.maximum(best, 0.0))


def path_metrics(model, path: object, *, reference: object | None = None, fine: int = FINE) -> dict[str, Any]:
    """Length in data space, largest step and realism of a path.

    path: latent codes (n, latent size), e.g. from interpolate(..., return_codes=True), or images
    (n, features) / (n, h, w). With codes, the length is measured on a fine resampling: each segment is split
    into `fine` parts, decoded, and the distances between successive decoded images are summed. With images
    only, it is the sum of the distances between the given images (a lower bound: nothing between them is
    known). largest_step: the largest distance between successive points of the path as given (decoded).
    realism (only with reference, real images such as the training set, or a Reference): the mean distance of
    the path's points (decoded) to their nearest reference image; lower is more realistic."""
    arr = np.asarray(path)
    if arr.ndim == 2 and arr.shape[1] == model.latent_size and model.latent_size != model.manifest.features:
        from .inputs import as_latents

        codes = as_latents(arr, model.latent_size)
        if len(codes) < 2:
            raise InputError(f"a path needs at least 2 points, got {len(codes)}")
        points = model.decode(codes)
        fine_points = model.decode(subdivide(codes, fine)) if fine > 1 else points
        kind = "codes"
    else:
        points = model.as_images(arr)
        if len(points) < 2:
            raise InputError(f"a path needs at least 2 points, got {len(points)}")
        fine_points = points
        kind = "images"
    steps = np.linalg.norm(np.diff(points.astype(np.float64), axis=0), axis=1)
    length = float(np.linalg.norm(np.diff(fine_points.astype(np.float64), axis=0), axis=1).sum())
    out = {
        "points": len(points), "kind": kind, "length": length, "largest_step": float(steps.max()),
        "mean_step": float(steps.mean()), "step_evenness": float(steps.max() / max(steps.mean(), 1e-12)),
        "endpoint_distance": float(np.linalg.norm(points[-1].astype(np.float64) - points[0])),
        "realism": None,
    }
    if reference is not None:
        ref = reference if isinstance(reference, Reference) else Reference(model, reference)
        out["realism"] = float(ref.nearest(points).mean())
    return out
