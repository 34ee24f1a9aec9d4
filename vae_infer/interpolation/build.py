"""Building the latent graph index (vae_infer.interpolation.index) from a data set's images or from latent codes.

- Nodes are encodings of real images: the codes are binned on a regular latent grid (`cell` wide) and each
  occupied cell contributes the one real code in it whose image the model reconstructs best (smallest cosine
  distance between the image and its reconstruction, among up to CANDIDATES random codes of the cell), so
  nodes decode to garment-like images, spread evenly, and their number stays bounded however large the data
  set (60,000 Fashion-MNIST codes give about 2,000).
  Built from codes alone, a cell contributes the code nearest its mean.
- Edges join each node to its k nearest nodes (in latent space, made symmetric); a graph in several pieces is
  bridged (each smaller component to its nearest other component, recorded in `bridge`). An edge's `distance`
  is by default the chordal distance between the unit-length decoded images of its two nodes
  (sqrt(2 (1 - cos)): it measures change of shape, not of brightness, so it does not favour dim images);
  "decoded" uses plain Euclidean distance between decoded images, "latent" the latent distance.
- The cost field c(z) (2-D latents): for each point of a grid (`field_cell` wide), the cosine distance from its
  decoded image to the nearest real image among those whose codes lie within `field_radius` cells, times a
  faintness penalty max(1, r_ref / r) ** faint_weight, with r the decoded image's brightness over that real
  image's brightness (r_ref its median over the nodes). Off the data it holds
  the largest value. A frame that looks unlike any garment nearby, or that is a faint ghost of one, costs more.
  The cost is a hinge, max(1, that / its REALISM_QUANTILE-th percentile over the nodes): 1 for ordinary data.
- Search weights: distance * ((c(u) + 2 c(mid) + c(v)) / 4) ** realism_weight, with c(mid) the field at the
  edge's latent midpoint (stored as `edge_cost`), so an edge that jumps across a faint region costs more even
  when both its nodes look real.

Building takes about a second for 60,000 images on two cores (encoding, one decode of every code, the field).
"""

from __future__ import annotations

import math
import time
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from .field import bilinear, occupancy_field, realism_field
from .index import METRICS, LatentIndex, node_points
from .search import _components, _factor, _weighted_graph

DEFAULT_K = 12  # neighbours per node
CELL_FRACTION = 0.1  # default landmark grid spacing: this fraction of the codes' standard deviation
FIELD_CELL_FRACTION = 0.4  # default realism grid spacing: this fraction of the landmark spacing
DEFAULT_FIELD_RADIUS = 6  # realism: compare with the data whose codes lie within this many field cells
DEFAULT_REALISM_WEIGHT = 0.0  # exponent q of the cost field in search weights (0: plain distance; see the benchmark)
DEFAULT_FAINT_WEIGHT = 2.0  # exponent of the faintness penalty in the cost field
MAX_CODES = 100_000  # larger datasets are subsampled (seeded) to this many codes before building
MAX_NODES = 5_000  # the landmark grid is coarsened until the nodes are at most this many
OFF_DATA_COST = 2.0  # cost field far from the data when no images were given (codes only)
MIN_COST = 0.25  # the cost field is clipped below at this (it keeps the A* heuristic useful)
REALISM_QUANTILE = 90  # nodes up to this percentile of (cosine distance x faintness penalty) cost 1
DEFAULT_ALT_LANDMARKS = 8
ENCODE_CHUNK = 8192
FIELD_IMAGES = 15_000  # the realism field compares decoded grid points with at most this many real images
CANDIDATES = 8  # codes per grid cell whose reconstructions are compared to pick the cell's node


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


def _cells(codes: NDArray[np.float32], cell: float, max_nodes: int) -> tuple[NDArray, NDArray, float]:
    """The grid cell of every code (labels 0..) and the codes per cell; the grid is coarsened until there are at
    most max_nodes occupied cells. Returns (labels, counts, cell)."""
    lo = codes.min(0)
    while True:
        q = np.floor((codes - lo) / cell).astype(np.int64)
        _, inverse, counts = np.unique(q, axis=0, return_inverse=True, return_counts=True)
        if len(counts) <= max_nodes:
            return inverse.reshape(-1), counts.astype(np.int32), cell
        cell *= 1.5


def _pick(labels: NDArray, score: NDArray) -> NDArray[np.int64]:
    """In each cell, the row with the smallest score."""
    order = np.lexsort((score, labels))
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    return order[first]


def reconstruction_cosine(model, x: NDArray[np.float32], codes: NDArray) -> NDArray[np.float64]:
    """Cosine distance between each image (validated float32 rows) and the decoded image of its code (how well
    it decodes)."""
    from .realism import unit_rows

    out = np.empty(len(codes))
    for s in range(0, len(codes), ENCODE_CHUNK):
        ux, _ = unit_rows(x[s : s + ENCODE_CHUNK])
        ur, _ = unit_rows(model.decode_rows(np.ascontiguousarray(codes[s : s + ENCODE_CHUNK])))
        out[s : s + ENCODE_CHUNK] = 1.0 - np.einsum("ij,ij->i", ux, ur)
    return out


def _pair_distances(a: NDArray, b: NDArray, chunk: int = 16384) -> NDArray[np.float32]:
    """||a[i] - b[i]|| row by row, in chunks (bounded memory)."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), chunk):
        d = a[s : s + chunk] - b[s : s + chunk]
        out[s : s + chunk] = np.sqrt(np.einsum("ij,ij->i", d, d))
    return out


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


def build_index(
    model,
    images: object | None = None,
    *,
    codes: object | None = None,
    k: int = DEFAULT_K,
    metric: str = "cosine",
    cell: float | None = None,
    field_cell: float | None = None,
    field_radius: int = DEFAULT_FIELD_RADIUS,
    realism_weight: float = DEFAULT_REALISM_WEIGHT,
    faint_weight: float = DEFAULT_FAINT_WEIGHT,
    landmarks: int = DEFAULT_ALT_LANDMARKS,
    bridge: bool = True,
    max_codes: int = MAX_CODES,
    max_nodes: int = MAX_NODES,
    seed: int = 0,
) -> LatentIndex:
    """Build a latent graph index from a dataset's images (their latent means), or from latent codes.

    images: (n, features) or (n, h, w), uint8 or floats in [0, 1]; encoded in chunks. Without images, pass
    codes (n, latent size): the graph is the same kind but there is no realism, only "near the data or not".
    k: neighbours per node. metric: "cosine" (chordal distance between decoded images, the default), "decoded"
    (Euclidean distance between decoded images) or "latent".
    cell: landmark grid spacing, latent units (default CELL_FRACTION times the codes' mean standard deviation,
    about 0.12 for the shipped model); field_cell (default FIELD_CELL_FRACTION * cell), field_radius (cells): the
    realism grid (2-D latents only).
    realism_weight: the default exponent q of the cost field in search weights (0: distance only).
    faint_weight: the exponent of the faintness penalty in the cost field (0: cosine realism only).
    landmarks: graph nodes whose distances to every node are stored for the A* heuristic (ALT); 0 for none.
    bridge: join a disconnected graph with bridging edges (else queries across pieces raise InputError).
    max_codes: a larger dataset is subsampled (seeded) to this many codes; max_nodes bounds the nodes."""
    from ..inputs import as_array, as_count, as_latents, as_seed

    t0 = time.perf_counter()
    k = as_count(k, "k")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    for name, value in (("cell", cell), ("field_cell", field_cell)):
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number of latent units, got {value!r}")
    for name, value in (("realism_weight", realism_weight), ("faint_weight", faint_weight)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(landmarks, bool) or not isinstance(landmarks, int) or landmarks < 0:
        raise InputError(f"landmarks must be an integer >= 0, got {landmarks!r}")
    field_radius = as_count(field_radius, "field_radius")
    max_codes, max_nodes = as_count(max_codes, "max_codes"), as_count(max_nodes, "max_nodes")
    if (images is None) == (codes is None):
        raise InputError("build_index needs either images (a dataset to encode) or codes (latent means), not both")
    rng = np.random.default_rng(as_seed(seed))
    rows = None
    if images is not None:
        arr = as_array(images, "images")
        if arr.ndim not in (2, 3) or len(arr) == 0:
            model.as_images(arr)  # raises the usual shape error, or "expected at least one image"
        n_given = len(arr)
        rows = np.arange(n_given)
        if n_given > max_codes:
            rows = np.sort(rng.choice(n_given, max_codes, replace=False))
            arr = arr[rows]
        # validated once, as float32 rows; the narrow interface then runs the graphs without checking again
        arr = model.as_images(arr)
        z = model.encode_rows(arr)[0]
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
    labels, counts, cell_used = _cells(z, float(cell), max_nodes)
    if arr is not None:
        # nodes: the real codes that decode best, one per cell, among up to CANDIDATES random codes of each cell
        # (decoding every code would double the build time for a node that decodes about as well)
        order = np.lexsort((rng.random(len(z)), labels))
        rank = np.arange(len(z)) - np.searchsorted(labels[order], labels[order])
        candidates = np.sort(order[rank < CANDIDATES])
        score = np.full(len(z), np.inf)
        score[candidates] = reconstruction_cosine(model, arr[candidates], z[candidates])
    else:
        sums = np.zeros((len(counts), z.shape[1]))
        np.add.at(sums, labels, z)
        score = ((z - (sums / counts[:, None])[labels]) ** 2).sum(1)  # the code nearest its cell's mean
    picked = _pick(labels, score)
    counts = counts[labels[picked]]
    nodes = z[picked].astype(np.float32)
    node_rows = rows[picked].astype(np.int64) if rows is not None else np.full(len(nodes), -1, dtype=np.int64)
    if field_cell is None:
        field_cell = FIELD_CELL_FRACTION * cell_used
    if len(nodes) < 3:
        raise InputError(
            f"the codes fall in only {len(nodes)} landmark cells of {cell_used:g} latent units; pass a smaller cell"
        )
    nbr = knn(nodes, k)
    pairs = np.stack([np.repeat(np.arange(len(nodes)), nbr.shape[1]), nbr.reshape(-1)], 1)
    edges: NDArray[Any] = np.unique(np.sort(pairs, axis=1), axis=0)  # int32 from the cost field on
    added = _bridges(nodes, edges) if bridge else []
    is_bridge = np.zeros(len(edges) + len(added), dtype=bool)
    if added:
        edges = np.concatenate([edges, np.array(added, dtype=edges.dtype)])
        is_bridge[-len(added):] = True
    points = node_points(model, nodes, metric)
    distance = _pair_distances(points[edges[:, 0]], points[edges[:, 1]])

    lo = z.min(0)
    realism_ref = faint_ref = 0.0
    if model.latent_size == 2 and arr is not None:
        # the field compares with a seeded sample of the images: its cost grows with images x decoded centres
        sample = np.sort(rng.choice(len(z), FIELD_IMAGES, replace=False)) if len(z) > FIELD_IMAGES else slice(None)
        raw, ratio, origin = realism_field(model, z[sample], arr[sample], lo, float(field_cell), field_radius,
                                           hi=z.max(0))
        finite = np.isfinite(raw) & np.isfinite(ratio) & (ratio > 0)
        raw = np.where(finite, raw, raw[finite].max())
        ratio = np.where(finite, ratio, ratio[finite].min())
        faint_ref = float(np.median(bilinear(ratio, origin, float(field_cell), nodes)))
        penalty = np.maximum(1.0, faint_ref / ratio) ** float(faint_weight)
        bad = raw * penalty
        # a hinge: cost 1 up to the REALISM_QUANTILE of the nodes, more beyond; a cost below 1 would steer paths
        # towards the classes that decode most crisply (bright coats and pullovers) instead of just off ghosts
        realism_ref = float(np.percentile(bilinear(bad, origin, float(field_cell), nodes), REALISM_QUANTILE))
        grid = np.maximum(1.0, bad / max(realism_ref, 1e-12)).astype(np.float32)
        grid[~finite] = grid.max()  # off the data: the largest cost
    elif model.latent_size == 2:
        raw, origin = occupancy_field(z, lo, float(field_cell), field_radius)
        grid = np.where(np.isfinite(raw), raw, OFF_DATA_COST).astype(np.float32)
    else:
        grid, origin = np.zeros((0, 0), dtype=np.float32), np.zeros(2, dtype=np.float32)
    edges = edges.astype(np.int32)
    if grid.size:
        grid = np.maximum(grid, MIN_COST)
        cost = bilinear(grid, origin, float(field_cell), nodes).astype(np.float32)
        mid = 0.5 * (nodes[edges[:, 0]].astype(np.float64) + nodes[edges[:, 1]])
        edge_cost = bilinear(grid, origin, float(field_cell), mid).astype(np.float32)
    else:
        cost = np.ones(len(nodes), dtype=np.float32)
        edge_cost = np.ones(len(edges), dtype=np.float32)
        realism_weight = 0.0
    weights = distance.astype(np.float64) * _factor(cost, edges[:, 0], edges[:, 1], edge_cost, float(realism_weight))
    alt_nodes, alt_dist = _alt_tables(len(nodes), edges, weights, landmarks, rng)
    seconds = time.perf_counter() - t0
    return LatentIndex(
        codes=nodes, counts=counts, rows=node_rows, edges=edges, distance=distance, edge_cost=edge_cost,
        bridge=is_bridge, cost=cost, field=grid, field_origin=np.asarray(origin, dtype=np.float32),
        field_cell=float(field_cell), k=k, metric=metric, cell=float(cell_used), realism_ref=realism_ref,
        n_codes=len(z), realism_weight=float(realism_weight), alt_nodes=alt_nodes, alt_dist=alt_dist,
        info={"n_given": int(n_given), "seed": int(seed), "field_radius": int(field_radius),
              "faint_weight": float(faint_weight), "faint_ref": faint_ref,
              "build_seconds": round(seconds, 3), "encode_seconds": round(t_encode, 3)},
    )


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
    chosen: list[int] = []
    rows, nearest = [], np.full(n, np.inf)
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
