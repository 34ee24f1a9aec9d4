"""The training loop: Adam on the negative ELBO, seeded, checkpointed every epoch, resumable."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from vae_infer.data.datasets import validation_split
from vae_infer.errors import VaeInferError

from .config import ModelConfig, TrainConfig, changed_options
from .data import Dataset, load_dataset
from .loss import importance_weighted_nll, negative_elbo
from .model import VAE
from .noise import add_noise, parse_noise

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
EVAL_BATCH = 2000  # rows per evaluation forward pass: large enough to be fast, small enough for little memory
EVAL_SEED_OFFSET = 7919  # evaluation noise comes from its own stream, so it never shifts the training noise


class TrainingDivergedError(VaeInferError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class FitResult:
    model: VAE
    model_config: ModelConfig
    train_config: TrainConfig
    dataset: Dataset
    history: list[dict] = field(default_factory=list)
    train_examples: int = 0
    validation_examples: int = 0
    test: dict = field(default_factory=dict)  # final figures on the test set, nats per example
    best_epoch: int = 0

    def record(self, command: str | None = None) -> dict:
        """The training figures a model package carries in model.json (nats per example)."""
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        return {
            "dataset": self.dataset.name,
            "data_source": self.dataset.source,
            "train_examples": self.train_examples,
            "validation_examples": self.validation_examples,
            "test_examples": self.test.get("examples"),
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "validation_nelbo": best.get("val_nelbo"),
            "test_nelbo": self.test.get("nelbo"),
            "test_recon": self.test.get("recon"),
            "test_kl": self.test.get("kl"),
            "test_iw_nll": self.test.get("iw_nll"),
            "iw_samples": self.test.get("iw_samples"),
            "config": self.train_config.to_dict(),
            "command": command,
            **({"holdout": self.dataset.holdout} if self.dataset.holdout else {}),
        }


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w) -> float32 (n, h*w) in [0, 1]: the scaling the manifest records."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL over x, one seeded sample of z per example."""
    model.eval()
    g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    sums = np.zeros(3)
    for start in range(0, len(x), EVAL_BATCH):
        xb = x[start : start + EVAL_BATCH]
        logits, mu, logvar = model(xb, g)
        parts = negative_elbo(logits, xb, mu, logvar)
        sums += [float(p.sum()) for p in parts]
    model.train()
    nelbo, recon, kl = (float(v) for v in sums / len(x))
    return {"nelbo": nelbo, "recon": recon, "kl": kl}


@torch.no_grad()
def evaluate_importance_weighted(model: VAE, x: torch.Tensor, k: int, seed: int) -> float:
    model.eval()
    g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    total = sum(float(importance_weighted_nll(model, x[s : s + EVAL_BATCH], k, g).sum())
                for s in range(0, len(x), EVAL_BATCH))
    model.train()
    return total / len(x)


def _save_atomically(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    (run_dir / HISTORY_JSON).write_text(json.dumps(history, indent=1))
    if history:
        with open(run_dir / HISTORY_CSV, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)


def check_resumable(ckpt: dict, config: TrainConfig, model_config: ModelConfig, ckpt_path: Path) -> None:
    """A run resumes with the options it was made with; only --epochs may grow, and only where the learning
    rate does not depend on the total (the constant schedule): each epoch's batches and noise are seeded by
    (seed, epoch), so the extended run equals one trained for the new total from the start."""
    before = {**ckpt["train_config"], **ckpt["model_config"]}
    now = {**config.to_dict(), **model_config.to_dict()}
    before["epochs"] = now["epochs"]  # judged on its own below
    changes = changed_options(before, now)
    if changes:
        raise VaeInferError(
            f"--resume: {ckpt_path} was made with a different configuration: {'; '.join(changes)} (the run's value "
            f"-> this command's); resume with the run's values or start a new run folder (--run-dir)")
    planned, done = ckpt["train_config"]["epochs"], ckpt["epoch"]
    if config.epochs == planned:
        return
    if config.epochs < done:
        raise VaeInferError(f"--resume --epochs {config.epochs}: the run at {ckpt_path} has already trained "
                            f"{done} epochs; give --epochs {done} or more")
    if config.schedule == "onecycle":
        raise VaeInferError(
            f"--resume --epochs {config.epochs}: the run was planned for {planned} epochs with the onecycle "
            f"schedule, whose learning rate at every step depends on the total number of epochs, so it cannot be "
            f"extended; resume with --epochs {planned}, or start a new run folder (--run-dir)")


def fit(
    config: TrainConfig,
    model_config: ModelConfig | None = None,
    run_dir: str | Path = "runs/fit",
    resume: bool = False,
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a VAE; every epoch writes the checkpoint and the history under run_dir.

    With resume=True the run continues from run_dir's checkpoint and ends with the same weights as an
    uninterrupted run: each epoch's batch order and noise come from a generator seeded by (seed, epoch)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    dataset = dataset or load_dataset(config.dataset, data_dir=data_dir, preprocessing=config.preprocessing())
    # The image size is the data's, not a choice: the model is built for whatever the dataset holds.
    model_config = dataclasses.replace(model_config or ModelConfig(), image_shape=dataset.image_shape)

    images = dataset.train_images[: config.train_limit or None]
    train_idx, val_idx = validation_split(len(images), config.validation_size, config.seed)
    x_train, x_val = to_tensor(images[train_idx]), to_tensor(images[val_idx])
    x_test = to_tensor(dataset.test_images)

    torch.manual_seed(config.seed)
    model = VAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    scheduler = None
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )

    history: list[dict] = []
    best = {"epoch": 0, "val_nelbo": math.inf, "model": None}
    start_epoch = 0
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume:
        if not ckpt_path.is_file():
            raise VaeInferError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start afresh")
        ckpt = torch.load(ckpt_path, weights_only=True)
        check_resumable(ckpt, config, model_config, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"]

    noise = parse_noise(config.noise) if config.noise else None
    model.train()
    for epoch in range(start_epoch, config.epochs):
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(x_train), generator=g)
        sums = np.zeros(3)
        t0 = time.perf_counter()
        batches = range(steps_per_epoch)
        bar = (click.progressbar(batches, label=f"epoch {epoch + 1}/{config.epochs}", file=sys.stderr)
               if progress and sys.stderr.isatty() else None)
        iterator = bar.__enter__() if bar else batches
        try:
            for step in iterator:
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                xb = x_train[idx]
                global_step = epoch * steps_per_epoch + step
                beta = config.beta
                if config.kl_warmup_epochs:
                    beta *= min(1.0, (global_step + 1) / (config.kl_warmup_epochs * steps_per_epoch))
                # a denoising VAE sees the corrupted batch and is scored on the clean one
                logits, mu, logvar = model(add_noise(xb, noise, g) if noise else xb, g)
                loss_vec, recon, kl = negative_elbo(logits, xb, mu, logvar, beta)
                loss = loss_vec.mean()
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (global step "
                        f"{global_step + 1}); the last good checkpoint is kept at {ckpt_path}. "
                        f"Try a lower --lr or --kl-warmup-epochs"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                sums += [float(loss_vec.detach().sum()), float(recon.detach().sum()), float(kl.detach().sum())]
        finally:
            if bar:
                bar.__exit__(None, None, None)
        val = evaluate(model, x_val, config.seed) if len(x_val) else {"nelbo": math.nan, "recon": math.nan,
                                                                       "kl": math.nan}
        row = {
            "epoch": epoch + 1,
            "train_nelbo": float(sums[0] / len(x_train)),  # with the epoch's beta, averaged over the epoch
            "train_recon": float(sums[1] / len(x_train)),
            "train_kl": float(sums[2] / len(x_train)),
            "val_nelbo": val["nelbo"],
            "val_recon": val["recon"],
            "val_kl": val["kl"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if not len(x_val) or val["nelbo"] < best["val_nelbo"]:
            best = {"epoch": epoch + 1, "val_nelbo": val["nelbo"],
                    "model": {k: v.clone() for k, v in model.state_dict().items()}}
        _save_atomically(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "history": history,
                "best": best,
                "train_config": config.to_dict(),
                "model_config": model_config.to_dict(),
            },
            ckpt_path,
        )
        _write_history(run_dir, history)
        if progress:
            click.echo(
                f"epoch {epoch + 1}: train {row['train_nelbo']:.2f}  val {row['val_nelbo']:.2f} "
                f"(recon {row['val_recon']:.2f}, kl {row['val_kl']:.2f}) nats/example, {row['seconds']:.1f} s",
                err=True,
            )

    # Early stopping: the model that scored best on validation is the one kept and exported.
    model.load_state_dict(best["model"])
    model.eval()
    test = evaluate(model, x_test, config.seed)
    test["iw_nll"] = evaluate_importance_weighted(model, x_test, config.iw_samples, config.seed)
    test["iw_samples"] = config.iw_samples
    test["examples"] = len(x_test)
    (run_dir / "test.json").write_text(json.dumps({"best_epoch": best["epoch"], **test}, indent=1))
    return FitResult(model, model_config, config, dataset, history, len(x_train), len(x_val), test, best["epoch"])


def load_run(run_dir: str | Path, data_dir: str | Path | None = None) -> FitResult:
    """A finished run folder as a FitResult: the best-validation weights, the history and the test figures."""
    run_dir = Path(run_dir)
    ckpt_path, test_path = run_dir / CHECKPOINT_NAME, run_dir / "test.json"
    if not ckpt_path.is_file():
        raise VaeInferError(f"{run_dir} is not a training run: {CHECKPOINT_NAME} is missing")
    ckpt = torch.load(ckpt_path, weights_only=True)
    config = TrainConfig.from_dict(ckpt["train_config"])
    if not test_path.is_file():
        raise VaeInferError(
            f"{run_dir} has not finished (epoch {ckpt['epoch']} of {config.epochs}, no test.json); "
            f"continue it with: python -m train fit --resume --run-dir {run_dir} and the same options"
        )
    model_config = ModelConfig.from_dict(ckpt["model_config"])
    model = VAE(model_config)
    model.load_state_dict(ckpt["best"]["model"])
    model.eval()
    dataset = load_dataset(config.dataset, data_dir=data_dir, preprocessing=config.preprocessing())
    test = json.loads(test_path.read_text())
    n = len(dataset.train_images[: config.train_limit or None])
    return FitResult(model, model_config, config, dataset, ckpt["history"], n - config.validation_size,
                     config.validation_size, test, ckpt["best"]["epoch"])
