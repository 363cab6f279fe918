"""The tabular MLP on Ray Train V2 (TorchTrainer): DDP over gloo on CPU or nccl with bf16 on GPU,
early stopping on the validation loss, a checkpoint per epoch and resume after a failure.

The task sets the head and the loss (`head_config`): a sigmoid with binary cross-entropy, a
softmax with cross-entropy over the class codes, or a linear head on the standardized target with
MSE (or Huber, `training.mlp.loss: huber`), scaled back at predict time. The validation loss is the
task's: log loss, multiclass log loss, or RMSE in the label's units."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rayloop.tasks import Task
from rayloop.training.common import data_config, latest_local_checkpoint, local_root, model_columns, report, run_config
from rayloop.training.evaluate import evaluate_task

__all__ = [
    "CHECKPOINT_FILE",
    "VALIDATION_LOSS",
    "build_trainer",
    "head_config",
    "load_model",
    "predict_batches",
    "train_epoch",
    "train_loop_per_worker",
]

# the metric early stopping and tuning watch, per task (lower is better)
VALIDATION_LOSS = {"binary": "logloss", "multiclass": "multi_logloss", "regression": "rmse"}


def head_config(task: Task, train_labels: np.ndarray | None = None) -> dict[str, Any]:
    """What the MLP needs from the task: outputs, head, and for a regression the train split's
    target mean and spread (the model learns the standardized target)."""
    config: dict[str, Any] = {"task_kind": task.kind, "n_outputs": task.n_outputs}
    if task.kind == "binary":
        return config | {"head": "sigmoid"}
    if task.kind == "multiclass":
        return config | {"head": "softmax"}
    labels = np.asarray(train_labels if train_labels is not None else [0.0], dtype=np.float64)
    std = float(np.std(labels))
    return config | {"head": "linear", "target_mean": float(np.mean(labels)), "target_std": std if std > 0 else 1.0}


CHECKPOINT_FILE = "checkpoint.pt"


def _matrix(batch: dict, names: list[str]):
    import torch

    return torch.stack([batch[n] for n in names], dim=1)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from rayloop.models.mlp import build_model  # torch at import: loaded where the model trains

    device = get_device()
    bf16 = device.type == "cuda"  # bf16 autocast on GPU; fp32 on CPU
    model = build_model(config)
    state = {"epoch": 0, "best_loss": float("inf"), "stale": 0, "best_model": None, "optimizer": None}
    local = config.get("local_checkpoints")  # local mode: the run's folder (training.common.local_root)
    checkpoint = ray.train.get_checkpoint() or latest_local_checkpoint(local)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    resumed_from = state["epoch"]  # 0 on a fresh start
    model = prepare_model(model)  # DDP when there are several workers; moves to the device
    module = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.get("lr", 1e-3))
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    train_shard = ray.train.get_dataset_shard("train")
    # a final refit on train+validation has no validation split: a fixed number of epochs
    valid_shard = ray.train.get_dataset_shard("validation") if config.get("has_validation", True) else None

    loss_name = VALIDATION_LOSS[config.get("task_kind", "binary")]
    names, label = config["feature_names"], config["label"]
    batch_size = config.get("batch_size", 512)
    # local mode: the driver's own torch, sized to the node's spare CPUs (workers get theirs from Ray)
    with _threads(config.get("num_threads") if local is not None else None):
        for epoch in range(state["epoch"], config.get("epochs", 10)):
            train_epoch(model, _ray_batches(train_shard, names, label, batch_size, device), optimizer, bf16, config)
            metrics = (
                _validate(model, _ray_batches(valid_shard, names, label, batch_size, device), config)
                if valid_shard is not None
                else {}
            )
            loss = metrics.get(f"validation_{loss_name}")
            # without validation every epoch counts as the best so far and nothing stops early
            improved = loss is None or loss < state["best_loss"] - 1e-6
            state = {
                "epoch": epoch + 1,
                "best_loss": loss if improved and loss is not None else state["best_loss"],
                "stale": 0 if improved else state["stale"] + 1,
                "best_model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                if improved
                else state["best_model"],
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            stop = state["stale"] >= config.get("patience", 3)
            metrics |= {
                "epoch": epoch + 1,
                f"best_validation_{loss_name}": state["best_loss"],
                "stopped_early": float(stop),
                "resumed_from": resumed_from,
            }
            _report(state, metrics, local)
            if stop:
                break


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ray_batches(shard, names: list[str], label: str, batch_size: int, device) -> Iterator[tuple]:
    import torch

    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.float32, device=device):
        yield _matrix(batch, names), batch[label]


def train_epoch(
    model, batches: Iterable[tuple], optimizer, bf16: bool = False, head: dict[str, Any] | None = None
) -> None:
    """One pass over (features, labels) tensor batches with the task's loss (`head`: what
    `head_config` gave, default a binary classifier); shared by Ray Train workers and Tune trials."""
    import torch

    head = head or {}
    kind = head.get("head", "sigmoid")
    if kind == "sigmoid":
        loss_fn = torch.nn.BCEWithLogitsLoss()
    elif kind == "softmax":
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        loss_fn = torch.nn.HuberLoss() if head.get("loss") == "huber" else torch.nn.MSELoss()
    mean, std = float(head.get("target_mean", 0.0)), float(head.get("target_std", 1.0))
    model.train()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        if kind == "softmax":
            target = y.long()
        elif kind == "linear":
            target = (y.float() - mean) / std
        else:
            target = y.float()
        loss_fn(logits.float(), target).backward()
        optimizer.step()


def predict_batches(
    model, batches: Iterable[tuple], head: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(the task's scores, labels) over (features, labels) tensor batches: P(positive), class
    probabilities (rows x classes) or predicted values."""
    import torch

    head = head or {}
    kind = head.get("head", "sigmoid")
    mean, std = float(head.get("target_mean", 0.0)), float(head.get("target_std", 1.0))
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            logits = model(x).float()
            if kind == "sigmoid":
                out = torch.sigmoid(logits)
            elif kind == "softmax":
                out = torch.softmax(logits, dim=1)
            else:
                out = logits * std + mean
            scores.append(out.cpu().numpy())
            labels.append(y.cpu().numpy())
    if not labels:
        width = int(head.get("n_outputs", 1))
        return np.empty((0, width) if kind == "softmax" else 0, np.float32), np.empty(0, np.float32)
    return np.concatenate(scores), np.concatenate(labels)


def _validate(model, batches: Iterable[tuple], head: dict[str, Any]) -> dict[str, float]:
    kind = head.get("task_kind", "binary")
    scores, labels = predict_batches(model, batches, head)
    if labels.size == 0:
        return {f"validation_{VALIDATION_LOSS[kind]}": float("inf")}
    return {f"validation_{k}": v for k, v in evaluate_task(kind, labels, scores).items()}


def _report(state: dict, metrics: dict[str, float], local: str | None) -> None:
    import torch

    report(metrics, lambda directory: torch.save(state, directory / CHECKPOINT_FILE), local)


def build_trainer(
    datasets: dict[str, Any],
    *,
    feature_names: list[str],
    label: str,
    categorical_indices: list[int],
    cardinalities: list[int],
    mlp: dict[str, Any],
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    name: str = "mlp",
    num_threads: int | None = None,
):
    """A Ray Train V2 TorchTrainer: gloo on CPU, nccl on GPU, checkpoints under RAYLOOP_HOME/train."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "feature_names": feature_names,
            "label": label,
            "categorical_indices": categorical_indices,
            "cardinalities": cardinalities,
            "has_validation": "validation" in datasets,
            "local_checkpoints": local_root(name, num_workers),
            "num_threads": num_threads or max(1, int(cpus_per_worker)),
            **mlp,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=run_config(name, max_failures),
        datasets=model_columns(datasets, feature_names, label),
        dataset_config=data_config(),
    )


def load_model(checkpoint, config: dict[str, Any], best: bool = True):
    """The model from a checkpoint: the best-validation weights by default."""
    import torch

    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    from rayloop.models.mlp import build_model  # torch at import: loaded where the model is read

    model = build_model(config)
    model.load_state_dict(state["best_model"] if best and state["best_model"] is not None else state["model"])
    return model.eval()
