from __future__ import annotations

import pytest
import torch

from rayloop.models.mlp import TabularMLP, embedding_dim


def _batch(n: int = 64) -> torch.Tensor:
    x = torch.randn(n, 6)
    x[:, 2] = torch.randint(0, 5, (n,)).float()  # categorical codes, cardinality 5
    x[:, 4] = torch.randint(0, 3, (n,)).float()  # cardinality 3
    return x


def test_forward_gives_one_logit_per_row_and_learns_a_categorical_signal():
    torch.manual_seed(0)
    model = TabularMLP(6, [2, 4], [5, 3], hidden=(16,), dropout=0.0)
    x = _batch(512)
    y = (x[:, 2] == 3).float()  # the label lives only in a categorical code
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        optimizer.step()
    assert model(x).shape == (512,)
    assert loss.item() < 0.05


def test_codes_beyond_the_vocabulary_fall_back_to_the_oov_embedding():
    model = TabularMLP(6, [2, 4], [5, 3]).eval()
    x = _batch(8)
    high = x.clone()
    high[:, 2] = 99.0
    oov = x.clone()
    oov[:, 2] = 1.0
    torch.testing.assert_close(model(high), model(oov))


def test_embedding_dims_grow_and_are_capped():
    assert embedding_dim(2) < embedding_dim(50) < embedding_dim(5000) == 32


def _fit_and_score(device: str, bf16: bool) -> float:
    """Three epochs of the training loop's own epoch function on synthetic features; test AUC."""
    import numpy as np

    from rayloop.models.mlp import build_model
    from rayloop.training.evaluate import evaluate
    from rayloop.training.torch import predict_batches, train_epoch
    from tests.support import fitted_synthetic

    _, table, fitted, _ = fitted_synthetic(12_000, seed=21)
    x = torch.from_numpy(np.ascontiguousarray(fitted.transform(table), dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(table.column("label"), dtype=np.float32)).to(device)
    torch.manual_seed(0)
    model = build_model(
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            "hidden": [64, 32],
            "dropout": 0.0,
        }
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    split = 9_000
    for _ in range(3):
        train_epoch(model, ((x[i : i + 256], y[i : i + 256]) for i in range(0, split, 256)), optimizer, bf16=bf16)
    probs, labels = predict_batches(model, [(x[split:], y[split:])])
    return evaluate(labels, probs)["auc"]


def test_the_training_epoch_learns_on_cpu_in_fp32():
    assert _fit_and_score("cpu", bf16=False) > 0.6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_the_training_epoch_learns_on_cuda_with_bf16_autocast_as_well_as_fp32_on_cpu():
    """What a GPU Train worker runs (train_loop_per_worker: bf16 autocast on CUDA)."""
    cpu, gpu = _fit_and_score("cpu", bf16=False), _fit_and_score("cuda", bf16=True)
    assert gpu > 0.6 and gpu >= cpu - 0.01, (cpu, gpu)
