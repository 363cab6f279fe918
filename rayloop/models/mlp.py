"""The tabular MLP: numeric features plus one embedding per categorical code (nn.Module only).

The categorical positions and cardinalities come from FittedFeatures (codes 0 missing,
1 out-of-vocabulary, 2.. vocabulary), so the model and the feature transform cannot disagree.
`TabularMLP` returns logits (one per row, or one per class); `Scores` puts the task's head on
top (sigmoid, softmax, or the standardized regression target scaled back), and is what a bundle
and every serving backend run, so each predicts the task's outputs the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["HEADS", "Scores", "TabularMLP", "build_model", "build_scores", "embedding_dim"]

HEADS = ("sigmoid", "softmax", "linear")  # binary, multiclass, regression


def embedding_dim(cardinality: int, max_dim: int = 32) -> int:
    """A common rule of thumb (fast.ai): grows like cardinality^0.56, capped."""
    return int(min(max_dim, round(1.6 * cardinality**0.56)))


class TabularMLP(nn.Module):
    """float32 feature matrix (rows x features) -> one logit per row, or `n_outputs` per row."""

    def __init__(
        self,
        n_features: int,
        categorical_indices: Sequence[int],
        cardinalities: Sequence[int],
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if len(categorical_indices) != len(cardinalities):
            raise ValueError("one cardinality per categorical index")
        cat = list(categorical_indices)
        self.register_buffer("cat_idx", torch.tensor(cat, dtype=torch.long), persistent=False)
        self.register_buffer(
            "num_idx",
            torch.tensor([i for i in range(n_features) if i not in set(cat)], dtype=torch.long),
            persistent=False,
        )
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cardinalities)
        width = len(self.num_idx) + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.body = nn.Sequential(*layers)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.index_select(1, self.num_idx)]
        if self.embeddings:
            codes = x.index_select(1, self.cat_idx).long()
            for j, (embedding, cardinality) in enumerate(zip(self.embeddings, self.cardinalities)):
                # a code beyond the vocabulary the model was built for counts as out-of-vocabulary
                column = torch.where(codes[:, j] < cardinality, codes[:, j], torch.ones_like(codes[:, j]))
                parts.append(embedding(column))
        out = self.body(torch.cat(parts, dim=1))
        return out.squeeze(1) if self.n_outputs == 1 else out


class Scores(nn.Module):
    """A TabularMLP with the task's head: P(positive) (sigmoid), class probabilities (softmax) or
    the predicted value (a linear head trained on the standardized target, scaled back)."""

    def __init__(self, model: TabularMLP, head: str = "sigmoid", target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.model = model
        self.head = head
        self.register_buffer("target_mean", torch.tensor(float(target_mean)), persistent=False)
        self.register_buffer("target_std", torch.tensor(float(target_std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        if self.head == "sigmoid":
            return torch.sigmoid(logits)
        if self.head == "softmax":
            return torch.softmax(logits, dim=1)
        return logits * self.target_std + self.target_mean


def build_model(config: Mapping[str, Any]) -> TabularMLP:
    """The MLP from its saved parameters: the feature layout (names, categorical positions and
    cardinalities, from FittedFeatures) plus `hidden` and `dropout`. Training, tuning and the
    bundle all build it here, so a checkpoint always loads into the same shape."""
    return TabularMLP(
        len(config["feature_names"]),
        config["categorical_indices"],
        config["cardinalities"],
        hidden=tuple(config.get("hidden", (128, 64))),
        dropout=config.get("dropout", 0.1),
        n_outputs=int(config.get("n_outputs", 1)),
    )


def build_scores(model: TabularMLP, config: Mapping[str, Any]) -> Scores:
    """The scoring module of a trained MLP from the same parameters (`head`, `target_mean`,
    `target_std`: what training recorded)."""
    return Scores(
        model,
        config.get("head", "sigmoid"),
        float(config.get("target_mean", 0.0)),
        float(config.get("target_std", 1.0)),
    ).eval()
