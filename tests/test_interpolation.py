"""Interpolation (linear, slerp, graph), the latent graph index, path metrics and their CLI, on the tiny package
and synthetic latent layouts (fast: no real data, no torch)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import vae_infer
import vae_infer.cli.interpolate_commands  # noqa: F401  (registers interpolate and index on main)
from tests.conftest import fails, ok
from vae_infer import cli, datasets
from vae_infer import interpolation as it
from vae_infer import latent_graph as lg
from vae_infer.errors import DataError, InputError, ModelPackageError

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
    index = lg.build_index(tiny_model, codes=cloud(tiny_model, tiny_images), k=8)
    lg.save_index(dest, index, source="synthetic cloud")
    return dest


@pytest.fixture(scope="module")
def graph_model(graph_package):
    return vae_infer.load(graph_package, threads=1)


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


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
    graph = lg.load_graph(graph_model)
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

    graph = lg.load_graph(graph_model)
    mu, _ = graph_model.encode(tiny_images[:2])
    zb = mu[1]
    xb = graph.points(zb[None])[0]
    near_b = graph._nearest(zb, graph.index.k)
    cb = graph.cost_at(zb[None])[0]
    w_b = graph._exact_distances(near_b, xb) * (0.5 * (cb + graph.cost[near_b])) ** graph.q
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
    lg.save_index(tiny_copy, lg.build_index(model, codes=codes, k=6, metric="latent"), source="arc")
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
    lg.save_index(tiny_copy, lg.build_index(model, codes=codes, k=6), source="arc")
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
    apart = lg.build_index(model, codes=codes, k=4, bridge=False)
    assert apart.bridge.sum() == 0 and lg._components(apart.n_nodes, apart.edges).max() == 1
    lg.save_index(tiny_copy, apart)
    model = vae_infer.load(tiny_copy, threads=1)
    with pytest.raises(InputError, match=r"disconnected \(2 components\): image a attaches to component \d+ \(\d+ "
                                         r"nodes\) and image b to component \d+"):
        model.interpolate(tiny_images[a], tiny_images[b], method="graph")
    joined = lg.build_index(model, codes=codes, k=4)
    assert joined.bridge.sum() == 1 and lg._components(joined.n_nodes, joined.edges).max() == 0
    lg.save_index(tiny_copy, joined)
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
    assert set(lg.load_graph(graph_model).graph.nodes) == set(range(lg.load_graph(graph_model).index.n_nodes))


# -- the index in the package -------------------------------------------------------------------------------------


def test_index_survives_save_and_load_with_its_sha256(graph_package, graph_model):
    section = graph_model.manifest.latent_index
    data = (graph_package / section["file"]).read_bytes()
    assert section["file"] == "latent_index.npz" and section["bytes"] == len(data)
    assert graph_model.manifest.files["latent_index.npz"] == hashlib.sha256(data).hexdigest()
    assert section["source"] == "synthetic cloud" and section["k"] == 8 and section["metric"] == "decoded"
    stored = lg.read_index(graph_model)
    again = lg.LatentIndex.from_bytes(stored.to_bytes())
    for name in ("codes", "counts", "edges", "distance", "bridge", "cost", "field", "field_origin", "alt_nodes",
                 "alt_dist"):
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
    lg.save_index(tiny_copy, lg.build_index(tiny_model, codes=cloud(tiny_model, tiny_images, 300)))
    path = tiny_copy / "latent_index.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    model = vae_infer.load(tiny_copy, threads=1)  # the ONNX files are fine, so loading works...
    with pytest.raises(ModelPackageError, match="latent_index.npz does not match model.json: sha256"):
        model.interpolate(tiny_images[0], tiny_images[1], method="graph")  # ...but the index is refused
    path.unlink()
    with pytest.raises(ModelPackageError, match="cannot read .*latent_index.npz"):
        vae_infer.load(tiny_copy, threads=1).interpolate(tiny_images[0], tiny_images[1], method="graph")


def test_a_malformed_index_file_is_refused():
    with pytest.raises(ModelPackageError, match="expected a numpy .npz of index arrays"):
        lg.LatentIndex.from_bytes(b"not an npz", "x.npz")
    import io

    buf = io.BytesIO()
    np.savez(buf, format=np.int32(1), codes=np.zeros((3, 2), np.float32))
    with pytest.raises(ModelPackageError, match=r"missing arrays \['alt_dist'"):
        lg.LatentIndex.from_bytes(buf.getvalue(), "x.npz")


def test_large_datasets_are_subsampled(tiny_model, tiny_images):
    codes = cloud(tiny_model, tiny_images, 900)
    index = lg.build_index(tiny_model, codes=codes, max_codes=200, seed=3)
    assert index.n_codes == 200 and index.info["n_given"] == 900
    assert index.n_nodes <= 200 and index.counts.sum() == 200
    capped = lg.build_index(tiny_model, codes=codes, max_nodes=50)
    assert capped.n_nodes <= 50 and capped.cell > index.cell  # the landmark grid was coarsened


def test_index_from_images_has_a_realism_field(tiny_model, tiny_images):
    index = lg.build_index(tiny_model, np.concatenate([tiny_images] * 4), k=4)
    assert index.has_field and index.realism_ref > 0 and index.n_codes == 128
    assert np.median(index.cost) == pytest.approx(1.0, rel=0.05)  # costs are relative to the nodes' median
    assert index.field.max() == pytest.approx(index.field[0, 0])  # far from the data: the largest cost


def test_realism_field_matches_brute_force(tiny_model, tiny_images):
    mu, _ = tiny_model.encode(tiny_images)
    cell, radius = 0.05, 2
    field, origin = lg._realism_field(tiny_model, mu, tiny_images, mu.min(0), cell, radius, block=3)
    x = tiny_model.as_images(tiny_images)
    q = np.floor((mu - origin) / cell).astype(int)
    for (iy, ix) in [tuple(v) for v in np.argwhere(np.isfinite(field))[::7]]:
        centre = origin + (np.array([ix, iy]) + 0.5) * cell
        near = (np.abs(q[:, 0] - ix) <= radius) & (np.abs(q[:, 1] - iy) <= radius)
        want = np.linalg.norm(x[near] - tiny_model.decode(centre[None].astype(np.float32)), axis=1).min()
        assert field[iy, ix] == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert np.isinf(field[0, 0])


def test_knn_is_exact():
    p = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    got = lg.knn(p, 5, chunk=64)
    d = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    want = np.argsort(d, axis=1)[:, :5]
    assert all(set(g) == set(w) for g, w in zip(got.tolist(), want.tolist(), strict=True))


def test_bilinear_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    field = rng.random((6, 7)).astype(np.float32)
    z = rng.uniform(0.1, 0.5, (20, 2))
    value, grad = lg.bilinear(field, np.zeros(2, np.float32), 0.1, z, grad=True)
    h = 1e-6
    for a in range(2):
        dz = np.zeros(2)
        dz[a] = h
        fd = (lg.bilinear(field, np.zeros(2, np.float32), 0.1, z + dz) - lg.bilinear(field, np.zeros(2), 0.1, z - dz))
        np.testing.assert_allclose(grad[:, a], fd / (2 * h), rtol=1e-4, atol=1e-3)
    assert lg.bilinear(field, np.zeros(2), 0.1, np.array([[0.05, 0.05]]))[0] == pytest.approx(field[0, 0])


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
    assert m["length"] == pytest.approx(np.linalg.norm(np.diff(fine, axis=0), axis=1).sum(), rel=1e-6)
    x = tiny_model.decode(codes)
    assert m["largest_step"] == pytest.approx(np.linalg.norm(np.diff(x, axis=0), axis=1).max(), rel=1e-6)
    assert m["realism"] is None
    assert m["length"] >= np.linalg.norm(np.diff(x, axis=0), axis=1).sum() - 1e-6  # finer is never shorter
    images = tiny_model.path_metrics(x, reference=x)
    assert images["kind"] == "images" and images["realism"] == pytest.approx(0.0, abs=1e-3)
    real = tiny_model.path_metrics(codes, reference=tiny_images)
    want = np.mean([np.linalg.norm(tiny_model.as_images(tiny_images) - row, axis=1).min() for row in x])
    assert real["realism"] == pytest.approx(want, rel=1e-4)
    with pytest.raises(InputError, match="at least 2 points"):
        tiny_model.path_metrics(codes[:1])


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
    with pytest.raises(InputError, match="metric must be one of decoded, latent"):
        lg.build_index(graph_model, codes=np.zeros((5, 2)), metric="cosine")
    with pytest.raises(InputError, match="either images .* or codes"):
        lg.build_index(graph_model)
    with pytest.raises(InputError, match="at least 3 codes"):
        lg.build_index(graph_model, codes=np.zeros((2, 2)))


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


def test_runtime_reads_idx_files_and_named_datasets(tmp_path, monkeypatch, tiny_images):
    header = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in tiny_images.shape)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + tiny_images.tobytes()))
    (folder / "t10k-images-idx3-ubyte").write_bytes(header + tiny_images.tobytes())
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    images, origin = lg.load_images("fashion-mnist")
    np.testing.assert_array_equal(images, tiny_images)
    assert origin.endswith("train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(lg.load_images(folder, "test")[0], tiny_images)
    (folder / "bad").write_bytes(header + tiny_images.tobytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        datasets.read_idx_images(folder / "bad")
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DATA", tmp_path / "no-system-data")
    with pytest.raises(DataError, match="dataset 'mnist' not found.*does not download"):
        lg.load_images("mnist")
