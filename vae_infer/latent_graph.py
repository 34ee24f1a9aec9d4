"""The latent graph index of graph-based interpolation: a k-nearest-neighbour graph over encoded data.

Built from the latent means of a dataset (by default the model's training set):

- Nodes are landmarks: the codes are binned on a regular latent grid (`cell` wide) and each occupied cell
  gives one node, the mean of its codes, so the nodes lie where the data is, evenly spread, and their
  number stays bounded however large the dataset (60,000 Fashion-MNIST codes give about 2,000 nodes).
- Edges join each node to its k nearest nodes (in latent space, made symmetric). An edge's `distance` is,
  by default, the distance between the decoded images of its two nodes (the metric the decoder induces);
  `metric="latent"` uses the latent distance instead.
- Realism: for a 2-D latent and a dataset of images, a grid (`field_cell` wide) holds, for each latent
  point near the data, the distance from its decoded image to the nearest real image among the data whose
  codes lie within `field_radius` cells of it; far from the data it holds the largest such value. Divided
  by its median over the nodes it is the *cost field* c(z) (about 1 where decoded images look like real
  ones, more where they do not). Search weights are distance * ((c(u) + c(v)) / 2) ** realism_weight, so
  a shortest path trades length against realism; refinement uses the same field (vae_infer.interpolation).
- A graph in several pieces is joined deliberately: each smaller component is bridged to its nearest
  other component by one edge (recorded in `bridge`); with bridge=False the pieces stay apart and a query
  between them raises an InputError that names both components.

Search is networkx's: A* with an admissible, consistent heuristic, the larger of
min_cost ** realism_weight * ||dec(u) - dec(b)|| (the straight-line distance between two decoded images never
exceeds a path's summed decoded distances) and the ALT bound |d(l, b) - d(l, u)| from a few landmark nodes
whose distances to every node are stored in the index; or Dijkstra. The index is stored in the model package
as arrays in an .npz file (no pickles), listed in model.json with its sha256; see save_index and load_graph.

Limits: at most MAX_CODES codes are used (a larger dataset is subsampled, seeded), and the landmark grid is
coarsened until there are at most MAX_NODES nodes, so building takes about a second per 60,000 images on two
cores and a loaded graph holds at most about 50 MB (float64 decoded nodes, 6.3 KB each, plus networkx's
dicts). Graph search, A* heuristics and refinement work in any latent size; the realism field (and with it
the realism weight) exists for 2-D latents only.
"""

from __future__ import annotations

import io
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from .errors import InputError, ModelPackageError

INDEX_FILE = "latent_index.npz"
INDEX_FORMAT = 1
METRICS = ("decoded", "latent")
SEARCHES = ("astar", "dijkstra")

DEFAULT_K = 12  # neighbours per node
CELL_FRACTION = 0.1  # default landmark grid spacing: this fraction of the codes' standard deviation
FIELD_CELL_FRACTION = 0.4  # default realism grid spacing: this fraction of the landmark spacing
DEFAULT_FIELD_RADIUS = 6  # realism: compare with the data whose codes lie within this many field cells
DEFAULT_REALISM_WEIGHT = 2.5  # exponent q of the cost field in search weights (0: plain decoded distance)
MAX_CODES = 100_000  # larger datasets are subsampled (seeded) to this many codes before building
MAX_NODES = 5_000  # the landmark grid is coarsened until the nodes are at most this many
OFF_DATA_COST = 2.0  # cost field far from the data when no images were given (codes only)
MIN_COST = 0.25  # the cost field is clipped below at this (it keeps the A* heuristic useful)
DEFAULT_ALT_LANDMARKS = 8
ENCODE_CHUNK = 8192


@dataclass(frozen=True)
class LatentIndex:
    """The stored arrays of a latent graph index (see the module docstring)."""

    codes: NDArray[np.float32]  # (n, d) node codes
    counts: NDArray[np.int32]  # (n,) codes of the dataset per node
    edges: NDArray[np.int32]  # (m, 2) node pairs, i < j
    distance: NDArray[np.float32]  # (m,) decoded (or latent) distance of each edge
    bridge: NDArray[np.bool_]  # (m,) True for edges added to join components
    cost: NDArray[np.float32]  # (n,) cost field at each node (1 = median realism)
    field: NDArray[np.float32]  # (ny, nx) cost field on a grid, or (0, 0) when there is none
    field_origin: NDArray[np.float32]  # (2,) latent coordinates of the grid's cell (0, 0) corner
    field_cell: float
    k: int
    metric: str
    cell: float
    realism_ref: float  # the realism distance that maps to cost 1 (0 when built from codes only)
    n_codes: int  # codes the index was built from
    realism_weight: float  # the default exponent q of the cost field in search weights
    alt_nodes: NDArray[np.int32]  # (L,) landmark nodes of the A* heuristic (ALT)
    alt_dist: NDArray[np.float64]  # (L, n) search distance from each landmark to every node (inf: unreachable)
    info: dict[str, Any] = field(default_factory=dict)  # build details for the manifest (not stored in the npz)

    @property
    def n_nodes(self) -> int:
        return len(self.codes)

    @property
    def latent_size(self) -> int:
        return self.codes.shape[1]

    @property
    def has_field(self) -> bool:
        return self.field.size > 0

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf, format=np.int32(INDEX_FORMAT), codes=self.codes, counts=self.counts, edges=self.edges,
            distance=self.distance, bridge=self.bridge, cost=self.cost, field=self.field,
            field_origin=self.field_origin, field_cell=np.float64(self.field_cell), k=np.int32(self.k),
            metric=np.array(self.metric), cell=np.float64(self.cell), realism_ref=np.float64(self.realism_ref),
            n_codes=np.int64(self.n_codes), realism_weight=np.float64(self.realism_weight),
            alt_nodes=self.alt_nodes, alt_dist=self.alt_dist,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "latent index") -> LatentIndex:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                a = {name: z[name] for name in z.files}
        except Exception as e:  # numpy raises several types for a corrupt or pickled file
            raise ModelPackageError(f"{origin}: expected a numpy .npz of index arrays, cannot read it: {e}") from e
        need = {"format", "codes", "counts", "edges", "distance", "bridge", "cost", "field", "field_origin",
                "field_cell", "k", "metric", "cell", "realism_ref", "n_codes", "realism_weight", "alt_nodes",
                "alt_dist"}
        if not need <= set(a):
            raise ModelPackageError(f"{origin}: missing arrays {sorted(need - set(a))}; rebuild the index")
        if int(a["format"]) != INDEX_FORMAT:
            raise ModelPackageError(
                f"{origin}: index format {int(a['format'])}, this vae_infer reads {INDEX_FORMAT}; rebuild the index"
            )
        index = cls(
            codes=a["codes"].astype(np.float32), counts=a["counts"].astype(np.int32),
            edges=a["edges"].astype(np.int32), distance=a["distance"].astype(np.float32),
            bridge=a["bridge"].astype(bool), cost=a["cost"].astype(np.float32), field=a["field"].astype(np.float32),
            field_origin=a["field_origin"].astype(np.float32), field_cell=float(a["field_cell"]), k=int(a["k"]),
            metric=str(a["metric"]), cell=float(a["cell"]), realism_ref=float(a["realism_ref"]),
            n_codes=int(a["n_codes"]), realism_weight=float(a["realism_weight"]),
            alt_nodes=a["alt_nodes"].astype(np.int32), alt_dist=a["alt_dist"].astype(np.float64),
        )
        index.validate(origin)
        return index

    def validate(self, origin: str = "latent index") -> None:
        n = len(self.codes)
        problems = []
        if self.codes.ndim != 2 or n < 2:
            problems.append(f"codes shaped {self.codes.shape}, expected (n >= 2, latent size)")
        m = len(self.edges)
        if self.edges.ndim != 2 or self.edges.shape[1:] != (2,):
            problems.append(f"edges shaped {self.edges.shape}, expected (m, 2)")
        elif m and (self.edges.min() < 0 or self.edges.max() >= n):
            problems.append(f"edges name nodes outside 0..{n - 1}")
        for name, arr, size in (("counts", self.counts, n), ("cost", self.cost, n), ("distance", self.distance, m),
                                ("bridge", self.bridge, m)):
            if arr.shape != (size,):
                problems.append(f"{name} shaped {arr.shape}, expected ({size},)")
        for name, arr in (("codes", self.codes), ("distance", self.distance), ("cost", self.cost),
                          ("field", self.field)):
            if arr.size and not np.all(np.isfinite(arr)):
                problems.append(f"{name} holds NaN or inf")
        if m and self.distance.min() < 0:
            problems.append("negative edge distances")
        if self.cost.size and self.cost.min() <= 0:
            problems.append("non-positive costs")
        if self.alt_dist.shape != (len(self.alt_nodes), n) or (len(self.alt_nodes) and (
                self.alt_nodes.min() < 0 or self.alt_nodes.max() >= n)):
            problems.append(f"A* landmarks shaped {self.alt_nodes.shape} / {self.alt_dist.shape} for {n} nodes")
        if np.isnan(self.alt_dist).any() or (self.alt_dist.size and self.alt_dist.min() < 0):
            problems.append("A* landmark distances hold NaN or negative values")
        if not (math.isfinite(self.realism_weight) and self.realism_weight >= 0):
            problems.append(f"realism_weight {self.realism_weight}, expected a finite number >= 0")
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r}, expected one of {METRICS}")
        if self.field.size and (self.field.ndim != 2 or self.codes.shape[1] != 2 or self.field_cell <= 0):
            problems.append(f"field shaped {self.field.shape} for a {self.codes.shape[1]}-D latent")
        if problems:
            raise ModelPackageError(f"{origin} is malformed: " + "; ".join(problems) + "; rebuild the index")

    def manifest_section(self, file_name: str = INDEX_FILE, source: str | None = None) -> dict[str, Any]:
        """The `latent_index` section of model.json describing this index."""
        section = {
            "file": file_name, "format": INDEX_FORMAT, "k": self.k, "metric": self.metric, "cell": self.cell,
            "field_cell": self.field_cell if self.has_field else None, "n_codes": self.n_codes,
            "n_nodes": self.n_nodes, "n_edges": int(len(self.edges)), "n_bridges": int(self.bridge.sum()),
            "realism_ref": self.realism_ref, "realism_weight": self.realism_weight,
            "astar_landmarks": int(len(self.alt_nodes)), "source": source,
        }
        section.update(self.info)
        return section


# -- building --------------------------------------------------------------------------------------------------


def knn(points: NDArray, k: int, chunk: int = 1024) -> NDArray[np.int64]:
    """Indices of each point's k nearest other points (exact, brute force in chunks), (n, min(k, n - 1))."""
    p = np.ascontiguousarray(points, dtype=np.float32)
    n = len(p)
    k = min(k, n - 1)
    sq = (p * p).sum(1)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        d2 = sq[s : s + chunk, None] + sq[None, :] - 2.0 * (p[s : s + chunk] @ p.T)
        rows = np.arange(min(chunk, n - s))
        d2[rows, s + rows] = np.inf  # never a point's own neighbour
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(d2, axis=1)[:, :k]
        out[s : s + chunk] = part
    return out


def _landmarks(codes: NDArray[np.float32], cell: float, max_nodes: int) -> tuple[NDArray, NDArray, float]:
    """Mean code of each occupied grid cell and how many codes it holds; the grid is coarsened until there are
    at most max_nodes cells."""
    lo = codes.min(0)
    while True:
        q = np.floor((codes - lo) / cell).astype(np.int64)
        _, inverse, counts = np.unique(q, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        if len(counts) <= max_nodes:
            break
        cell *= 1.5
    sums = np.zeros((len(counts), codes.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, codes)
    return (sums / counts[:, None]).astype(np.float32), counts.astype(np.int32), cell


def _pair_distances(a: NDArray, b: NDArray, chunk: int = 16384) -> NDArray[np.float32]:
    """||a[i] - b[i]|| row by row, in chunks (bounded memory)."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), chunk):
        d = a[s : s + chunk] - b[s : s + chunk]
        out[s : s + chunk] = np.sqrt(np.einsum("ij,ij->i", d, d))
    return out


def _components(n: int, edges: NDArray) -> NDArray[np.int64]:
    """Connected-component label of each node (union-find on the edge list), labels 0.. by first node."""
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for u, v in edges.tolist():
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    roots = np.array([find(i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels.reshape(-1)


def _bridges(codes: NDArray, edges: NDArray) -> list[tuple[int, int]]:
    """Edges that join the components: the smallest component to its nearest node elsewhere, until one is left."""
    labels = _components(len(codes), edges)
    added = []
    while labels.max() > 0:
        sizes = np.bincount(labels)
        small = int(sizes.argmin())
        inside = np.nonzero(labels == small)[0]
        outside = np.nonzero(labels != small)[0]
        best = (np.inf, 0, 0)
        for s in range(0, len(inside), 256):
            block = inside[s : s + 256]
            d2 = ((codes[block, None, :] - codes[None, outside, :]) ** 2).sum(-1)
            i, j = np.unravel_index(int(d2.argmin()), d2.shape)
            if d2[i, j] < best[0]:
                best = (float(d2[i, j]), int(block[i]), int(outside[j]))
        u, v = best[1], best[2]
        added.append((min(u, v), max(u, v)))
        other = labels[v]
        labels[labels == small] = other
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(-1)
    return added


def _realism_field(model, codes: NDArray[np.float32], images: NDArray, lo: NDArray, cell: float, radius: int,
                   block: int = 6) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Distance from the decoded image of each grid cell centre to the nearest image whose code lies within
    `radius` cells; cells with no such image get inf. Returns (field (ny, nx), origin (2,))."""
    origin = (lo - (radius + 1) * cell).astype(np.float32)
    q = np.floor((codes - origin) / cell).astype(np.int64)
    shape = (int(q[:, 1].max()) + radius + 2, int(q[:, 0].max()) + radius + 2)  # (ny, nx)
    out = np.full(shape, np.inf, dtype=np.float32)
    # Work in blocks of block x block cells: the images in a block against the decoded centres of the block
    # and its margin, one matrix product each (the squared-norm expansion keeps it a BLAS call).
    bq = q // block
    order = np.lexsort((bq[:, 0], bq[:, 1]))
    keys = bq[order, 1] * (shape[1] // block + 2) + bq[order, 0]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    span = block + 2 * radius
    # decode every centre that some block needs, once
    need = np.zeros(shape, dtype=bool)
    for s in starts:
        by, bx = bq[order[s], 1] * block - radius, bq[order[s], 0] * block - radius
        need[max(by, 0) : by + span, max(bx, 0) : bx + span] = True
    ys, xs = np.nonzero(need)
    centres = np.stack([origin[0] + (xs + 0.5) * cell, origin[1] + (ys + 0.5) * cell], 1).astype(np.float32)
    decoded = model.decode(centres)
    slot = np.full(shape, -1, dtype=np.int64)
    slot[ys, xs] = np.arange(len(ys))
    dsq = (decoded * decoded).sum(1)
    for s, e in zip(starts, ends, strict=True):
        rows = order[s:e]
        x = model.as_images(images[rows])
        xsq = (x * x).sum(1)
        by, bx = bq[rows[0], 1] * block - radius, bq[rows[0], 0] * block - radius
        y0, x0 = max(by, 0), max(bx, 0)
        win = slot[y0 : by + span, x0 : bx + span]
        cy, cx = np.nonzero(win >= 0)
        ids = win[cy, cx]
        d2 = xsq[:, None] + dsq[None, ids] - 2.0 * (x @ decoded[ids].T)  # (images, centres)
        # an image counts for a centre only when its cell lies within `radius` cells of the centre's cell
        iq = q[rows]
        near = (np.abs(iq[:, 1, None] - (cy + y0)[None]) <= radius) & (
            np.abs(iq[:, 0, None] - (cx + x0)[None]) <= radius)
        d2 = np.where(near, d2, np.inf).min(0)
        cur = out[cy + y0, cx + x0]
        out[cy + y0, cx + x0] = np.minimum(cur, np.sqrt(np.maximum(d2, 0.0)))
    return out, origin


def _occupancy_field(codes: NDArray[np.float32], lo: NDArray, cell: float, radius: int):
    """Codes only: 1 within `radius` cells of some code, inf elsewhere."""
    origin = (lo - (radius + 1) * cell).astype(np.float32)
    q = np.floor((codes - origin) / cell).astype(np.int64)
    shape = (int(q[:, 1].max()) + radius + 2, int(q[:, 0].max()) + radius + 2)
    occ = np.zeros(shape, dtype=bool)
    occ[q[:, 1], q[:, 0]] = True
    near = occ.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            near |= np.roll(np.roll(occ, dy, 0), dx, 1)
    return np.where(near, 1.0, np.inf).astype(np.float32), origin


def bilinear(field_: NDArray[np.float32], origin: NDArray, cell: float, z: NDArray, grad: bool = False):
    """The grid field at latent points z (n, 2), bilinear between cell centres and held constant beyond the
    grid; with grad=True also its gradient (n, 2)."""
    ny, nx_ = field_.shape
    fx = np.clip((z[:, 0] - origin[0]) / cell - 0.5, 0.0, nx_ - 1.000001)
    fy = np.clip((z[:, 1] - origin[1]) / cell - 0.5, 0.0, ny - 1.000001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = fx - ix, fy - iy
    f00, f10 = field_[iy, ix], field_[iy, ix + 1]
    f01, f11 = field_[iy + 1, ix], field_[iy + 1, ix + 1]
    value = f00 * (1 - tx) * (1 - ty) + f10 * tx * (1 - ty) + f01 * (1 - tx) * ty + f11 * tx * ty
    if not grad:
        return value
    inside_x = (fx > 0) & (fx < nx_ - 1.000001)
    inside_y = (fy > 0) & (fy < ny - 1.000001)
    gx = ((f10 - f00) * (1 - ty) + (f11 - f01) * ty) / cell * inside_x
    gy = ((f01 - f00) * (1 - tx) + (f11 - f10) * tx) / cell * inside_y
    return value, np.stack([gx, gy], 1)


def build_index(
    model,
    images: object | None = None,
    *,
    codes: object | None = None,
    k: int = DEFAULT_K,
    metric: str = "decoded",
    cell: float | None = None,
    field_cell: float | None = None,
    field_radius: int = DEFAULT_FIELD_RADIUS,
    realism_weight: float = DEFAULT_REALISM_WEIGHT,
    landmarks: int = DEFAULT_ALT_LANDMARKS,
    bridge: bool = True,
    max_codes: int = MAX_CODES,
    max_nodes: int = MAX_NODES,
    seed: int = 0,
) -> LatentIndex:
    """Build a latent graph index from a dataset's images (their latent means), or from latent codes.

    images: (n, features) or (n, h, w), uint8 or floats in [0, 1]; encoded in chunks. Without images, pass
    codes (n, latent size): the graph is the same but there is no realism, only "near the data or not".
    k: neighbours per node. metric: "decoded" (edge distance between decoded images) or "latent".
    cell: landmark grid spacing, latent units (default CELL_FRACTION times the codes' mean standard deviation,
    0.118 for the shipped model); field_cell (default FIELD_CELL_FRACTION * cell), field_radius (cells): the
    realism grid (2-D latents only).
    realism_weight: the default exponent q of the cost field in search weights (0: distance only).
    landmarks: graph nodes whose distances to every node are stored for the A* heuristic (ALT); 0 for none.
    bridge: join a disconnected graph with bridging edges (else queries across pieces raise InputError).
    max_codes: a larger dataset is subsampled (seeded) to this many codes; max_nodes bounds the landmarks."""
    from .inputs import as_count, as_latents, as_seed

    t0 = time.perf_counter()
    k = as_count(k, "k")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    for name, value in (("cell", cell), ("field_cell", field_cell)):
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number of latent units, got {value!r}")
    if isinstance(realism_weight, bool) or not (isinstance(realism_weight, (int, float))
                                                and math.isfinite(realism_weight) and realism_weight >= 0):
        raise InputError(f"realism_weight must be a finite number >= 0, got {realism_weight!r}")
    if isinstance(landmarks, bool) or not isinstance(landmarks, int) or landmarks < 0:
        raise InputError(f"landmarks must be an integer >= 0, got {landmarks!r}")
    field_radius = as_count(field_radius, "field_radius")
    max_codes, max_nodes = as_count(max_codes, "max_codes"), as_count(max_nodes, "max_nodes")
    if (images is None) == (codes is None):
        raise InputError("build_index needs either images (a dataset to encode) or codes (latent means), not both")
    rng = np.random.default_rng(as_seed(seed))
    if images is not None:
        arr = np.asarray(images)
        if arr.ndim not in (2, 3):
            model.as_images(arr)  # raises the usual shape error
        n_given = len(arr)
        if n_given > max_codes:
            arr = arr[np.sort(rng.choice(n_given, max_codes, replace=False))]
        z = np.concatenate([model.encode(arr[s : s + ENCODE_CHUNK])[0] for s in range(0, len(arr), ENCODE_CHUNK)])
    else:
        z = as_latents(codes, model.latent_size)
        n_given = len(z)
        if n_given > max_codes:
            z = z[np.sort(rng.choice(n_given, max_codes, replace=False))]
        arr = None
    if len(z) < 3:
        raise InputError(f"a latent graph needs at least 3 codes, got {len(z)}")
    t_encode = time.perf_counter() - t0

    if cell is None:
        spread = float(np.mean(z.std(0)))
        cell = CELL_FRACTION * spread if spread > 0 else 1.0
    nodes, counts, cell_used = _landmarks(z, float(cell), max_nodes)
    if field_cell is None:
        field_cell = FIELD_CELL_FRACTION * cell_used
    if len(nodes) < 3:
        raise InputError(
            f"the codes fall in only {len(nodes)} landmark cells of {cell_used:g} latent units; pass a smaller cell"
        )
    nbr = knn(nodes, k)
    pairs = np.stack([np.repeat(np.arange(len(nodes)), nbr.shape[1]), nbr.reshape(-1)], 1)
    edges = np.unique(np.sort(pairs, axis=1), axis=0)
    added = _bridges(nodes, edges) if bridge else []
    is_bridge = np.zeros(len(edges) + len(added), dtype=bool)
    if added:
        edges = np.concatenate([edges, np.array(added, dtype=edges.dtype)])
        is_bridge[-len(added):] = True
    points = model.decode(nodes) if metric == "decoded" else nodes
    distance = _pair_distances(points[edges[:, 0]], points[edges[:, 1]])

    lo = z.min(0)
    realism_ref = 0.0
    if model.latent_size == 2 and arr is not None:
        raw, origin = _realism_field(model, z, arr, lo, float(field_cell), field_radius)
        finite = np.isfinite(raw)
        node_raw = bilinear(np.where(finite, raw, raw[finite].max()), origin, float(field_cell), nodes)
        realism_ref = float(np.median(node_raw))
        grid = np.where(finite, raw / realism_ref, raw[finite].max() / realism_ref).astype(np.float32)
    elif model.latent_size == 2:
        raw, origin = _occupancy_field(z, lo, float(field_cell), field_radius)
        grid = np.where(np.isfinite(raw), raw, OFF_DATA_COST).astype(np.float32)
    else:
        grid, origin = np.zeros((0, 0), dtype=np.float32), np.zeros(2, dtype=np.float32)
    if grid.size:
        grid = np.maximum(grid, MIN_COST)
        cost = bilinear(grid, origin, float(field_cell), nodes).astype(np.float32)
    else:
        cost = np.ones(len(nodes), dtype=np.float32)
        realism_weight = 0.0
    edges = edges.astype(np.int32)
    weights = distance.astype(np.float64) * _factor(cost, edges[:, 0], edges[:, 1], float(realism_weight))
    alt_nodes, alt_dist = _alt_tables(len(nodes), edges, weights, landmarks, rng)
    seconds = time.perf_counter() - t0
    return LatentIndex(
        codes=nodes, counts=counts, edges=edges, distance=distance, bridge=is_bridge,
        cost=cost, field=grid, field_origin=np.asarray(origin, dtype=np.float32),
        field_cell=float(field_cell), k=k, metric=metric, cell=float(cell_used), realism_ref=realism_ref,
        n_codes=len(z), realism_weight=float(realism_weight), alt_nodes=alt_nodes, alt_dist=alt_dist,
        info={"n_given": int(n_given), "seed": int(seed), "field_radius": int(field_radius),
              "build_seconds": round(seconds, 3), "encode_seconds": round(t_encode, 3)},
    )


def _factor(cost: NDArray, u, v, q: float):
    """The realism factor of edges (u, v): mean node cost ** q."""
    if q == 0:
        return np.ones(np.shape(u))
    return (0.5 * (cost[u].astype(np.float64) + cost[v])) ** q


def _weighted_graph(n: int, edges: NDArray, weights: NDArray) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(zip(edges[:, 0].tolist(), edges[:, 1].tolist(), weights.tolist(), strict=True))
    return g


def _alt_tables(n: int, edges: NDArray, weights: NDArray, count: int, rng) -> tuple[NDArray, NDArray]:
    """ALT landmarks for A*: nodes picked farthest-first (by search distance; a node no landmark reaches yet, in
    another component, comes first), and the distance from each to every node (inf where unreachable). For any
    nodes u and t, |d(l, u) - d(l, t)| <= d(u, t): a lower bound that A* can use."""
    count = min(count, n)
    if count == 0:
        return np.zeros(0, dtype=np.int32), np.zeros((0, n))
    g = _weighted_graph(n, edges, weights)

    def distances_from(source: int) -> NDArray[np.float64]:
        lengths = nx.single_source_dijkstra_path_length(g, source, weight="weight")
        row = np.full(n, np.inf)
        row[list(lengths)] = list(lengths.values())
        return row

    start = distances_from(int(rng.integers(n)))
    current = int(np.argmax(np.where(np.isfinite(start), start, -1.0)))
    chosen, rows, nearest = [], [], np.full(n, np.inf)
    while len(chosen) < count:
        row = distances_from(current)
        chosen.append(current)
        rows.append(row)
        nearest = np.minimum(nearest, row)
        score = nearest.copy()
        score[chosen] = -1.0
        current = int(np.argmax(score))
        if score[current] <= 0:
            break
    return np.array(chosen, dtype=np.int32), np.array(rows, dtype=np.float64)


# -- the package -------------------------------------------------------------------------------------------------


def save_index(package_dir: str | Path, index: LatentIndex, source: str | None = None,
               file_name: str = INDEX_FILE):
    """Store the index in a model package (atomically, with its sha256 in model.json); returns the new manifest."""
    from .package import update_package

    data = index.to_bytes()
    section = index.manifest_section(file_name, source)
    section["bytes"] = len(data)
    return update_package(package_dir, {file_name: data}, latent_index=section)


def read_index(model) -> LatentIndex:
    """The index stored in a loaded model's package, sha256-checked."""
    from .package import read_verified

    section = model.manifest.latent_index
    if not section:
        raise ModelPackageError(
            f"{model.path}: model.json has no latent_index section, so graph interpolation has no graph; build one "
            f"with `vae-infer index build {model.path} --data DATASET` (or vae_infer.latent_graph.build_index)"
        )
    name = section.get("file")
    if not isinstance(name, str) or name not in model.manifest.files:
        raise ModelPackageError(f"{model.path}: latent_index names the file {name!r}, which model.json does not list")
    data = read_verified(model.path, model.manifest, name)
    index = LatentIndex.from_bytes(data, str(Path(model.path) / name))
    if index.latent_size != model.latent_size:
        raise ModelPackageError(
            f"{model.path / name}: index codes are {index.latent_size}-D but the model's latent is "
            f"{model.latent_size}-D; rebuild the index"
        )
    return index


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRAPHS_LOCK = threading.Lock()


def load_graph(model) -> LatentGraph:
    """The searchable graph of a loaded model's index, built once per model object and then shared."""
    with _GRAPHS_LOCK:
        graph = _GRAPHS.get(model)
        if graph is None:
            graph = LatentGraph(read_index(model), model)
            _GRAPHS[model] = graph
        return graph


# -- searching ---------------------------------------------------------------------------------------------------


class LatentGraph:
    """A LatentIndex as a networkx graph, ready for shortest-path queries between any two latent codes.

    Each query adds two temporary nodes (the endpoints, attached to their nearest nodes) to the shared graph
    under a lock and removes them afterwards, so queries from several threads are safe (and run one at a
    time through the search)."""

    SOURCE, TARGET = -1, -2

    def __init__(self, index: LatentIndex, model) -> None:
        self.index = index
        self.model = model
        self.codes = index.codes
        self.q = index.realism_weight
        self.cost = index.cost.astype(np.float64)
        self.cost_min = float(min(self.cost.min(), index.field.min() if index.has_field else self.cost.min()))
        self.decoded = model.decode(index.codes) if index.metric == "decoded" else None
        pts = self.decoded if self.decoded is not None else self.codes
        # float64, so the expansion |a|^2 + |b|^2 - 2 a.b keeps small distances accurate (float32 would not)
        self._pts = np.ascontiguousarray(pts, dtype=np.float64)
        self._sq = (self._pts**2).sum(1)
        e = index.edges
        weights = index.distance.astype(np.float64) * _factor(self.cost, e[:, 0], e[:, 1], self.q)
        self.graph = _weighted_graph(index.n_nodes, e, weights)
        for (u, v), dist in zip(e.tolist(), index.distance.tolist(), strict=True):
            self.graph[u][v]["distance"] = dist
        self.labels = _components(index.n_nodes, e)
        self._lock = threading.Lock()

    def points(self, z: NDArray) -> NDArray[np.float32]:
        """Where codes live in the graph's metric space: their decoded images, or the codes themselves."""
        z = np.asarray(z, dtype=np.float32)
        return self.model.decode(z) if self.decoded is not None else z

    def cost_at(self, z: NDArray, grad: bool = False):
        """The cost field at latent points (ones when the index has no field); grad=True adds its gradient."""
        z = np.asarray(z, dtype=np.float64)
        if not self.index.has_field:
            ones = np.ones(len(z))
            return (ones, np.zeros_like(z)) if grad else ones
        return bilinear(self.index.field, self.index.field_origin, self.index.field_cell, z, grad)

    def _distances_to(self, x: NDArray) -> NDArray[np.float64]:
        """Metric distances from one point x (decoded image, or code) to every node, each rounded down by a
        hair more than float64 rounding can add (so they can serve as an admissible heuristic)."""
        x64 = np.asarray(x, dtype=np.float64).reshape(-1)
        xsq = float(x64 @ x64)
        d2 = self._sq + xsq - 2.0 * _matvec(self._pts, x64)
        return np.sqrt(np.maximum(d2 - 1e-12 * (self._sq + xsq), 0.0))

    def _exact_distances(self, rows: NDArray, x: NDArray) -> NDArray[np.float64]:
        diff = self._pts[rows] - np.asarray(x, dtype=np.float64).reshape(1, -1)
        return np.sqrt((diff * diff).sum(1))

    def _nearest(self, z: NDArray, count: int) -> NDArray[np.int64]:
        d2 = ((self.codes - z[None]) ** 2).sum(1)
        count = min(count, len(d2))
        return np.argpartition(d2, count - 1)[:count] if count < len(d2) else np.arange(len(d2))

    def shortest_path(self, za: NDArray, zb: NDArray, search: str = "astar", realism_weight: float | None = None,
                      attach: int | None = None) -> dict[str, Any]:
        """The shortest path from code za to code zb through the graph.

        Each endpoint attaches to its `attach` nearest nodes (default k) by edges weighted like the others.
        Returns {"nodes": node ids on the way (without the endpoints), "codes": (len + 2, d) including za and zb,
        "weight": the summed search weight, "length": the summed metric distance, "expanded": nodes A* or
        Dijkstra took off the queue}."""
        if search not in SEARCHES:
            raise InputError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
        q = self.q if realism_weight is None else realism_weight
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not (math.isfinite(q) and q >= 0):
            raise InputError(f"realism_weight must be a finite number >= 0, got {realism_weight!r}")
        q = float(q)
        attach = self.index.k if attach is None else attach
        za = np.asarray(za, dtype=np.float32).reshape(-1)
        zb = np.asarray(zb, dtype=np.float32).reshape(-1)
        xa, xb = self.points(np.stack([za, zb]))
        near_a, near_b = self._nearest(za, attach), self._nearest(zb, attach)
        self._check_connected(near_a, near_b)
        dist_a, dist_b = self._exact_distances(near_a, xa), self._exact_distances(near_b, xb)
        ca, cb = self.cost_at(np.stack([za, zb]))
        w_a = dist_a * ((0.5 * (ca + self.cost[near_a])) ** q if q else 1.0)
        w_b = dist_b * ((0.5 * (cb + self.cost[near_b])) ** q if q else 1.0)
        heuristic = self._heuristic(self._distances_to(xb), near_b, w_b, q) if search == "astar" else None
        weight = "weight" if q == self.q else self._weight_fn(q)
        src, dst = self.SOURCE, self.TARGET
        expanded = [0]
        with self._lock:
            g = self.graph
            g.add_edges_from((src, int(n), {"weight": float(w), "distance": float(d)})
                             for n, w, d in zip(near_a, w_a, dist_a, strict=True))
            g.add_edges_from((dst, int(n), {"weight": float(w), "distance": float(d)})
                             for n, w, d in zip(near_b, w_b, dist_b, strict=True))
            try:
                counted = _counting(weight, expanded)
                if search == "astar":
                    path = nx.astar_path(g, src, dst, heuristic=heuristic, weight=counted)
                else:
                    path = nx.dijkstra_path(g, src, dst, weight=counted)
                hops = list(zip(path[:-1], path[1:], strict=True))
                total = sum(g[u][v]["weight"] if weight == "weight" else weight(u, v, g[u][v]) for u, v in hops)
                length = sum(g[u][v]["distance"] for u, v in hops)
            finally:
                g.remove_node(src)
                g.remove_node(dst)
        inner = [int(n) for n in path[1:-1]]
        codes = np.concatenate([za[None], self.codes[inner], zb[None]]).astype(np.float32)
        return {"nodes": inner, "codes": codes, "weight": float(total), "length": float(length),
                "edge_evaluations": expanded[0]}

    def _heuristic(self, to_b: NDArray, near_b: NDArray, w_b: NDArray, q: float):
        """An admissible, consistent A* heuristic: the largest of
        - cost_min ** q * (metric distance to b): each edge weighs at least cost_min ** q times its metric
          distance, and metric distances obey the triangle inequality (the straight line is never longer);
        - for each ALT landmark l (only for the index's own weights), d(l, b) - d(l, u) and d(l, u) - d(l, b),
          with d(l, b) bounded through b's attachment edges: min_n d(l, n) + w(n, b) and max_n d(l, n) - w(n, b).
        Scaled down by a hair so float rounding never makes it overestimate."""
        h = to_b * (self.cost_min**q if q else 1.0)
        alt = self.index.alt_dist
        if q == self.q and len(alt):
            reach = alt[:, near_b]
            hi = np.min(reach + w_b[None], axis=1)  # d(l, b) exactly
            lo = np.max(reach - w_b[None], axis=1)
            ok = np.isfinite(hi) & np.isfinite(lo)
            if ok.any():
                a = alt[ok]
                with np.errstate(invalid="ignore"):
                    bound = np.maximum(hi[ok, None] - a, a - lo[ok, None])
                bound = np.where(np.isfinite(bound), bound, 0.0).max(0)
                h = np.maximum(h, bound)
        h = h * (1.0 - 1e-9) - 1e-9 * (1.0 + h)
        h = np.maximum(h, 0.0)
        src, dst = self.SOURCE, self.TARGET

        def heuristic(u, v, h=h):
            return 0.0 if u == dst or u == src else float(h[u])

        return heuristic

    def _weight_fn(self, q: float):
        cost = self.cost

        def weight(u, v, d):
            if u < 0 or v < 0:
                return d["weight"]  # the endpoints' edges were made with this q
            return d["distance"] * ((0.5 * (cost[u] + cost[v])) ** q if q else 1.0)

        return weight

    def _check_connected(self, near_a: NDArray, near_b: NDArray) -> None:
        la, lb = set(self.labels[near_a].tolist()), set(self.labels[near_b].tolist())
        if la & lb:
            return
        sizes = np.bincount(self.labels)
        a, b = min(la), min(lb)
        raise InputError(
            f"the latent graph is disconnected ({len(sizes)} components): image a attaches to component {a} "
            f"({sizes[a]} nodes) and image b to component {b} ({sizes[b]} nodes), with no path between them; "
            f"rebuild the index with bridging (the default) or a larger k"
        )


def _matvec(a: NDArray, x: NDArray, rows: int = 256) -> NDArray[np.float64]:
    """a @ x in slices small enough that OpenBLAS stays on the calling thread: a threaded matrix-vector product
    of this size is slower, and on a busy machine its thread hand-offs can take milliseconds."""
    return np.concatenate([np.dot(a[s : s + rows], x) for s in range(0, len(a), rows)]).astype(np.float64)


def _counting(weight, counter: list):
    """The weight as a callable that counts its calls (how much of the graph a search touched)."""
    if callable(weight):
        def counted(u, v, d):
            counter[0] += 1
            return weight(u, v, d)
    else:
        def counted(u, v, d):
            counter[0] += 1
            return d[weight]
    return counted


# -- datasets for the command line (the runtime's own minimal reader: vae_infer never imports train) ------------

def load_images(spec: str | Path, split: str = "train") -> tuple[NDArray, str]:
    """Images for building an index or measuring realism, and where they came from.

    spec: a named dataset ("fashion-mnist", "mnist": IDX files looked for in dataset_dirs(name); nothing is
    downloaded), a folder of IDX files, one IDX file, a .npy of images, or a .npz (FILE.npz:KEY picks an array;
    otherwise x_train / x_test by split, or its only array). split: "train" or "test" (folders, names, .npz)."""
    from .arrays import read_images
    from .datasets import IMAGE_FILES, dataset_dirs, find_split_file, read_idx_images
    from .errors import DataError

    if split not in IMAGE_FILES:
        raise DataError(f"split must be train or test, got {split!r}")
    text = str(spec)
    stem = IMAGE_FILES[split]
    if text in ("fashion-mnist", "mnist"):
        looked = dataset_dirs(text)
        for folder in looked:
            candidate = find_split_file(folder, stem)
            if candidate is not None:
                return read_idx_images(candidate), str(candidate)
        raise DataError(
            f"dataset {text!r} not found: looked for {stem}[.gz] in {', '.join(str(p) for p in looked)}. The runtime "
            f"does not download; get it with `python -m train fit --dataset {text} ...` once, set VAE_DATA_DIR, or "
            f"on Debian: apt-get install dataset-fashion-mnist"
        )
    path = Path(text)
    if path.is_dir():
        candidate = find_split_file(path, stem)
        if candidate is not None:
            return read_idx_images(candidate), str(candidate)
        raise DataError(f"{path}: expected IDX files such as {stem}[.gz] in this folder")
    file = Path(text.rsplit(":", 1)[0]) if (":" in text and not path.exists()) else path
    if file.suffix.lower() == ".npz" and file == path and file.is_file():
        with np.load(file, allow_pickle=False) as z:
            key = f"x_{split}" if f"x_{split}" in z.files else (z.files[0] if len(z.files) == 1 else None)
        if key is None:
            raise DataError(f"{file}: expected an array x_{split} or a single array; pick one as {file}:KEY")
        text = f"{file}:{key}"
    if file.suffix.lower() in (".npy", ".npz"):
        try:
            return read_images(text, (0, 0)), text
        except InputError as e:
            raise DataError(str(e)) from e
    if file.is_file():
        return read_idx_images(file), str(file)
    raise DataError(f"{text}: no such dataset; expected fashion-mnist, mnist, a folder of IDX files, an IDX file, "
                    f"or a .npy / .npz of images")
