from __future__ import annotations

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
