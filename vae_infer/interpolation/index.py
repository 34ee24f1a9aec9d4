"""The latent graph index's stored form: its arrays (LatentIndex), their .npz file in the model package and the
`latent_index` section of model.json (save_index, read_index).

The index is stored as plain arrays in an .npz file (no pickles), listed in model.json with its sha256; reading
checks the sha256, the format number, every array's shape, dtype range and finiteness, and refuses a malformed
file with a ModelPackageError that says to rebuild it (`vae-infer index build`). How the index is built is
vae_infer.interpolation.build; how it is searched is vae_infer.interpolation.search.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelPackageError

INDEX_FILE = "latent_index.npz"
INDEX_FORMAT = 2  # 2: nodes are real codes (rows), cosine metric, edge midpoint costs
METRICS = ("cosine", "decoded", "latent")


@dataclass(frozen=True)
class LatentIndex:
    """The stored arrays of a latent graph index (see the module docstring)."""

    codes: NDArray[np.float32]  # (n, d) node codes
    counts: NDArray[np.int32]  # (n,) codes of the dataset per node
    rows: NDArray[np.int64]  # (n,) the dataset row whose code each node is (-1: built from codes)
    edges: NDArray[np.int32]  # (m, 2) node pairs, i < j
    distance: NDArray[np.float32]  # (m,) metric distance of each edge (chordal, decoded or latent)
    edge_cost: NDArray[np.float32]  # (m,) cost field at each edge's latent midpoint
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
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # build details for model.json (not in the npz)

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
            buf, format=np.int32(INDEX_FORMAT), codes=self.codes, counts=self.counts, rows=self.rows,
            edges=self.edges, distance=self.distance, edge_cost=self.edge_cost, bridge=self.bridge, cost=self.cost,
            field=self.field, field_origin=self.field_origin, field_cell=np.float64(self.field_cell),
            k=np.int32(self.k),
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
        need = {"format", "codes", "counts", "rows", "edges", "distance", "edge_cost", "bridge", "cost", "field",
                "field_origin", "field_cell", "k", "metric", "cell", "realism_ref", "n_codes", "realism_weight",
                "alt_nodes", "alt_dist"}
        if not need <= set(a):
            raise ModelPackageError(f"{origin}: missing arrays {sorted(need - set(a))}; rebuild the index")
        if a["format"].shape != () or a["format"].dtype.kind not in "iu" or int(a["format"]) != INDEX_FORMAT:
            raise ModelPackageError(
                f"{origin}: index format {int(a['format'])}, this vae_infer reads {INDEX_FORMAT}; rebuild the index"
            )
        # Every float array and number of the file is finite, checked before any cast: the A* landmark distances
        # alone may hold +inf (a node no landmark reaches), and validate refuses NaN and negatives there.
        nonfinite = sorted(name for name, arr in a.items()
                           if name != "alt_dist" and arr.dtype.kind in "fc" and not np.isfinite(arr).all())
        if nonfinite:
            raise ModelPackageError(f"{origin} is malformed: the array(s) {', '.join(nonfinite)} hold NaN or inf; "
                                    f"rebuild the index")
        index = cls(
            codes=a["codes"].astype(np.float32), counts=a["counts"].astype(np.int32),
            rows=a["rows"].astype(np.int64), edges=a["edges"].astype(np.int32),
            distance=a["distance"].astype(np.float32), edge_cost=a["edge_cost"].astype(np.float32),
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
        for name, arr, size in (("counts", self.counts, n), ("rows", self.rows, n), ("cost", self.cost, n),
                                ("distance", self.distance, m), ("edge_cost", self.edge_cost, m),
                                ("bridge", self.bridge, m)):
            if arr.shape != (size,):
                problems.append(f"{name} shaped {arr.shape}, expected ({size},)")
        for name, values in (("codes", self.codes), ("distance", self.distance), ("cost", self.cost),
                             ("edge_cost", self.edge_cost), ("field", self.field),
                             ("field_origin", self.field_origin), ("field_cell", self.field_cell), ("cell", self.cell),
                             ("realism_ref", self.realism_ref)):
            if np.size(values) and not np.all(np.isfinite(values)):
                problems.append(f"{name} holds NaN or inf")
        if m and self.distance.min() < 0:
            problems.append("negative edge distances")
        if (self.cost.size and self.cost.min() <= 0) or (self.edge_cost.size and self.edge_cost.min() <= 0):
            problems.append("non-positive costs")
        if self.alt_dist.shape != (len(self.alt_nodes), n) or (len(self.alt_nodes) and (
                self.alt_nodes.min() < 0 or self.alt_nodes.max() >= n)):
            problems.append(f"A* landmarks shaped {self.alt_nodes.shape} / {self.alt_dist.shape} for {n} nodes")
        if np.isnan(self.alt_dist).any() or (self.alt_dist.size and self.alt_dist.min() < 0):
            problems.append("alt_dist (A* landmark distances) holds NaN or negative values")
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


def save_index(package_dir: str | Path, index: LatentIndex, source: str | None = None,
               file_name: str = INDEX_FILE):
    """Store the index in a model package (atomically, with its sha256 in model.json); returns the new manifest."""
    from ..package.files import update_package

    data = index.to_bytes()
    section = index.manifest_section(file_name, source)
    section["bytes"] = len(data)
    return update_package(package_dir, {file_name: data}, latent_index=section)


def read_index(model) -> LatentIndex:
    """The index stored in a loaded model's package, sha256-checked."""
    from ..package.files import read_verified

    section = model.manifest.latent_index
    if not section:
        raise ModelPackageError(
            f"{model.path}: model.json has no latent_index section, so graph interpolation has no graph; build one "
            f"with `vae-infer index build {model.path} --data DATASET` (or vae_infer.interpolation.build.build_index)"
        )
    name = section.get("file")
    if not isinstance(name, str) or name not in model.manifest.files:
        raise ModelPackageError(f"{model.path}: latent_index names the file {name!r}, which model.json does not list")
    data = read_verified(model.path, model.manifest, name)
    return parse_index(data, model.latent_size, str(Path(model.path) / name))


def parse_index(data: bytes, latent_size: int, origin: str) -> LatentIndex:
    """The index in a (verified) latent_index.npz, every array checked (shapes, ranges, finite values) against a
    model whose latent has `latent_size` dimensions; the package loader calls it too, so a bad index is refused
    when the package loads."""
    index = LatentIndex.from_bytes(data, origin)
    if index.latent_size != latent_size:
        raise ModelPackageError(
            f"{origin}: index codes are {index.latent_size}-D but the model's latent is {latent_size}-D; "
            f"rebuild the index"
        )
    return index


def node_points(model, codes: NDArray, metric: str) -> NDArray[np.float32]:
    """Where codes live in the metric space of an index's edges (METRICS): their decoded images scaled to
    unit length ("cosine"), their decoded images ("decoded"), or the codes themselves ("latent")."""
    from .realism import unit_rows

    if metric == "latent":
        return np.asarray(codes, dtype=np.float32)
    decoded = model.decode(codes)
    return unit_rows(decoded)[0] if metric == "cosine" else decoded
