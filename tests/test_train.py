"""End to end on real Fashion-MNIST: train briefly, export, load with vae_infer, compare with torch;
resume equals an uninterrupted run; a diverging loss stops with the step named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

import train.fit as fit_mod  # noqa: E402
import vae_infer  # noqa: E402
from tests.conftest import needs_real_data  # noqa: E402
from train.cli import main as train_cli  # noqa: E402
from train.config import ModelConfig, TrainConfig  # noqa: E402
from train.export import PARITY_TOLERANCE, ExportError, export_package  # noqa: E402
from train.fit import CHECKPOINT_NAME, TrainingDivergedError, fit, to_tensor  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist"
SMALL = dict(train_limit=3000, validation_size=500, iw_samples=5, threads=1)


def trains(test):
    """Tests that train on real data are slow and need Fashion-MNIST; the others (help, option checks) run
    anywhere, so they are not skipped with them."""
    return needs_real_data(pytest.mark.slow(test))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short epoch of the course's architecture on a slice of real data, exported."""
    root = tmp_path_factory.mktemp("trained")
    result = fit(TrainConfig(epochs=1, **SMALL), run_dir=root / "run", progress=False)
    out = export_package(result.model, root / "model", to_tensor(result.dataset.test_images),
                         training=result.record("test"))
    return result, out


@trains
def test_training_writes_history_and_figures(trained):
    result, _ = trained
    assert result.model_config == ModelConfig()  # the course's architecture
    assert len(result.history) == 1
    row = result.history[0]
    assert set(row) >= {"train_nelbo", "val_nelbo", "val_recon", "val_kl", "lr", "seconds"}
    assert row["val_nelbo"] == pytest.approx(row["val_recon"] + row["val_kl"], rel=1e-6)  # float32 sums
    # one epoch on 2500 images: far from converged, but well below the 543 nats of an untrained model
    assert 250 < result.test["nelbo"] < 450
    assert result.test["iw_nll"] < result.test["nelbo"]
    assert result.train_examples == 2500 and result.validation_examples == 500


@trains
def test_exported_graphs_match_torch(trained):
    result, out = trained
    model = vae_infer.load(out, threads=1)
    images = result.dataset.test_images[:256]
    x = to_tensor(images)
    with torch.no_grad():
        mu_t, logvar_t = result.model.encoder(x)
        x_hat_t = torch.sigmoid(result.model.decoder(mu_t))
    mu, logvar = model.encode(images)
    assert np.abs(mu - mu_t.numpy()).max() <= PARITY_TOLERANCE
    assert np.abs(logvar - logvar_t.numpy()).max() <= PARITY_TOLERANCE
    assert np.abs(model.reconstruct(images) - x_hat_t.numpy()).max() <= PARITY_TOLERANCE


@trains
def test_runtime_score_agrees_with_the_training_figure(trained):
    result, out = trained
    model = vae_infer.load(out, threads=1)
    manifest_figure = model.manifest.training["test_nelbo"]
    assert manifest_figure == pytest.approx(result.test["nelbo"])
    assert model.score(result.dataset.test_images).mean() == pytest.approx(manifest_figure, rel=0.002)


@trains
def test_manifest_records_training(trained):
    _, out = trained
    record = json.loads((out / "model.json").read_text())["training"]
    assert record["dataset"] == "fashion-mnist"
    assert record["config"]["train_limit"] == 3000
    assert record["epochs_run"] == 1 and record["best_epoch"] == 1
    parity = record["export_parity_max_abs_diff"]
    assert set(parity) == {"mu", "logvar", "x_hat", "logits_relative"}
    assert max(parity.values()) <= PARITY_TOLERANCE


@trains
def test_resume_reaches_the_same_weights(tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, schedule="onecycle", **SMALL)
    whole = fit(config, run_dir=tmp_path / "whole", progress=False)

    real_evaluate = fit_mod.evaluate
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fit_mod, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir=tmp_path / "split", progress=False)
    monkeypatch.setattr(fit_mod, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    resumed = fit(config, run_dir=tmp_path / "split", resume=True, progress=False)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.history == [{**r, "seconds": resumed.history[i]["seconds"]} for i, r in enumerate(whole.history)]


@trains
def test_resume_refuses_other_options_and_missing_checkpoint(tmp_path):
    with pytest.raises(vae_infer.VaeInferError, match=r"no checkpoint at .*run without --resume"):
        fit(TrainConfig(epochs=1, **SMALL), run_dir=tmp_path, resume=True, progress=False)
    fit(TrainConfig(epochs=1, **SMALL), run_dir=tmp_path, progress=False)
    with pytest.raises(vae_infer.VaeInferError, match=r"made with a different configuration"):
        fit(TrainConfig(epochs=1, lr=0.5, **SMALL), run_dir=tmp_path, resume=True, progress=False)


@trains
def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real = fit_mod.negative_elbo
    steps = {"n": 0}
    steps_per_epoch = -(-2500 // 128)

    def nan_at_third_step_of_epoch_two(*args, **kwargs):
        steps["n"] += torch.is_grad_enabled()  # training steps only, not evaluation
        total, recon, kl = real(*args, **kwargs)
        if steps["n"] == steps_per_epoch + 3 and torch.is_grad_enabled():
            total = total * float("nan")
        return total, recon, kl

    monkeypatch.setattr(fit_mod, "negative_elbo", nan_at_third_step_of_epoch_two)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, step 3 .*last good checkpoint"):
        fit(TrainConfig(epochs=3, **SMALL), run_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1


@trains
def test_train_cli_fit_export_and_errors(tmp_path):
    runner = CliRunner()
    out, run = tmp_path / "model", tmp_path / "run"
    args = ["fit", "--train-limit", "2000", "--validation-size", "200", "--epochs", "1", "--iw-samples", "3",
            "--threads", "1", "--quiet", "--no-pictures", "--run-dir", str(run), "--out", str(out)]
    r = runner.invoke(train_cli, args)
    assert r.exit_code == 0, r.output
    assert "test -ELBO" in r.output and f"model package: {out}" in r.output
    first = vae_infer.load(out).manifest
    r = runner.invoke(train_cli, ["export", str(run), "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    again = vae_infer.load(tmp_path / "again").manifest
    assert again.files == first.files  # the same best weights export to the same bytes
    assert again.training["test_nelbo"] == first.training["test_nelbo"]

    r = runner.invoke(train_cli, ["fit", "--dataset", str(tmp_path / "missing.npy"), "--out", str(out),
                                  "--run-dir", str(tmp_path / "missing-run")])
    assert r.exit_code == 1
    assert r.output.startswith("Error: unknown dataset") and "Traceback" not in r.output
    r = runner.invoke(train_cli, ["fit", "--epochs", "0", "--out", str(out), "--run-dir", str(run)])
    assert r.exit_code == 1 and "epochs must be at least 1, got 0" in r.output


@pytest.mark.parametrize("command", [[], ["fit"], ["export"]])
def test_train_cli_help(command):
    r = CliRunner().invoke(train_cli, [*command, "--help"])
    assert r.exit_code == 0
    expected = {(): "Train the course's VAE", ("fit",): "--resume", ("export",): "SOURCE is a finished run folder"}
    assert expected[tuple(command)] in r.output


@trains
def test_denoising_training_is_seeded_and_differs_from_plain(tmp_path):
    base = dict(epochs=1, **SMALL)
    plain = fit(TrainConfig(**base), run_dir=tmp_path / "plain", progress=False)
    noisy = fit(TrainConfig(noise="gaussian:0.3", **base), run_dir=tmp_path / "noisy", progress=False)
    again = fit(TrainConfig(noise="gaussian:0.3", **base), run_dir=tmp_path / "again", progress=False)
    w = {name: r.model.state_dict()["encoder.hidden.weight"] for name, r in
         (("plain", plain), ("noisy", noisy), ("again", again))}
    assert torch.equal(w["noisy"], w["again"])
    assert not torch.equal(w["noisy"], w["plain"])
    # evaluation stays on clean images: the figures are comparable with a plain model's
    assert abs(noisy.test["nelbo"] - plain.test["nelbo"]) < 40


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("speckle:0.3", r"bad noise spec item 'speckle:0.3' .*KIND one of gaussian, salt-pepper"),
        ("gaussian:-1", r"bad noise level '-1' in 'gaussian:-1'"),
        ("gaussian:0.5-0.2", r"bad noise level '0.5-0.2' for gaussian .*expected 0 <= LO <= HI <= 1"),
    ],
)
def test_bad_noise_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(noise=spec)


@trains
def test_export_never_drops_a_packages_extras_silently(trained, tmp_path):
    """Writing new weights over a package that holds variants, calibration and a latent index (made from the
    old weights) is refused, in one line naming them and the flag, before any work; --drop-extras accepts it."""
    result, exported = trained
    run = exported.parent / "run"
    target = tmp_path / "package"
    shutil.copytree(SHIPPED, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    runner = CliRunner()

    r = runner.invoke(train_cli, ["export", str(run), "--out", str(target)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith(f"Error: {target} holds variants fp16, int8, ort, calibration, latent index, which "
                           "exporting new weights there would drop; pass --drop-extras to accept that"), line
    # the variants asked for again are made from the new weights, so only the other sections are named
    r = runner.invoke(train_cli, ["export", str(run), "--out", str(target), "--quantize", "int8", "--fp16",
                                  "--ort-format"])
    assert r.exit_code == 1 and f"Error: {target} holds calibration, latent index, which" in r.output, r.output
    # fit refuses before it trains: no run folder appears
    r = runner.invoke(train_cli, ["fit", "--train-limit", "2000", "--epochs", "1", "--quiet", "--no-pictures",
                                  "--run-dir", str(tmp_path / "new-run"), "--out", str(target)])
    assert r.exit_code == 1 and "--drop-extras" in r.output and not (tmp_path / "new-run").exists(), r.output
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("not a model package")
    with pytest.raises(ExportError, match=r"holds 1 file model.json does not list \(notes.txt\), .*--drop-extras"):
        export_package(result.model, notes, to_tensor(result.dataset.test_images))

    # torch.onnx logs "torchvision is not installed. Skipping torchvision::<op>" 4 times per graph through its
    # own handler; export filters it at that logger while it runs. A handler there sees what gets through.
    logger, seen = logging.getLogger("torch.onnx._internal.exporter._registration"), []
    catch = logging.Handler()
    catch.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(catch)
    try:
        r = runner.invoke(train_cli, ["export", str(run), "--out", str(target), "--drop-extras"])
        assert r.exit_code == 0, r.output
        assert "torchvision" not in r.output and not [m for m in seen if "torchvision" in m], seen
        logger.error("torchvision is not installed. (the filter is gone after the export)")
        assert seen[-1].endswith("(the filter is gone after the export)")
    finally:
        logger.removeHandler(catch)
    manifest = vae_infer.load(target).manifest
    assert (manifest.variants, manifest.calibration, manifest.latent_index) == ({}, None, None)
    assert sorted(p.name for p in target.iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
