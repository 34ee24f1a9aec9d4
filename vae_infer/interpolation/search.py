"""Searching the latent graph: a LatentIndex as a networkx graph, A* or Dijkstra between any two latent codes."""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from .field import bilinear
from .index import LatentIndex, node_points, read_index

SEARCHES = ("astar", "dijkstra")
DEFAULT_FADE_FLOOR = 0.8  # nodes dimmer than this times the blend of the endpoints are penalised ...
DEFAULT_FADE_WEIGHT = 0.75  # ... by (floor / brightness) ** this

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


def _factor(cost: NDArray, u, v, mid: NDArray, q: float):
    """The realism factor of edges (u, v) whose latent midpoints cost `mid`: ((c(u) + 2 mid + c(v)) / 4) ** q."""
    if q == 0:
        return np.ones(np.shape(u))
    return (0.25 * (cost[u].astype(np.float64) + 2.0 * np.asarray(mid, dtype=np.float64) + cost[v])) ** q


def _weighted_graph(n: int, edges: NDArray, weights: NDArray) -> nx.Graph:
    g: nx.Graph[int] = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(zip(edges[:, 0].tolist(), edges[:, 1].tolist(), weights.tolist(), strict=True))
    return g


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
        pts = self.points(index.codes)
        # each node's decoded brightness, for the per-query penalty on frames that fade (see shortest_path)
        self.brightness = model.decode(index.codes).astype(np.float64).mean(1)
        # float64, so the expansion |a|^2 + |b|^2 - 2 a.b keeps small distances accurate (float32 would not)
        self._pts = np.ascontiguousarray(pts, dtype=np.float64)
        self._sq = (self._pts**2).sum(1)
        e = index.edges
        weights = index.distance.astype(np.float64) * _factor(self.cost, e[:, 0], e[:, 1], index.edge_cost, self.q)
        self.graph = _weighted_graph(index.n_nodes, e, weights)
        for (u, v), dist, mid in zip(e.tolist(), index.distance.tolist(), index.edge_cost.tolist(), strict=True):
            self.graph[u][v]["distance"] = dist
            self.graph[u][v]["mid"] = mid
        self.labels = _components(index.n_nodes, e)
        self._lock = threading.Lock()

    def points(self, z: NDArray) -> NDArray[np.float32]:
        """Where codes live in the graph's metric space: their decoded images scaled to unit length ("cosine"),
        their decoded images ("decoded"), or the codes themselves ("latent")."""
        return node_points(self.model, np.asarray(z, dtype=np.float32), self.index.metric)

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
                      attach: int | None = None, fade_floor: float = DEFAULT_FADE_FLOOR,
                      fade_weight: float = DEFAULT_FADE_WEIGHT) -> dict[str, Any]:
        """The shortest path from code za to code zb through the graph.

        Each endpoint attaches to its `attach` nearest nodes (default k) by edges weighted like the others.
        Fading: each node gets a position t = d(a, u) / (d(a, u) + d(u, b)) between the endpoints (metric
        distances) and a floor, fade_floor times the linear blend of the decoded endpoints' brightness at t; a
        node whose decoded image is dimmer than its floor multiplies the weight of its edges by
        (floor / its brightness) ** fade_weight, so the path does not fade through ghosts (0 for either turns
        this off). It only raises weights, so the A* heuristic stays admissible and consistent.
        Returns {"nodes": node ids on the way (without the endpoints), "codes": (len + 2, d) including za and zb,
        "weight": the summed search weight, "length": the summed metric distance, "expanded": nodes A* or
        Dijkstra took off the queue}."""
        if search not in SEARCHES:
            raise InputError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
        q = self.q if realism_weight is None else realism_weight
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not (math.isfinite(q) and q >= 0):
            raise InputError(f"realism_weight must be a finite number >= 0, got {realism_weight!r}")
        q = float(q)
        for name, value in (("fade_floor", fade_floor), ("fade_weight", fade_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        attach = self.index.k if attach is None else attach
        za = np.asarray(za, dtype=np.float32).reshape(-1)
        zb = np.asarray(zb, dtype=np.float32).reshape(-1)
        xa, xb = self.points(np.stack([za, zb]))
        near_a, near_b = self._nearest(za, attach), self._nearest(zb, attach)
        self._check_connected(near_a, near_b)
        dist_a, dist_b = self._exact_distances(near_a, xa), self._exact_distances(near_b, xb)
        ca, cb = self.cost_at(np.stack([za, zb]))
        mid_a = self.cost_at(0.5 * (za[None].astype(np.float64) + self.codes[near_a]))
        mid_b = self.cost_at(0.5 * (zb[None].astype(np.float64) + self.codes[near_b]))
        w_a = dist_a * (_factor(np.r_[self.cost, ca], len(self.cost), near_a, mid_a, q) if q else 1.0)
        w_b = dist_b * (_factor(np.r_[self.cost, cb], len(self.cost), near_b, mid_b, q) if q else 1.0)
        heuristic = self._heuristic(self._distances_to(xb), near_b, w_b, q) if search == "astar" else None
        weight = "weight" if q == self.q else self._weight_fn(q)
        floor = self._fade_floor(za, zb, xa, xb, float(fade_floor))
        if fade_weight > 0 and (self.brightness < floor).any():
            fade = np.maximum(1.0, floor / np.maximum(self.brightness, 1e-12)) ** float(fade_weight)
            weight = _faded(weight, fade)
            w_a, w_b = w_a * fade[near_a], w_b * fade[near_b]
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
                total = sum(g[u][v]["weight"] if isinstance(weight, str) else weight(u, v, g[u][v]) for u, v in hops)
                length = sum(g[u][v]["distance"] for u, v in hops)
            finally:
                g.remove_node(src)
                g.remove_node(dst)
        inner = [int(n) for n in path[1:-1]]
        codes = np.concatenate([za[None], self.codes[inner], zb[None]]).astype(np.float32)
        return {"nodes": inner, "codes": codes, "weight": float(total), "length": float(length),
                "edge_evaluations": expanded[0]}

    def _fade_floor(self, za: NDArray, zb: NDArray, xa: NDArray, xb: NDArray, fraction: float) -> NDArray:
        """fraction times the blend of the decoded endpoints' brightness at each node's position between them."""
        if fraction == 0:
            return np.zeros(len(self.codes))
        ba, bb = self.model.decode(np.stack([za, zb])).astype(np.float64).mean(1)
        da, db = self._distances_to(xa), self._distances_to(xb)
        t = da / np.maximum(da + db, 1e-12)
        return fraction * ((1 - t) * ba + t * bb)

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
            return d["distance"] * ((0.25 * (cost[u] + 2.0 * d["mid"] + cost[v])) ** q if q else 1.0)

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


def _faded(weight, fade: NDArray):
    """Weights multiplied by the larger fade factor of an edge's two nodes (the endpoints' edges come with theirs).
    The factors as a Python list: A* calls this for every edge it looks at, and list indexing is several times
    faster than numpy scalar indexing."""
    f = fade.tolist()
    if isinstance(weight, str):
        def faded(u, v, d):
            return d[weight] if u < 0 or v < 0 else d[weight] * (f[u] if f[u] > f[v] else f[v])
    else:
        def faded(u, v, d):
            w = weight(u, v, d)
            return w if u < 0 or v < 0 else w * (f[u] if f[u] > f[v] else f[v])

    return faded


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
