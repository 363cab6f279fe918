"""Pure logic of training: the quality gate's decision and search-space checking."""

from __future__ import annotations

import math

import pytest

from rayloop.config import load_config
from rayloop.errors import ConfigError
from rayloop.registry import gate
from rayloop.training.search_space import DEFAULT_SPACES, check_space


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [(0.80, 0.80, True), (0.796, 0.80, True), (0.794, 0.80, False), (0.90, 0.80, True)],
)
def test_gate_allows_a_challenger_within_the_tolerance_below_the_champion(challenger, champion, promote):
    decision = gate("auc", challenger, champion, tolerance=0.005)
    assert decision.promote is promote
    assert ("below the champion" in decision.reason) is (not promote)


def test_gate_reads_a_loss_the_other_way_round():
    assert gate("logloss", 0.404, 0.40, 0.005).promote
    refused = gate("logloss", 0.41, 0.40, 0.005)
    assert not refused.promote and "above the champion" in refused.reason


def test_gate_promotes_a_first_model_and_refuses_a_nan_score():
    assert gate("auc", 0.7, None, 0.0).promote
    assert gate("auc", 0.7, None, 0.0).reason == "no champion to beat"
    assert not gate("auc", math.nan, 0.7, 0.01).promote


def test_default_search_spaces_are_valid_and_bad_ones_name_the_parameter():
    for space in DEFAULT_SPACES.values():
        assert check_space(space) == space
    for bad, message in [
        ({"lr": {"loguniform": [0, 1]}}, "search_space.lr.loguniform: low must be > 0"),
        ({"lr": {"uniform": [1, 0.5]}}, "low (1) must be below high (0.5)"),
        ({"leaves": {"randint": [1.5, 8]}}, "bounds must be integers"),
        ({"leaves": {"normal": [0, 1]}}, "give exactly one of"),
        ({"hidden": {"choice": []}}, "needs a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_space(bad)
    assert check_space({"max_bin": 63}) == {"max_bin": 63}  # constants pass through


def test_a_bad_search_space_in_the_config_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"tuning.search_space.*num_leaves.randint"):
        load_config(None, ["tuning.search_space={num_leaves: {randint: [10]}}"])
