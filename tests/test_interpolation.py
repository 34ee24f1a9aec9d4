"""Interpolation (linear, slerp, graph), the latent graph index, path metrics and their CLI, on the tiny package
and synthetic latent layouts (fast: no real data, no torch)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vae_infer
import vae_infer.cli.interpolate_commands  # noqa: F401  (registers interpolate and index on main)
from tests.conftest import fails, needs_real_data, ok
from vae_infer import cli
from vae_infer.errors import InputError, ModelPackageError
from vae_infer.interpolation import build as lb
from vae_infer.interpolation import field as lf
from vae_infer.interpolation import index as li
from vae_infer.interpolation import latent_map as lm
from vae_infer.interpolation import paths as it
from vae_infer.interpolation import realism
from vae_infer.interpolation import search as ls

# -- helpers and fixtures ------------------------------------------------------------------------------------


def far_pair(model, images) -> tuple[int, int]:
    """The two tiny images whose latent means lie farthest apart."""
    mu, _ = model.encode(images)
    d = ((mu[:, None] - mu[None]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d.argmax()), d.shape)
    return int(i), int(j)


def cloud(model, images, n=1500, seed=0) -> np.ndarray:
    """Synthetic codes spread like the tiny model's codes (which sit in a small patch of latent space)."""
    mu, _ = model.encode(images)
    rng = np.random.default_rng(seed)
    return (mu.mean(0) + rng.standard_normal((n, 2)) * mu.std(0) * 1.5).astype(np.float32)


def arc_codes(za, zb, n_cluster=300, n_arc=400, seed=0) -> tuple[np.ndarray, np.ndarray, float]:
    """Two clusters around za and zb joined only by a semicircular band: the disc around their midpoint is empty.
    Returns (codes, midpoint, radius)."""
    rng = np.random.default_rng(seed)
    mid, r = (za + zb) / 2, float(np.linalg.norm(zb - za)) / 2
    u = (zb - za) / (2 * r)
    v = np.array([-u[1], u[0]])
    blobs = [c + rng.standard_normal((n_cluster, 2)) * 0.08 * r for c in (za, zb)]
    t = rng.uniform(0, np.pi, n_arc)
    rad = r * (1 + rng.uniform(-0.08, 0.08, n_arc))
    arc = mid + (np.cos(np.pi - t)[:, None] * u + np.sin(t)[:, None] * v) * rad[:, None]
    codes = np.concatenate(blobs + [arc]).astype(np.float32)
    keep = (np.linalg.norm(codes - mid, axis=1) > 0.6 * r) | (np.linalg.norm(codes - za, axis=1) < 0.35 * r) | (
        np.linalg.norm(codes - zb, axis=1) < 0.35 * r)
    return codes[keep], mid, r


@pytest.fixture(scope="module")
def graph_package(tmp_path_factory, tiny_package, tiny_model, tiny_images):
    """A copy of the tiny package carrying a latent index built from synthetic codes."""
    dest = tmp_path_factory.mktemp("graph") / "tiny-model"
    shutil.copytree(tiny_package, dest)
    index = lb.build_index(tiny_model, codes=cloud(tiny_model, tiny_images), k=8)
    li.save_index(dest, index, source="synthetic cloud")
    return dest


@pytest.fixture(scope="module")
def graph_model(graph_package):
    return vae_infer.load(graph_package, threads=1)


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def chordal_steps(images) -> np.ndarray:
    unit, _ = realism.unit_rows(images)
    return np.linalg.norm(np.diff(unit.astype(np.float64), axis=0), axis=1)


# -- linear and slerp ------------------------------------------------------------------------------------------


def test_linear_path_keeps_endpoints_and_steps(tiny_model, tiny_images):
    a, b = far_pair(tiny_model, tiny_images)
    mu, _ = tiny_model.encode(tiny_images[[a, b]])
    for steps in (2, 3, 10):
        images, codes = tiny_model.interpolate(tiny_images[a], tiny_images[b], steps=steps, return_codes=True)
        assert images.shape == (steps, 784) and codes.shape == (steps, 2)
        np.testing.assert_array_equal(codes[0], mu[0])
        np.testing.assert_array_equal(codes[-1], mu[1])
        np.testing.assert_array_equal(images, tiny_model.decode(codes))
    _, codes = tiny_model.interpolate(tiny_images[a], tiny_images[b], steps=5, spacing="latent", return_codes=True)
    np.testing.assert_allclose(codes, np.linspace(mu[0], mu[1], 5), atol=1e-6)


def test_data_spacing_makes_even_steps(tiny_model, tiny_images):
    a, b = far_pair(tiny_model, tiny_images)
    for method in ("linear", "slerp"):
        even = tiny_model.interpolate(tiny_images[a], tiny_images[b], steps=9, method=method)
        steps = np.linalg.norm(np.diff(even, axis=0), axis=1)
        assert steps.max() / steps.min() < 1.1, (method, steps)
    plain = tiny_model.interpolate(tiny_images[a], tiny_images[b], steps=9, spacing="latent")
    plain_steps = np.linalg.norm(np.diff(plain, axis=0), axis=1)
    assert plain_steps.max() / plain_steps.min() > steps.max() / steps.min()  # the tiny decoder is uneven


def test_slerp_turns_at_constant_angle_and_interpolates_the_norm():
    codes = it.slerp_codes(np.array([1.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32), 3)
    np.testing.assert_allclose(codes[1], [np.sqrt(2), np.sqrt(2)], atol=1e-6)  # 45 degrees, norm 2
    antipodal = it.slerp_codes(np.array([2.0, 0.0], np.float32), np.array([-2.0, 0.0], np.float32), 3)
    np.testing.assert_allclose(antipodal[1], [0.0, 2.0], atol=1e-6)  # counter-clockwise
    through_zero = it.slerp_codes(np.array([0.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32), 3)
    np.testing.assert_allclose(through_zero[1], [0.5, 0.5])


# -- graph interpolation ----------------------------------------------------------------------------------------


def test_graph_path_keeps_endpoints_and_steps(graph_model, tiny_images):
    a, b = far_pair(graph_model, tiny_images)
    mu, _ = graph_model.encode(tiny_images[[a, b]])
    for steps in (2, 7):
        info = {}
        images, codes = graph_model.interpolate(tiny_images[a], tiny_images[b], steps=steps, method="graph",
                                                return_codes=True, info=info)
        assert images.shape == (steps, 784) and codes.shape == (steps, 2)
        np.testing.assert_array_equal(codes[[0, -1]], mu)
        np.testing.assert_array_equal(images[[0, -1]], graph_model.decode(mu))
        assert info["graph_nodes"] and info["refine_energy"] <= info["refine_energy_start"]
    even = graph_model.interpolate(tiny_images[a], tiny_images[b], steps=9, method="graph")
    steps_ = np.linalg.norm(np.diff(even, axis=0), axis=1)
    assert steps_.max() / steps_.min() < 1.15


def test_astar_and_dijkstra_find_equal_lengths(graph_model, tiny_images):
    graph = ls.load_graph(graph_model)
    mu, _ = graph_model.encode(tiny_images)
    rng = np.random.default_rng(0)
    codes = np.concatenate([mu, cloud(graph_model, tiny_images, 20, seed=5)])
    for q in (None, 0.0, 3.0):  # the index's weights use ALT landmarks; other weights the decoded distance only
        for i, j in rng.choice(len(codes), (12, 2)):
            if i == j:
                continue
            a = graph.shortest_path(codes[i], codes[j], search="astar", realism_weight=q)
            d = graph.shortest_path(codes[i], codes[j], search="dijkstra", realism_weight=q)
            assert a["weight"] == pytest.approx(d["weight"], rel=1e-9), (q, i, j)
            assert a["edge_evaluations"] <= d["edge_evaluations"]


def test_astar_heuristic_never_overestimates(graph_model, tiny_images):
    """h(u) <= the true remaining distance from u, for every node, against networkx's own Dijkstra."""
    import networkx as nx

    graph = ls.load_graph(graph_model)
    mu, _ = graph_model.encode(tiny_images[:2])
    zb = mu[1]
    xb = graph.points(zb[None])[0]
    near_b = graph._nearest(zb, graph.index.k)
    cb = graph.cost_at(zb[None])[0]
    mid = graph.cost_at(0.5 * (zb[None].astype(np.float64) + graph.codes[near_b]))
    w_b = graph._exact_distances(near_b, xb) * ls._factor(np.r_[graph.cost, cb], len(graph.cost), near_b, mid,
                                                          graph.q)
    h = graph._heuristic(graph._distances_to(xb), near_b, w_b, graph.q)
    g = graph.graph.copy()
    g.add_weighted_edges_from((-2, int(n), float(w)) for n, w in zip(near_b, w_b, strict=True))
    true = nx.single_source_dijkstra_path_length(g, -2, weight="weight")
    slack = [true[n] - h(n, -2) for n in range(graph.index.n_nodes)]
    assert min(slack) >= -1e-9
    assert np.mean([h(n, -2) / true[n] for n in range(graph.index.n_nodes) if true[n] > 0]) > 0.5  # and it helps


def test_graph_goes_around_an_empty_region_the_line_crosses(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    a, b = far_pair(model, tiny_images)
    mu, _ = model.encode(tiny_images[[a, b]])
    codes, mid, r = arc_codes(mu[0], mu[1])
    li.save_index(tiny_copy, lb.build_index(model, codes=codes, k=6, metric="latent"), source="arc")
    model = vae_infer.load(tiny_copy, threads=1)
    kw = {"steps": 24, "return_codes": True}
    _, line = model.interpolate(tiny_images[a], tiny_images[b], **kw)
    assert np.linalg.norm(line - mid, axis=1).min() < 0.05 * r  # the straight line crosses the empty disc
    _, raw = model.interpolate(tiny_images[a], tiny_images[b], method="graph", refine=False, **kw)
    _, refined = model.interpolate(tiny_images[a], tiny_images[b], method="graph", **kw)
    for path in (raw, refined):
        assert np.linalg.norm(path - mid, axis=1).min() > 0.55 * r  # the graph path goes around it
        side = (path - mid) @ np.array([-(mu[1] - mu[0])[1], (mu[1] - mu[0])[0]])
        assert (side[1:-1] > 0).all()  # on the side where the band is
    # refinement shortens the raw graph path (a zig-zag through the nodes) but stays on the band
    assert it.path_metrics(model, refined)["length"] < it.path_metrics(model, raw)["length"]
    # the decoded metric goes around too
    li.save_index(tiny_copy, lb.build_index(model, codes=codes, k=6), source="arc")
    model = vae_infer.load(tiny_copy, threads=1)
    _, raw = model.interpolate(tiny_images[a], tiny_images[b], method="graph", refine=False, **kw)
    assert np.linalg.norm(raw - mid, axis=1).min() > 0.55 * r


def test_a_disconnected_graph_is_bridged_or_named(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    a, b = far_pair(model, tiny_images)
    mu, _ = model.encode(tiny_images[[a, b]])
    rng = np.random.default_rng(1)
    gap = float(np.linalg.norm(mu[1] - mu[0]))
    codes = np.concatenate([c + rng.standard_normal((200, 2)) * 0.05 * gap for c in mu]).astype(np.float32)
    apart = lb.build_index(model, codes=codes, k=4, bridge=False)
    assert apart.bridge.sum() == 0 and ls._components(apart.n_nodes, apart.edges).max() == 1
    li.save_index(tiny_copy, apart)
    model = vae_infer.load(tiny_copy, threads=1)
    with pytest.raises(InputError, match=r"disconnected \(2 components\): image a attaches to component \d+ \(\d+ "
                                         r"nodes\) and image b to component \d+"):
        model.interpolate(tiny_images[a], tiny_images[b], method="graph")
    joined = lb.build_index(model, codes=codes, k=4)
    assert joined.bridge.sum() == 1 and ls._components(joined.n_nodes, joined.edges).max() == 0
    li.save_index(tiny_copy, joined)
    model = vae_infer.load(tiny_copy, threads=1)
    info = {}
    model.interpolate(tiny_images[a], tiny_images[b], method="graph", info=info)
    bridge = {tuple(e) for e in joined.edges[joined.bridge].tolist()}
    hops = {tuple(sorted(h)) for h in zip(info["graph_nodes"][:-1], info["graph_nodes"][1:], strict=True)}
    assert bridge <= hops  # the only way across is the bridge
    assert model.manifest.latent_index["n_bridges"] == 1


def test_queries_from_several_threads_agree(graph_model, tiny_images):
    pairs = [(0, 5), (3, 17), (8, 30), (12, 2)]
    alone = [graph_model.interpolate(tiny_images[i], tiny_images[j], steps=6, method="graph") for i, j in pairs]
    got = [None] * len(pairs)

    def work(k):
        i, j = pairs[k]
        got[k] = graph_model.interpolate(tiny_images[i], tiny_images[j], steps=6, method="graph")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(alone, got, strict=True):
        np.testing.assert_array_equal(x, y)
    assert set(ls.load_graph(graph_model).graph.nodes) == set(range(ls.load_graph(graph_model).index.n_nodes))


# -- the index in the package -------------------------------------------------------------------------------------


def test_index_survives_save_and_load_with_its_sha256(graph_package, graph_model):
    section = graph_model.manifest.latent_index
    data = (graph_package / section["file"]).read_bytes()
    assert section["file"] == "latent_index.npz" and section["bytes"] == len(data)
    assert graph_model.manifest.files["latent_index.npz"] == hashlib.sha256(data).hexdigest()
    assert section["source"] == "synthetic cloud" and section["k"] == 8 and section["metric"] == "cosine"
    stored = li.read_index(graph_model)
    again = li.LatentIndex.from_bytes(stored.to_bytes())
    for name in ("codes", "counts", "rows", "edges", "distance", "edge_cost", "bridge", "cost", "field",
                 "field_origin", "alt_nodes", "alt_dist"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(again, name), err_msg=name)
    assert section["n_nodes"] == stored.n_nodes and section["n_edges"] == len(stored.edges)
    assert stored.to_bytes() == data  # the same arrays give the same bytes
    with np.load(graph_package / section["file"], allow_pickle=False) as z:  # plain arrays, no pickles
        assert all(z[name].dtype != object for name in z.files)
    # the rest of the package is untouched and still verifies
    assert vae_infer.load(graph_package, threads=1).decode(np.zeros((1, 2))).shape == (1, 784)


def test_missing_or_tampered_index(tiny_copy, tiny_model, tiny_images):
    with pytest.raises(ModelPackageError, match="no latent_index section.*vae-infer index build"):
        tiny_model.interpolate(tiny_images[0], tiny_images[1], method="graph")
    li.save_index(tiny_copy, lb.build_index(tiny_model, codes=cloud(tiny_model, tiny_images, 300)))
    path = tiny_copy / "latent_index.npz"
    model = vae_infer.load(tiny_copy, threads=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # changed after loading: the graph is read (and checked) on first use
    with pytest.raises(ModelPackageError, match="latent_index.npz does not match model.json: sha256"):
        model.interpolate(tiny_images[0], tiny_images[1], method="graph")
    with pytest.raises(ModelPackageError, match="latent_index.npz does not match model.json: sha256"):
        vae_infer.load(tiny_copy, threads=1)  # and loading refuses the package
    path.unlink()
    with pytest.raises(ModelPackageError, match="cannot read .*latent_index.npz"):
        model.interpolate(tiny_images[0], tiny_images[1], method="graph")


def test_a_malformed_index_file_is_refused():
    with pytest.raises(ModelPackageError, match="expected a numpy .npz of index arrays"):
        li.LatentIndex.from_bytes(b"not an npz", "x.npz")
    import io

    buf = io.BytesIO()
    np.savez(buf, format=np.int32(1), codes=np.zeros((3, 2), np.float32))
    with pytest.raises(ModelPackageError, match=r"missing arrays \['alt_dist'"):
        li.LatentIndex.from_bytes(buf.getvalue(), "x.npz")


def test_large_datasets_are_subsampled(tiny_model, tiny_images):
    codes = cloud(tiny_model, tiny_images, 900)
    index = lb.build_index(tiny_model, codes=codes, max_codes=200, seed=3)
    assert index.n_codes == 200 and index.info["n_given"] == 900
    assert index.n_nodes <= 200 and index.counts.sum() == 200
    capped = lb.build_index(tiny_model, codes=codes, max_nodes=50)
    assert capped.n_nodes <= 50 and capped.cell > index.cell  # the landmark grid was coarsened


def test_index_from_images_has_a_realism_field(tiny_model, tiny_images):
    index = lb.build_index(tiny_model, np.concatenate([tiny_images] * 4), k=4)
    assert index.has_field and index.realism_ref > 0 and index.n_codes == 128
    assert np.median(index.cost) == pytest.approx(1.0, rel=0.05)  # costs are relative to the nodes' median
    assert index.field.max() == pytest.approx(index.field[0, 0])  # far from the data: the largest cost


def test_realism_field_matches_brute_force(tiny_model, tiny_images):
    mu, _ = tiny_model.encode(tiny_images)
    cell, radius = 0.05, 2
    x = tiny_model.as_images(tiny_images)
    cosine, ratio, origin = lf.realism_field(tiny_model, mu, x, mu.min(0), cell, radius, block=3)
    ux, _ = realism.unit_rows(x)
    q = np.floor((mu - origin) / cell).astype(int)
    checked = 0
    for (iy, ix) in [tuple(v) for v in np.argwhere(np.isfinite(cosine))[::7]]:
        centre = origin + (np.array([ix, iy]) + 0.5) * cell
        near = np.flatnonzero((np.abs(q[:, 0] - ix) <= radius) & (np.abs(q[:, 1] - iy) <= radius))
        dec = tiny_model.decode(centre[None].astype(np.float32))
        sims = ux[near] @ realism.unit_rows(dec)[0][0]
        assert cosine[iy, ix] == pytest.approx(1 - sims.max(), abs=1e-5)
        assert ratio[iy, ix] == pytest.approx(dec.mean() / x[near[sims.argmax()]].mean(), rel=1e-4)
        checked += 1
    assert checked > 5 and np.isinf(cosine[0, 0]) and np.isnan(ratio[0, 0])


def test_knn_is_exact():
    p = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    got = lb.knn(p, 5, chunk=64)
    d = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    want = np.argsort(d, axis=1)[:, :5]
    assert all(set(g) == set(w) for g, w in zip(got.tolist(), want.tolist(), strict=True))


def test_bilinear_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    field = rng.random((6, 7)).astype(np.float32)
    z = rng.uniform(0.1, 0.5, (20, 2))
    value, grad = lf.bilinear(field, np.zeros(2, np.float32), 0.1, z, grad=True)
    h = 1e-6
    for a in range(2):
        dz = np.zeros(2)
        dz[a] = h
        fd = (lf.bilinear(field, np.zeros(2, np.float32), 0.1, z + dz) - lf.bilinear(field, np.zeros(2), 0.1, z - dz))
        np.testing.assert_allclose(grad[:, a], fd / (2 * h), rtol=1e-4, atol=1e-3)
    assert lf.bilinear(field, np.zeros(2), 0.1, np.array([[0.05, 0.05]]))[0] == pytest.approx(field[0, 0])


# -- refinement ----------------------------------------------------------------------------------------------------


def test_relax_straightens_a_zigzag_and_evens_the_steps():
    z = np.stack([np.linspace(0, 1, 12), np.where(np.arange(12) % 2, 0.3, -0.3)], 1)
    z[0], z[-1] = (0, 0), (1, 0)
    out, stats = it.relax(lambda c: np.asarray(c, np.float32), z, iterations=20)
    np.testing.assert_array_equal(out[[0, -1]], z[[0, -1]].astype(np.float32))
    np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-3)
    np.testing.assert_allclose(np.diff(out[:, 0]), 1 / 11, atol=1e-3)
    assert stats["energy"] < stats["energy_start"]


def test_relax_avoids_an_expensive_region():
    """With a cost field that is high in a disc, the weighted energy bends the path around it."""

    def cost(z, grad=False):
        r2 = (z**2).sum(1)
        c = 1 + 9 * np.exp(-r2 / 0.05)
        return (c, (-9 * np.exp(-r2 / 0.05) / 0.05 * 2)[:, None] * z) if grad else c

    z = np.stack([np.linspace(-1, 1, 21), np.full(21, 0.02)], 1)
    out, _ = it.relax(lambda c: np.asarray(c, np.float32), z, cost=cost, power=2, iterations=40)
    assert np.linalg.norm(out, axis=1).min() > 0.25


# -- path metrics -------------------------------------------------------------------------------------------------


def test_path_metrics_of_codes_and_images(tiny_model, tiny_images):
    codes = np.array([[0.0, -0.3], [0.2, 0.0], [0.45, 0.2]], np.float32)
    m = tiny_model.path_metrics(codes, fine=8)
    fine = tiny_model.decode(it.subdivide(codes, 8))
    assert m["kind"] == "codes" and m["points"] == 3
    assert m["length"] == pytest.approx(chordal_steps(fine).sum(), rel=1e-6)
    assert m["length_l2"] == pytest.approx(np.linalg.norm(np.diff(fine, axis=0), axis=1).sum(), rel=1e-6)
    x = tiny_model.decode(codes)
    assert m["largest_step"] == pytest.approx(chordal_steps(x).max(), rel=1e-6)
    assert m["realism"] is None and m["frames"]["realism"] is None
    assert m["length"] >= chordal_steps(x).sum() - 1e-6  # finer is never shorter
    # images against themselves: exactly zero, not float32 cancellation noise (0.0037 before it was fixed)
    self_ = tiny_model.path_metrics(x, reference=x)
    assert self_["kind"] == "images"
    np.testing.assert_allclose(self_["frames"]["realism"], 0.0, atol=1e-6)
    np.testing.assert_allclose(self_["frames"]["realism_l2"], 0.0, atol=1e-6)
    real = tiny_model.path_metrics(codes, reference=tiny_images)
    ref = tiny_model.as_images(tiny_images).astype(np.float64)
    want_l2 = [np.linalg.norm(ref - row, axis=1).min() for row in x]
    want_cos = [1 - (ref @ row / np.linalg.norm(ref, axis=1) / np.linalg.norm(row)).max() for row in x]
    np.testing.assert_allclose(real["frames"]["realism_l2"], want_l2, rtol=1e-5)
    np.testing.assert_allclose(real["frames"]["realism"], want_cos, atol=1e-6)
    assert real["realism"] == pytest.approx(want_cos[1], abs=1e-6)  # summaries: the interior frames
    with pytest.raises(InputError, match="at least 2 points"):
        tiny_model.path_metrics(codes[:1])


def test_per_frame_metrics_have_the_right_shapes_and_refuse_bad_input(tiny_model, tiny_images):
    a, b = far_pair(tiny_model, tiny_images)
    images, codes = tiny_model.interpolate(tiny_images[a], tiny_images[b], steps=7, return_codes=True)
    for path in (codes, images, images.reshape(7, 28, 28)):
        m = tiny_model.path_metrics(path, reference=tiny_images)
        assert m["points"] == 7
        for name in ("brightness", "brightness_ratio", "realism", "realism_l2"):
            assert m["frames"][name].shape == (7,) and m["frames"][name].dtype == np.float64, name
        ratio = m["frames"]["brightness_ratio"]
        assert ratio[0] == pytest.approx(1.0) and ratio[-1] == pytest.approx(1.0)
        assert m["brightness_ratio_mean"] == pytest.approx(ratio[1:-1].mean())
        assert m["brightness_ratio_min"] == pytest.approx(ratio[1:-1].min())
        assert m["faint_share"] == pytest.approx((ratio[1:-1] < 0.5).mean())
    b_ = images.astype(np.float64).mean(1)
    t = np.linspace(0, 1, 7)
    np.testing.assert_allclose(m["frames"]["brightness_ratio"], b_ / ((1 - t) * b_[0] + t * b_[-1]), rtol=1e-9)
    for fine in (0, -3, 2.5, True, "4"):
        with pytest.raises(InputError, match=r"fine must be an integer >= 1 .*got"):
            tiny_model.path_metrics(codes, fine=fine)
    with pytest.raises(InputError):
        tiny_model.path_metrics(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(InputError, match=r"expected images shaped"):
        tiny_model.path_metrics(np.zeros((3, 5), np.float32))


def test_dim_or_blank_images_cannot_game_the_realism_measure(tiny_model, tiny_images):
    x = tiny_model.as_images(tiny_images)
    ref = realism.Reference(tiny_model, x[:16])
    real = x[16:20]
    base = ref.nearest(real)
    dimmed = ref.nearest(real * 0.4)
    blank = ref.nearest(np.zeros((1, x.shape[1]), np.float32))
    # a blank image scores 1, the worst value for non-negative images, worse than every real image
    assert blank["cosine"][0] == 1.0 and (base["cosine"] < 1.0).all()
    # dimming gains nothing on the new measure (it is intensity-invariant) ...
    np.testing.assert_allclose(dimmed["cosine"], base["cosine"], atol=1e-6)
    # ... while the old Euclidean figure rewards it: this is what it misleads about
    assert (dimmed["l2"] < base["l2"]).all()
    # and the brightness ratio flags a dimmed frame in the middle of a path
    frames = np.stack([real[0], real[0] * 0.4, real[0]])
    ratio = realism.brightness_ratio(frames)
    assert ratio[1] < 0.5 and ratio[0] == ratio[2] == 1.0
    with pytest.raises(InputError, match="at least one real image"):
        realism.Reference(tiny_model, x[:0])


# -- bad input ------------------------------------------------------------------------------------------------------


def test_bad_inputs_say_what_was_expected(graph_model, tiny_images):
    a, b = tiny_images[0], tiny_images[1]
    for method in ("linear", "graph"):
        with pytest.raises(InputError, match="same latent code"):
            graph_model.interpolate(a, a.copy(), method=method)
    for steps in (1, 0, -3, 2.5, True):
        with pytest.raises(InputError, match=r"steps must be an integer >= 2 .*got"):
            graph_model.interpolate(a, b, steps=steps)
    with pytest.raises(InputError, match=r"image_a: expected one grayscale image shaped \(28, 28\) or \(784,\), "
                                         r"got \(28, 28, 3\) \(colour channels\?\)"):
        graph_model.interpolate(np.stack([a] * 3, -1), b)
    with pytest.raises(InputError, match=r"expected images shaped \(n, 784\) or \(n, 28, 28\), got \(1, 27, 27\)"):
        graph_model.interpolate(a[None, :27, :27], b)
    with pytest.raises(InputError, match=r"image_b: expected one image.*got 2 images"):
        graph_model.interpolate(a, tiny_images[:2])
    with pytest.raises(InputError, match="method must be one of linear, slerp, graph, got 'cubic'"):
        graph_model.interpolate(a, b, method="cubic")
    with pytest.raises(InputError, match="spacing must be one of data, latent"):
        graph_model.interpolate(a, b, spacing="even")
    with pytest.raises(InputError, match="search must be one of astar, dijkstra"):
        graph_model.interpolate(a, b, method="graph", search="bfs")
    with pytest.raises(InputError, match="realism_weight must be a finite number >= 0"):
        graph_model.interpolate(a, b, method="graph", realism_weight=-1)
    with pytest.raises(InputError, match="metric must be one of cosine, decoded, latent"):
        lb.build_index(graph_model, codes=np.zeros((5, 2)), metric="manhattan")
    with pytest.raises(InputError, match="either images .* or codes"):
        lb.build_index(graph_model)
    with pytest.raises(InputError, match="at least 3 codes"):
        lb.build_index(graph_model, codes=np.zeros((2, 2)))


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_interpolate_writes_the_api_path(tmp_path, graph_package, graph_model, tiny_images):
    np.save(tmp_path / "many.npy", tiny_images)
    out = tmp_path / "path.npz"
    text = ok(run("interpolate", graph_package, tmp_path / "many.npy", tmp_path / "many.npy", "--a-index", 3,
                  "--b-index", 17, "--method", "graph", "--steps", 6, "--out", out, "--threads", 1)).output
    assert text.startswith("graph: 6 images, length ") and f"wrote {out}" in text
    images, codes = graph_model.interpolate(tiny_images[3], tiny_images[17], steps=6, method="graph",
                                            return_codes=True)
    with np.load(out) as z:
        assert sorted(z.files) == ["codes", "images"]
        np.testing.assert_allclose(z["codes"], codes, atol=1e-5)
        np.testing.assert_allclose(z["images"], images, atol=1e-4)


def test_cli_compare_json_png_and_reference(tmp_path, graph_package, tiny_images):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "a.npy", tiny_images[0])
    np.save(tmp_path / "b.npy", tiny_images[9])
    np.save(tmp_path / "ref.npy", tiny_images)
    png = tmp_path / "strip.png"
    result = ok(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "b.npy", "--compare", "--steps", 5,
                    "--png", png, "--reference", tmp_path / "ref.npy", "--json", "--threads", 1))
    info = json.loads(result.stdout)
    assert info["method"] == "graph" and set(info["paths"]) == {"graph", "linear"}
    for metrics in info["paths"].values():
        assert metrics["points"] == 5 and metrics["length"] > 0 and metrics["realism"] > 0
    from PIL import Image

    with Image.open(png) as im:
        w, h = im.size
    assert w > 2.2 * h  # two rows of five images under a title
    text = ok(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "b.npy", "--compare",
                  "--threads", 1)).output
    assert "graph: 10 images" in text and "linear: 10 images" in text and "graph vs linear: length x" in text


def test_cli_errors_are_one_line(tmp_path, tiny_package, graph_package, tiny_images):
    np.save(tmp_path / "many.npy", tiny_images)
    np.save(tmp_path / "a.npy", tiny_images[0])
    fails(run("interpolate", graph_package, tmp_path / "many.npy", tmp_path / "a.npy"),
          "holds 32 images; pick one with --a-index I (0..31)")
    fails(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "many.npy", "--b-index", 40),
          "--b-index 40 is out of range")
    fails(run("interpolate", tiny_package, tmp_path / "a.npy", tmp_path / "many.npy", "--b-index", 1, "--method",
              "graph"), "no latent_index section")
    fails(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "a.npy"), "same latent code")
    fails(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "a.npy", "--steps", 1), code=2)
    fails(run("interpolate", graph_package, tmp_path / "a.npy", tmp_path / "a.npy", "--compare", "--method",
              "linear"), "--compare draws --method above the linear path", code=2)
    fails(run("index", "build", tiny_package, "--data", tmp_path / "nope.npy"), "nope.npy")


def test_cli_index_build_and_info(tmp_path, tiny_copy, tiny_images):
    np.savez(tmp_path / "data.npz", x_train=np.concatenate([tiny_images] * 3), x_test=tiny_images[:4])
    result = ok(run("index", "build", tiny_copy, "--data", tmp_path / "data.npz", "--k", 5, "--json",
                    "--threads", 1))
    section = json.loads(result.stdout)
    assert section["n_codes"] == 96 and section["k"] == 5 and section["source"].endswith("data.npz:x_train (train)")
    assert section["sha256"] == hashlib.sha256((tiny_copy / "latent_index.npz").read_bytes()).hexdigest()
    text = ok(run("index", "info", tiny_copy)).output
    assert "n_codes:         96" in text and "components:      1" in text and "(verified)" in text
    text = ok(run("index", "build", tiny_copy, "--data", tmp_path / "data.npz", "--split", "test")).output
    assert "from 4 codes" in text  # rebuilt from another split, in place
    assert vae_infer.load(tiny_copy).manifest.latent_index["n_codes"] == 4


# -- the public function on codes --------------------------------------------------------------------------------


def test_interpolate_codes_is_what_interpolate_decodes(graph_model, tiny_images):
    a, b = far_pair(graph_model, tiny_images)
    mu, _ = graph_model.encode(tiny_images[[a, b]])
    for method in it.METHODS:
        codes = it.interpolate_codes(graph_model, mu[0], mu[1], steps=6, method=method)
        assert codes.shape == (6, 2) and codes.dtype == np.float32
        np.testing.assert_array_equal(codes[[0, -1]], mu)
        images, via_images = graph_model.interpolate(tiny_images[a], tiny_images[b], steps=6, method=method,
                                                     return_codes=True)
        np.testing.assert_array_equal(codes, via_images)
        np.testing.assert_array_equal(images, graph_model.decode(codes))
    # a batch of one is accepted; anything else says what was expected
    np.testing.assert_array_equal(it.interpolate_codes(graph_model, mu[:1], mu[1:], steps=3),
                                  it.interpolate_codes(graph_model, mu[0], mu[1], steps=3))
    with pytest.raises(InputError, match=r"z_a: expected one latent code shaped \(2,\) or \(1, 2\), got \(3,\)"):
        it.interpolate_codes(graph_model, np.zeros(3), mu[1])
    with pytest.raises(InputError, match=r"z_b: .*(NaN|finite)"):
        it.interpolate_codes(graph_model, mu[0], np.array([np.nan, 0.0]))
    with pytest.raises(InputError, match="same latent code"):
        it.interpolate_codes(graph_model, mu[0], mu[0].copy(), method="graph")
    with pytest.raises(InputError, match="fade_weight must be a finite number >= 0"):
        it.interpolate_codes(graph_model, mu[0], mu[1], method="graph", fade_weight=-1)


# -- paths that do not fade ---------------------------------------------------------------------------------------


def two_routes(model, n=160, seed=0):
    """Codes on two half-circles between za = (0, -1.2) and zb = (0, 1.2): one through the right half-plane, where
    the tiny decoder's images are dimmer, slightly shorter than the other through the brighter left half-plane.
    Returns (codes, za, zb)."""
    rng = np.random.default_rng(seed)
    za, zb = np.array([0.0, -1.2], np.float32), np.array([0.0, 1.2], np.float32)
    t = np.sort(rng.uniform(0.02, np.pi - 0.02, n))
    right = np.stack([1.1 * np.sin(t), -1.2 * np.cos(t)], 1)
    left = np.stack([-1.25 * np.sin(t), -1.2 * np.cos(t)], 1)
    return np.concatenate([right, left]).astype(np.float32), za, zb


def test_a_path_through_a_faint_region_costs_more_than_one_around_it(tiny_copy):
    model = vae_infer.load(tiny_copy, threads=1)
    codes, za, zb = two_routes(model)
    right_b, left_b = model.decode(codes[:160]).mean(1), model.decode(codes[160:]).mean(1)
    assert right_b.mean() < left_b.mean() - 0.002  # the premise: the right route decodes fainter
    li.save_index(tiny_copy, lb.build_index(model, codes=codes, k=6, metric="latent", cell=0.02), source="routes")
    model = vae_infer.load(tiny_copy, threads=1)
    graph = ls.load_graph(model)
    plain = graph.shortest_path(za, zb, fade_weight=0)
    faded = graph.shortest_path(za, zb, fade_floor=1.0, fade_weight=200)
    assert (plain["codes"][1:-1, 0] > 0).all()  # without the penalty: the shorter, fainter route
    assert (faded["codes"][1:-1, 0] < 0).all()  # with it: around the faint region
    assert faded["length"] > plain["length"]
    # the same route weighs more with the penalty than without it (the penalty only adds)
    again = graph.shortest_path(za, zb, fade_floor=1.0, fade_weight=200, search="dijkstra")
    assert again["weight"] == pytest.approx(faded["weight"], rel=1e-9)
    # the refinement may not cut back through the faint region either
    kw = {"steps": 12, "method": "graph", "fade_floor": 1.0, "fade_weight": 200}
    refined = it.interpolate_codes(model, za, zb, **kw)
    assert (refined[1:-1, 0] < 0).all()


def test_relax_refuses_steps_the_constraint_rejects():
    z = np.stack([np.linspace(0, 1, 9), np.where(np.arange(9) % 2, 0.3, -0.3)], 1)
    z[0], z[-1] = (0, 0), (1, 0)
    out, stats = it.relax(lambda c: np.asarray(c, np.float32), z, iterations=20,
                          accept=lambda c: bool((np.abs(c[1:-1, 1]) >= 0.1).all()))
    assert np.abs(out[1:-1, 1]).min() >= 0.1 and stats["energy"] < stats["energy_start"]


@pytest.mark.slow
def test_the_cost_field_is_highest_off_the_data(tiny_model, tiny_images):
    index = lb.build_index(tiny_model, np.concatenate([tiny_images] * 4), k=4)
    assert index.has_field and index.realism_ref > 0 and index.n_codes == 128
    assert np.median(index.cost) == pytest.approx(1.0, rel=0.1)  # costs are relative to the nodes' median
    assert index.field.max() == pytest.approx(index.field[0, 0])  # far from the data: the largest cost
    assert index.edge_cost.shape == (len(index.edges),) and (index.edge_cost > 0).all()
    # nodes are real codes: each is the code of the image it names
    mu, _ = tiny_model.encode(np.concatenate([tiny_images] * 4)[index.rows])
    np.testing.assert_array_equal(index.codes, mu)


SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"
FIXED_PAIRS = [(0, 1), (2, 3), (5, 8), (13, 21), (34, 55), (89, 144)]  # test images, whatever their classes


@needs_real_data
@pytest.mark.slow
def test_graph_paths_on_the_shipped_model_keep_their_brightness():
    from vae_infer.data.sources import open_source

    model = vae_infer.load(SHIPPED, threads=1)
    test = open_source("fashion-mnist", split="test").read(0, 200)
    ratios = {"graph": [], "linear": []}
    for a, b in FIXED_PAIRS:
        for method in ratios:
            m = model.path_metrics(model.interpolate(test[a], test[b], steps=10, method=method, return_codes=True)[1])
            ratios[method].append((m["brightness_ratio_mean"], m["brightness_ratio_min"]))
    graph, linear = np.array(ratios["graph"]), np.array(ratios["linear"])
    assert graph[:, 1].min() >= 0.45, graph  # no pair fades to a ghost
    assert 0.9 <= graph[:, 0].mean() <= 1.25 and graph[:, 1].mean() >= 0.7, graph
    assert graph[:, 1].mean() > linear[:, 1].mean() + 0.1, (graph, linear)


# -- the latent map ------------------------------------------------------------------------------------------------


def test_latent_map_round_trip(tiny_copy, tiny_model, tiny_images):
    labels = np.arange(len(tiny_images)) % 3
    built = lm.build_latent_map(tiny_model, tiny_images, labels, ("a", "b", "c"), points=20, seed=1, source="tiny")
    assert built.codes.shape == (20, 2) and built.codes.dtype == np.float32 and built.labels.dtype == np.int64
    lm.save_latent_map(tiny_copy, built, seed=1)
    model = vae_infer.load(tiny_copy, threads=1)
    got = lm.read_latent_map(model)
    np.testing.assert_array_equal(got.codes, built.codes)
    np.testing.assert_array_equal(got.labels, built.labels)
    assert got.class_names == ("a", "b", "c") and got.source == "tiny"
    section = model.manifest.latent_map
    assert section["points"] == 20 and section["labelled"] and section["class_names"] == ["a", "b", "c"]
    assert model.manifest.files["latent_map.npz"] == hashlib.sha256(
        (tiny_copy / "latent_map.npz").read_bytes()).hexdigest()
    # the sample is the encoding of the images it picked
    mu, _ = tiny_model.encode(tiny_images)
    assert {tuple(r) for r in got.codes.tolist()} <= {tuple(r) for r in mu.tolist()}
    unlabelled = lm.build_latent_map(tiny_model, tiny_images, points=100)
    assert len(unlabelled.codes) == 32 and unlabelled.labels is None and unlabelled.class_names == ()
    with pytest.raises(InputError, match="found label 2 but only 2 class names"):
        lm.build_latent_map(tiny_model, tiny_images, labels, ("a", "b"))


def test_latent_map_tampering_is_refused(tiny_copy, tiny_model, tiny_images):
    from vae_infer.package.files import update_package

    with pytest.raises(ModelPackageError, match="no latent_map section.*vae-infer index build"):
        lm.read_latent_map(tiny_model)
    good = lm.build_latent_map(tiny_model, tiny_images, np.arange(32) % 2, ("x", "y"))
    lm.save_latent_map(tiny_copy, good)
    path = tiny_copy / "latent_map.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    loaded = vae_infer.load(tiny_copy, threads=1)
    section = dict(loaded.manifest.latent_map)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="latent_map.npz does not match model.json: sha256"):
        lm.read_latent_map(loaded)
    path.write_bytes(lm.to_bytes(good))

    def store(section=section, **arrays):  # a file whose sha256 is right but whose content is not
        import io

        buf = io.BytesIO()
        np.savez(buf, **{"format": np.int32(1), **arrays})
        update_package(tiny_copy, {"latent_map.npz": buf.getvalue()}, latent_map=section)
        return vae_infer.load(tiny_copy, threads=1)

    codes, labels = good.codes, good.labels
    cases = [
        ({"codes": codes, "labels": labels + 1}, r"labels range over 1..2, expected 0..1"),
        ({"codes": codes, "labels": labels.astype(np.int32)}, r"labels are int32 \(32,\), expected int64"),
        ({"codes": codes.astype(np.float64), "labels": labels}, r"codes are float64 \(32, 2\), expected float32"),
        ({"codes": codes[:, :1], "labels": labels}, r"codes are float32 \(32, 1\)"),
        ({"codes": np.where(np.arange(32)[:, None] == 3, np.nan, codes).astype(np.float32), "labels": labels},
         "codes hold NaN or inf"),
        ({"codes": codes[:10], "labels": labels[:10]}, "model.json says 32 points, the file holds 10"),
        ({"codes": codes}, "model.json says labelled=True, the file has no labels"),
    ]
    for arrays, message in cases:
        with pytest.raises(ModelPackageError, match=message):
            lm.read_latent_map(store(**arrays))
    with pytest.raises(ModelPackageError, match="class_names in model.json"):
        lm.read_latent_map(store({**section, "class_names": "xy"}, codes=codes, labels=labels))
    update_package(tiny_copy, {"latent_map.npz": b"not an npz"}, latent_map=section)
    with pytest.raises(ModelPackageError, match="expected a numpy .npz of map arrays"):
        lm.read_latent_map(vae_infer.load(tiny_copy, threads=1))


def test_cli_index_build_writes_the_latent_map(tmp_path, tiny_copy, tiny_images):
    np.savez(tmp_path / "data.npz", x_train=np.concatenate([tiny_images] * 3), x_test=tiny_images[:20],
             y_test=np.arange(20) % 4)
    section = json.loads(ok(run("index", "build", tiny_copy, "--data", tmp_path / "data.npz", "--map-points", 12,
                                "--json", "--threads", 1)).stdout)
    assert section["latent_map"]["points"] == 12 and section["latent_map"]["labelled"]
    model = vae_infer.load(tiny_copy, threads=1)
    got = lm.read_latent_map(model)
    assert got.codes.shape == (12, 2) and set(got.labels.tolist()) <= {0, 1, 2, 3}
    assert got.class_names == ("0", "1", "2", "3") and got.source.endswith("data.npz:x_test (test)")
    assert li.read_index(model).n_codes == 96  # the index from the training split, the map from the test split
    text = ok(run("index", "build", tiny_copy, "--data", tmp_path / "data.npz", "--no-map")).output
    assert "latent map" not in text
    assert vae_infer.load(tiny_copy).manifest.latent_map["points"] == 12  # kept as it was


def test_brightness_ratio_is_finite_between_blank_ends():
    """A path from a blank image to a blank image through a garment: no reference brightness at its ends. Its
    ratios stay finite (no API call returns infinity): 1 where the frame is blank too, large where it is not."""
    from vae_infer.interpolation import realism

    features = 16
    frames = np.zeros((3, features), np.float32)
    frames[1, :4] = 0.5
    ratio = realism.brightness_ratio(frames)
    assert np.isfinite(ratio).all() and ratio[0] == ratio[2] == 1.0
    assert ratio[1] == pytest.approx((2.0 / features) * 255.0 * features)
