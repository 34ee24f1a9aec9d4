"""The interpolation commands: interpolate, and the latent graph index (index build, index info)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from ..data import arrays, model_sources, sources
from ..data.sources import SPEC_HELP
from ..errors import DataError, InputError
from ..interpolation.build import DEFAULT_FAINT_WEIGHT, DEFAULT_K, DEFAULT_REALISM_WEIGHT, MAX_CODES, build_index
from ..interpolation.index import INDEX_FILE, METRICS, read_index
from ..interpolation.latent_map import DEFAULT_POINTS, MAP_FILE, build_latent_map, manifest_section, to_bytes
from ..interpolation.paths import METHODS, SPACINGS, interpolate, path_metrics
from ..interpolation.realism import Reference
from ..interpolation.search import SEARCHES, load_graph
from ..work_limits import MAX_STEPS
from .base import (
    check_out,
    check_png,
    echo,
    echo_json,
    json_option,
    main,
    model_options,
    open_model,
    save_grid,
    status_note,
)
from .model_commands import given, refuse_ignored
from .streams import open_images

DATA_HELP = SPEC_HELP


def _one(path: Path, index: int | None, model, name: str) -> np.ndarray:
    """One image from a file: the file's only image, or the one at --a-index / --b-index."""
    source = open_images(path, model)  # by row range: only the image asked for is read
    n = len(source)
    if index is None:
        if n != 1:
            raise InputError(f"{path} holds {n} images; pick one with --{name}-index I (0..{n - 1})")
        index = 0
    if not 0 <= index < n:
        raise InputError(f"--{name}-index {index} is out of range: {path} holds {n} images (0..{n - 1})")
    return source.read(index, index + 1)[0]


def _open_data(spec: str, split: str, model):
    """The images of a data source, its labels (or None), class names and where it was read: the data layer's
    sources read whole (an index build reads every row)."""
    source = model_sources.open_for_model(spec, model.manifest, split=split)
    if len(source) == 0:
        raise DataError(f"{source.where}: holds no images (0 rows); expected a data set to build the index from")
    return source.read(0, len(source)), source.labels(), sources.class_names(source, spec), source.where


def _describe(metrics: dict) -> str:
    text = (f"length {metrics['length']:.3f} (cosine), largest step {metrics['largest_step']:.3f}, brightness "
            f"ratio mean {metrics['brightness_ratio_mean']:.2f} / lowest {metrics['brightness_ratio_min']:.2f}")
    if metrics.get("realism") is not None:
        text += f", realism {metrics['realism']:.4f} (cosine distance to the nearest reference image)"
    return text


@main.command("interpolate")
@model_options
@click.argument("image_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("image_b", metavar="B", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="linear: straight line between the latent means; slerp: spherical arc; graph: shortest path "
                   "through the package's latent graph (build it with `vae-infer index build`), then refined.  "
                   "[default: linear; graph with --compare]")
@click.option("--steps", type=click.IntRange(min=2, max=MAX_STEPS), default=10, show_default=True, metavar="N",
              help=f"Images on the path, both endpoints included, at most {MAX_STEPS}.")
@click.option("--compare", is_flag=True,
              help="Also compute the linear path; --png draws the --method path (default graph) above the linear one.")
@click.option("--spacing", type=click.Choice(SPACINGS), default="data", show_default=True,
              help="data: steps at equal arc length in data space (they look even); latent: equal latent steps.")
@click.option("--a-index", type=click.IntRange(min=0), default=None, metavar="I",
              help="Which image of A when the file holds several.")
@click.option("--b-index", type=click.IntRange(min=0), default=None, metavar="J",
              help="Which image of B when the file holds several.")
@click.option("--search", type=click.Choice(SEARCHES), default="astar", show_default=True,
              help="Graph search: A* (admissible heuristic) or Dijkstra; both give the same path length.")
@click.option("--realism-weight", type=click.FloatRange(min=0), default=None, metavar="Q",
              help="Graph: exponent of the realism cost in edge weights and refinement (0: shortest in data space "
                   "only).  [default: the index's]")
@click.option("--no-refine", is_flag=True, help="Graph: keep the raw path through the node codes (no relaxation).")
@click.option("--reference", metavar="DATA", default=None,
              help="Real images to measure realism against (mean cosine distance of the frames to the nearest "
                   "one): " + DATA_HELP)
@click.option("--out", type=click.Path(path_type=Path), callback=check_out, default=None, metavar="OUT.npz",
              help="Write the path: .npz gets images and codes (and linear_images, linear_codes with --compare); "
                   ".npy the images only.")
@click.option("--png", type=click.Path(path_type=Path), callback=check_png, default=None, metavar="STRIP.png",
              help="Save the path as a strip of images (with --compare: two rows). Needs the viz extra.")
@json_option
def interpolate_command(model: Path, image_a: Path, image_b: Path, method: str | None, steps: int, compare: bool,
                        spacing: str, a_index: int | None, b_index: int | None, search: str,
                        realism_weight: float | None, no_refine: bool, reference: str | None, out: Path | None,
                        png: Path | None, device: str, threads: int | None, as_json: bool) -> None:
    """Interpolate between two images through the latent space.

    A and B are image files (.png, .npy, .npz; FILE.npz:KEY picks an array); the path runs from A's latent mean
    to B's and is decoded to STEPS images. Prints each path's length in data space (distances between
    successive decoded images on a fine resampling), its largest step and, with --reference, its realism."""
    method = method or ("graph" if compare else "linear")
    refuse_ignored(given("search", "realism_weight", "no_refine"), method != "graph",
                   f"options of --method graph, not {method}")
    if compare and method == "linear":
        raise click.UsageError("--compare draws --method above the linear path; pick --method graph or slerp")
    m = open_model(model, device, threads)
    xa, xb = _one(image_a, a_index, m, "a"), _one(image_b, b_index, m, "b")
    ref = None
    if reference is not None:
        images, _, _, origin = _open_data(reference, "train", m)
        status_note(f"realism against {len(images)} images from {origin}", quiet=as_json)
        ref = Reference(m, images)
    options = {"search": search, "realism_weight": realism_weight, "refine": not no_refine} if method == "graph" else {}
    paths = {}
    for name in [method] + (["linear"] if compare else []):
        info: dict = {}
        images, codes = interpolate(m, xa, xb, steps=steps, method=name, spacing=spacing, return_codes=True,
                                    info=info, **(options if name == method else {}))
        metrics = path_metrics(m, codes, reference=ref)
        if name == "graph":
            metrics["graph_nodes"] = len(info["graph_nodes"])
        paths[name] = (images, codes, metrics)
    if out is not None:
        if out.suffix.lower() == ".npz":
            data = {"images": paths[method][0], "codes": paths[method][1]}
            if compare:
                data.update({"linear_images": paths["linear"][0], "linear_codes": paths["linear"][1]})
            arrays.write_array(out, data)
        else:
            arrays.write_array(out, paths[method][0])
    if png is not None:
        rows = [paths[method][0]] + ([paths["linear"][0]] if compare else [])
        title = f"{method} (top) vs linear (bottom)" if compare else f"{method} interpolation, {steps} steps"
        save_grid(np.concatenate(rows), m, png, ncols=steps, title=title)
    if as_json:
        echo_json({"method": method, "steps": steps, "spacing": spacing,
                   "paths": {name: p[2] for name, p in paths.items()},
                   "out": out and str(out), "png": png and str(png)})
        return
    for name, (_, _, metrics) in paths.items():
        echo(f"{name}: {steps} images, {_describe(metrics)}")
    if compare:
        a, b = paths[method][2], paths["linear"][2]
        ratios = f"length x{a['length'] / b['length']:.3f}"
        if a.get("realism") is not None:
            ratios += f", realism x{a['realism'] / b['realism']:.3f}"
        echo(f"{method} vs linear: {ratios}")
    for path in (out, png):
        if path is not None:
            echo(f"wrote {path}")


@main.group("index")
def index_group() -> None:
    """The latent graph index of graph interpolation, stored in the model package."""


@index_group.command("build")
@model_options
@click.option("--data", required=True, metavar="DATA",
              help="The images whose latent means make the graph: " + DATA_HELP)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which split of a named dataset, IDX folder or .npz.")
@click.option("--k", "k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True, metavar="K",
              help="Neighbours per graph node.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True,
              help="Edge distance: chordal (cosine) distance between the decoded images of the two nodes, their "
                   "Euclidean distance (decoded), or the latent distance.")
@click.option("--cell", type=click.FloatRange(min=0, min_open=True), default=None, metavar="W",
              help="Landmark grid spacing (latent units): one node per occupied cell.  [default: 0.1 x the codes' "
                   "standard deviation]")
@click.option("--field-cell", type=click.FloatRange(min=0, min_open=True), default=None, metavar="W",
              help="Realism grid spacing (2-D latents).  [default: 0.4 x --cell]")
@click.option("--realism-weight", type=click.FloatRange(min=0), default=DEFAULT_REALISM_WEIGHT, show_default=True,
              metavar="Q", help="Default exponent of the realism cost in edge weights (0: distance only).")
@click.option("--faint-weight", type=click.FloatRange(min=0), default=DEFAULT_FAINT_WEIGHT, show_default=True,
              metavar="F", help="Exponent of the faintness penalty in the realism cost.")
@click.option("--max-codes", type=click.IntRange(min=3), default=MAX_CODES, show_default=True, metavar="N",
              help="Larger datasets are subsampled (seeded) to this many codes.")
@click.option("--no-bridge", is_flag=True,
              help="Leave a disconnected graph in pieces (queries between pieces then fail) instead of bridging.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S")
@click.option("--map-split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="The split of DATA whose codes (and labels) make the latent map.")
@click.option("--map-points", type=click.IntRange(min=1), default=DEFAULT_POINTS, show_default=True, metavar="N",
              help="Images in the latent map (a seeded random sample when the split holds more).")
@click.option("--no-map", is_flag=True, help="Build the index only; keep the package's latent map as it is.")
@json_option
def index_build(model: Path, data: str, split: str, k: int, metric: str, cell: float | None,
                field_cell: float | None, realism_weight: float, faint_weight: float, max_codes: int,
                no_bridge: bool, seed: int, map_split: str, map_points: int, no_map: bool, device: str,
                threads: int | None, as_json: bool) -> None:
    """Build (or rebuild) the latent graph index and the latent map of a model package.

    Encodes the images of DATA, builds the k-nearest-neighbour graph whose nodes are the codes of real images
    that decode well (one per cell of a latent grid), with chordal (cosine) edge distances and the realism
    field, and stores it in the package as latent_index.npz. Unless --no-map, it also encodes a sample of the
    --map-split split (with its labels, when DATA has them) as latent_map.npz. Both are listed with their sha256
    in model.json; the package is rewritten once, atomically, keeping every other file and section."""
    from ..package.files import update_package

    m = open_model(model, device, threads)
    images, labels, names, origin = _open_data(data, split, m)
    status_note(f"encoding {len(images)} images from {origin}...", quiet=as_json)
    index = build_index(m, images, k=k, metric=metric, cell=cell, field_cell=field_cell,
                        realism_weight=realism_weight, faint_weight=faint_weight, max_codes=max_codes,
                        bridge=not no_bridge, seed=seed)
    data_bytes = index.to_bytes()
    has_splits = bool(sources.spec_splits(data))  # a source without splits is read whole, whatever --split says
    section = index.manifest_section(INDEX_FILE, f"{origin} ({split if has_splits else 'all'})")
    section["bytes"] = len(data_bytes)
    files = {INDEX_FILE: data_bytes}
    sections: dict[str, Any] = {"latent_index": section}
    if not no_map:
        map_images, map_origin = images, origin
        if map_split != split and has_splits:
            map_images, labels, names, map_origin = _open_data(data, map_split, m)
        lmap = build_latent_map(m, map_images, labels, names if labels is not None else None, points=map_points,
                                seed=seed, source=f"{map_origin} ({map_split if has_splits else 'all'})")
        files[MAP_FILE] = to_bytes(lmap)
        sections["latent_map"] = {**manifest_section(lmap, MAP_FILE, seed), "bytes": len(files[MAP_FILE])}
    manifest = update_package(model, files, **sections)
    assert manifest.latent_index is not None, "update_package wrote the index's section"
    section = manifest.latent_index
    if as_json:
        echo_json({**section, "sha256": manifest.files[section["file"]], "model": str(model),
                   "latent_map": manifest.latent_map if not no_map else None})
        return
    echo(f"built the latent graph of {model} from {index.n_codes} codes ({origin}) in "
               f"{index.info['build_seconds']:.2f} s")
    echo(f"  {index.n_nodes} nodes, {len(index.edges)} edges (k={k}, {metric} distances), "
               f"{section['n_bridges']} bridges; {section['bytes'] / 1e6:.2f} MB")
    echo(f"  wrote {Path(model) / section['file']} (sha256 {manifest.files[section['file']][:16]}...)")
    if not no_map:
        lm = manifest.latent_map
        assert lm is not None, "update_package wrote the map's section"
        echo(f"  latent map: {lm['points']} codes from {lm['source']}"
                   f"{', labelled' if lm['labelled'] else ', no labels'}; wrote {Path(model) / lm['file']}")


@index_group.command("info")
@model_options
@json_option
def index_info(model: Path, device: str, threads: int | None, as_json: bool) -> None:
    """Describe a package's latent graph index, after checking its sha256 and loading it."""
    m = open_model(model, device, threads)
    index = read_index(m)
    graph = load_graph(m)
    assert m.manifest.latent_index is not None, "read_index refuses a package without one"
    section = dict(m.manifest.latent_index)
    components = int(graph.labels.max()) + 1
    if as_json:
        echo_json({**section, "components": components, "sha256": m.manifest.files[section["file"]]})
        return
    for key in ("file", "source", "n_codes", "n_nodes", "n_edges", "n_bridges", "k", "metric", "cell",
                "field_cell", "realism_weight", "build_seconds", "bytes"):
        if key in section:
            echo(f"{key + ':':<16} {section[key]}")
    echo(f"{'components:':<16} {components}")
    echo(f"{'sha256:':<16} {m.manifest.files[section['file']]} (verified)")
    if index.n_nodes != section.get("n_nodes"):
        echo(f"warning: model.json says {section.get('n_nodes')} nodes, the file holds {index.n_nodes}")
