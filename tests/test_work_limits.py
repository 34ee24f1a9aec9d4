"""The most work one call may ask for (vae_infer.work_limits): every cap refused before any work, through the Python
API and the command line, with a message naming the option, the value and the maximum; and options that a kind or
a method would ignore refused when given."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
from click.testing import CliRunner, Result

import vae_infer
import vae_infer.cli.anomaly_commands  # noqa: F401  (registers calibrate, detect, denoise on main)
import vae_infer.cli.interpolate_commands  # noqa: F401  (registers interpolate)
from tests.conftest import fails
from vae_infer import cli
from vae_infer.anomaly import scores as anomaly
from vae_infer.errors import InputError
from vae_infer.interpolation import paths as it
from vae_infer.interpolation.refine import relax
from vae_infer.work_limits import (
    MAX_ATTACH,
    MAX_DENOISE_STEPS,
    MAX_FINE,
    MAX_REFINE_ITERATIONS,
    MAX_REFINE_POINTS,
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_WORK,
)

HANG_GUARD_S = 120  # a refused call returns at once; without the check these calls run for hours


@contextmanager
def refused_at_once():
    """Fail, instead of hanging, if the call does its work before checking its bounds (no timing is asserted:
    the guard only turns 'runs for ever' into a failure)."""

    def hung(signum, frame):
        raise AssertionError(f"still running after {HANG_GUARD_S} s: the bound was not checked before the work")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_GUARD_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def many(image: np.ndarray, n: int) -> np.ndarray:
    """n copies of one uint8 image as a read-only view: a large batch that costs no memory."""
    return np.broadcast_to(image.reshape(1, -1), (n, image.size))


@pytest.fixture
def calibrated(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    anomaly.calibrate(model, tiny_images, iw_samples=4)
    return model


# -- the constants themselves --------------------------------------------------------------------------------


def test_the_maxima_are_one_consistent_set():
    assert (MAX_SAMPLES, MAX_STEPS, MAX_DENOISE_STEPS, MAX_WORK) == (1024, 256, 100, 1 << 24)
    assert MAX_REFINE_POINTS <= MAX_STEPS and MAX_FINE >= it.FINE and MAX_REFINE_ITERATIONS >= 6
    assert MAX_WORK // MAX_SAMPLES >= 10_000  # a Fashion-MNIST test set still scores at the largest k


# -- scores: samples and images x samples --------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "kind", "samples"), [(1, "iwae", 10**8), (32, "nelbo", 10**7), (1, "ic", 1025)])
def test_samples_above_the_maximum_are_refused_before_any_work(tiny_model, tiny_images, rows, kind, samples):
    with refused_at_once(), pytest.raises(InputError) as e:
        tiny_model.score(tiny_images[:rows], kind=kind, samples=samples)
    assert f"samples={samples} is above the maximum of {MAX_SAMPLES}" in str(e.value)
    assert f"pass samples <= {MAX_SAMPLES}" in str(e.value)


def test_the_largest_samples_is_accepted(tiny_model, tiny_images):
    got = tiny_model.score(tiny_images[:1], kind="iwae", samples=MAX_SAMPLES, seed=0)
    assert got.shape == (1,) and np.isfinite(got).all()


def test_images_times_samples_is_capped_by_max_work(tiny_model, tiny_images):
    rows = MAX_WORK // MAX_SAMPLES + 1
    with refused_at_once(), pytest.raises(InputError) as e:
        tiny_model.score(many(tiny_images[0], rows), kind="iwae", samples=MAX_SAMPLES)
    text = str(e.value)
    assert f"{rows} images x samples={MAX_SAMPLES} is {rows * MAX_SAMPLES} decoder evaluations" in text
    assert f"MAX_WORK = {MAX_WORK}" in text and f"at most {MAX_WORK // MAX_SAMPLES} images" in text
    with refused_at_once(), pytest.raises(InputError, match=f"{MAX_WORK + 1} images x samples=1"):
        tiny_model.score(many(tiny_images[0], MAX_WORK + 1), kind="recon")  # one evaluation each: still work


@pytest.mark.parametrize("kind", ["recon", "mse", "excess", "dose"])
def test_samples_for_a_deterministic_kind_are_refused(calibrated, tiny_images, kind):
    with pytest.raises(InputError, match=f"samples=5 does nothing for kind '{kind}'"):
        calibrated.score(tiny_images[:2], kind=kind, samples=5)
    one = calibrated.score(tiny_images[:2], kind=kind, samples=1)  # one evaluation: what the kind does anyway
    np.testing.assert_array_equal(one, calibrated.score(tiny_images[:2], kind=kind))


def test_detect_refuses_samples_its_kind_ignores(calibrated, tiny_images):
    assert calibrated.manifest.calibration["default_kind"] == "dose"
    with refused_at_once(), pytest.raises(InputError, match="samples=10000000 does nothing for kind 'dose'"):
        calibrated.detect(tiny_images, samples=10**7)
    with pytest.raises(InputError, match="samples=3 does nothing for kind 'mse'"):
        calibrated.detect(tiny_images, kind="mse", threshold=1.0, samples=3)
    with refused_at_once(), pytest.raises(InputError, match=f"samples={10**7} is above the maximum"):
        calibrated.detect(tiny_images, kind="iwae", samples=10**7)
    flags, scores = calibrated.detect(tiny_images)  # the defaults still work: dose draws nothing
    assert flags.shape == scores.shape == (len(tiny_images),)
    _, iw = calibrated.detect(tiny_images[:4], kind="iwae")  # as calibrated: k = 4
    np.testing.assert_array_equal(iw, calibrated.score(tiny_images[:4], kind="iwae", samples=4))


def test_calibrate_bounds_and_refuses_ignored_samples(tiny_copy, tiny_images):
    model = vae_infer.load(tiny_copy, threads=1)
    before = (tiny_copy / "model.json").read_bytes()
    with refused_at_once(), pytest.raises(InputError, match=f"iw_samples={10**6} is above the maximum of 1024"):
        anomaly.calibrate(model, tiny_images, iw_samples=10**6)
    with refused_at_once(), pytest.raises(InputError, match=f"samples={10**6} is above the maximum of 1024"):
        anomaly.calibrate(model, tiny_images, samples=10**6)
    with pytest.raises(InputError, match="iw_samples=8 does nothing: iwae is not among the calibrated kinds"):
        anomaly.calibrate(model, tiny_images, kinds=("recon", "dose"), iw_samples=8)
    with pytest.raises(InputError, match="samples=3 does nothing for kind"):
        anomaly.calibrate(model, tiny_images, kinds=("recon", "dose"), samples=3)
    rows = MAX_WORK // (1 + 2 * MAX_SAMPLES) + 1
    with refused_at_once(), pytest.raises(InputError, match=f"calibrate: {rows} images x 1 \\+ samples"):
        anomaly.calibration_scores(model, many(tiny_images[0], rows), samples=MAX_SAMPLES, iw_samples=MAX_SAMPLES)
    assert (tiny_copy / "model.json").read_bytes() == before
    section = anomaly.calibrate(model, tiny_images, kinds=("recon", "dose"), write=False)
    assert section["samples"] == {}  # no kind that draws z


# -- denoise: steps and images x steps ---------------------------------------------------------------------------


def test_denoise_steps_are_bounded(tiny_model, tiny_images):
    with refused_at_once(), pytest.raises(InputError, match=f"steps={10**6} is above the maximum of 100"):
        tiny_model.denoise(tiny_images[:1], steps=10**6)
    rows = MAX_WORK // MAX_DENOISE_STEPS + 1
    with refused_at_once(), pytest.raises(InputError, match=f"denoise: {rows} images x steps={MAX_DENOISE_STEPS}"):
        tiny_model.denoise(many(tiny_images[0], rows), steps=MAX_DENOISE_STEPS)
    assert tiny_model.denoise(tiny_images[:2], steps=MAX_DENOISE_STEPS).shape == (2, 784)


# -- interpolation ------------------------------------------------------------------------------------------------


def test_interpolation_bounds(tiny_model, tiny_images):
    a, b = tiny_images[0], tiny_images[1]
    with pytest.raises(InputError, match=f"steps=257 is above the maximum of {MAX_STEPS}"):
        tiny_model.interpolate(a, b, steps=MAX_STEPS + 1)
    assert tiny_model.interpolate(a, b, steps=MAX_STEPS, spacing="latent").shape == (MAX_STEPS, 784)
    z = tiny_model.encode(tiny_images[:2])[0]
    # graph options are checked before the latent index is even looked for (the tiny package has none)
    for option, value, maximum in (("refine_points", 10**6, MAX_REFINE_POINTS),
                                   ("refine_iterations", 10**6, MAX_REFINE_ITERATIONS), ("attach", 10**6, MAX_ATTACH)):
        with refused_at_once(), pytest.raises(InputError, match=f"{option}={value} is above the maximum of {maximum}"):
            it.interpolate_codes(tiny_model, z[0], z[1], method="graph", **{option: value})
    with refused_at_once(), pytest.raises(InputError, match=f"fine={10**6} is above the maximum of {MAX_FINE}"):
        it.path_metrics(tiny_model, z, fine=10**6)
    with pytest.raises(InputError, match="fine=4 applies to a path of latent codes"):
        it.path_metrics(tiny_model, tiny_images[:3], fine=4)  # a path of images is measured as given
    assert it.path_metrics(tiny_model, tiny_images[:3])["kind"] == "images"
    with pytest.raises(InputError, match=f"iterations={10**6} is above the maximum"):
        relax(lambda c: c, np.zeros((5, 2)), iterations=10**6)
    with pytest.raises(InputError, match=f"points={MAX_REFINE_POINTS + 1} is above the maximum"):
        relax(lambda c: c, np.zeros((MAX_REFINE_POINTS + 1, 2)))


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_graph_options_are_refused_with_methods_that_ignore_them(tiny_model, tiny_images, method):
    a, b = tiny_images[0], tiny_images[1]
    with pytest.raises(InputError, match=f"refine_points, attach: options of method='graph' only, which "
                                         f"method='{method}' would ignore"):
        tiny_model.interpolate(a, b, method=method, refine_points=5, attach=3)
    with pytest.raises(InputError, match="search: options of method='graph' only"):
        tiny_model.interpolate(a, b, method=method, search="dijkstra")


# -- the command line: the same maxima, before the model runs ----------------------------------------------------


@pytest.fixture
def images_npy(tmp_path, tiny_images):
    path = tmp_path / "images.npy"
    np.save(path, tiny_images)
    return path


def test_cli_options_carry_the_maxima(tiny_package, images_npy, tmp_path):
    pkg, out = tiny_package, tmp_path / "o.npy"
    cases = [
        (("score", pkg, images_npy, "--samples", MAX_SAMPLES + 1), "--samples"),
        (("detect", pkg, images_npy, "--threshold", 1, "--kind", "iwae", "--samples", 10**7), "--samples"),
        (("calibrate", pkg, "--data", images_npy, "--iw-samples", MAX_SAMPLES + 1), "--iw-samples"),
        (("calibrate", pkg, "--data", images_npy, "--samples", MAX_SAMPLES + 1), "--samples"),
        (("denoise", pkg, images_npy, "--out", out, "--steps", MAX_DENOISE_STEPS + 1), "--steps"),
        (("interpolate", pkg, images_npy, images_npy, "--a-index", 0, "--b-index", 1, "--steps", MAX_STEPS + 1),
         "--steps"),
    ]
    for args, option in cases:
        err = fails(run(*args), option, f"{args[-1]} is not in the range", code=2)
        maximum = str(args[-1] - 1) if args[-1] != 10**7 else str(MAX_SAMPLES)
        assert f"<={maximum}" in err, err
    assert not out.exists()


def test_cli_refuses_samples_a_kind_ignores(calibrated, tiny_images, tmp_path):
    np.save(tmp_path / "x.npy", tiny_images)
    pkg = calibrated.path
    fails(run("score", pkg, tmp_path / "x.npy", "--kind", "dose", "--samples", 5),
          "--samples=5 does nothing for kind 'dose'")
    fails(run("detect", pkg, tmp_path / "x.npy", "--samples", 7), "samples=7 does nothing for kind 'dose'")
    fails(run("calibrate", pkg, "--data", tmp_path / "x.npy", "--kind", "recon", "--kind", "dose",
              "--default-kind", "dose", "--iw-samples", 8), "iw_samples=8 does nothing")


def test_cli_caps_images_times_samples_before_any_work(tiny_package, tiny_images, tmp_path):
    rows = MAX_WORK // MAX_SAMPLES + 1
    np.save(tmp_path / "many.npy", many(tiny_images[0], rows))  # 13 MB
    with refused_at_once():
        fails(run("score", tiny_package, tmp_path / "many.npy", "--kind", "iwae", "--samples", MAX_SAMPLES),
              f"{rows} images x samples={MAX_SAMPLES}", f"MAX_WORK = {MAX_WORK}")
        fails(run("detect", tiny_package, tmp_path / "many.npy", "--kind", "nelbo", "--threshold", 0,
                  "--samples", MAX_SAMPLES), f"{rows} images x samples={MAX_SAMPLES}")


def test_cli_refuses_options_the_command_would_ignore(calibrated, tiny_images, tmp_path):
    np.save(tmp_path / "x.npy", tiny_images)
    pkg, x = calibrated.path, tmp_path / "x.npy"
    fails(run("score", pkg, x, "--kind", "mse", "--seed", 3), "--seed would be ignored: kind mse draws no z", code=2)
    fails(run("detect", pkg, x, "--seed", 3), "--seed would be ignored: kind dose draws no z", code=2)
    fails(run("calibrate", pkg, "--data", x, "--kind", "recon", "--kind", "dose", "--seed", 1),
          "--seed would be ignored: no calibrated kind draws z", code=2)
    fails(run("interpolate", pkg, x, x, "--a-index", 0, "--b-index", 1, "--search", "dijkstra", "--no-refine"),
          "--search, --no-refine would be ignored: options of --method graph, not linear", code=2)
    assert "negative ELBO" in run("score", pkg, x, "--seed", 3).output  # where the seed is used, it is taken
