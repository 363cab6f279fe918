"""The retrain policy: when a drift window raises a retrain decision, and when one is suppressed."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from rayloop.config import MonitoringConfig
from rayloop.monitoring.policy import (
    Decision,
    Observation,
    PolicyState,
    decide,
    reset_streak,
    retrain_finished,
    retrain_started,
    take_pending,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc).timestamp()
DAY = 86_400.0


def config(**overrides) -> MonitoringConfig:
    values = {
        "consecutive_windows": 2,
        "cooldown_s": 0,
        "daily_retrain_budget": 4,
        "quality_drop": 0.05,
        "min_labels": 200,
        "quality_windows": 1,
    }
    return MonitoringConfig(**{**values, **overrides})


def obs(window: int, drift: bool = True, time: float | None = None, **fields) -> Observation:
    features = ["income", "age"] if drift else []
    return Observation(
        window=window,
        time=T0 + 60 * window if time is None else time,
        drift_alarm=drift,
        drifted_features=fields.pop("drifted_features", features),
        drift_scores=fields.pop("drift_scores", {"income": 0.31, "age": 0.25} if drift else {}),
        **fields,
    )


def run(state: PolicyState, observations, cfg: MonitoringConfig) -> tuple[PolicyState, list[Decision]]:
    decisions = []
    for o in observations:
        state, decision = decide(state, o, cfg)
        decisions.append(decision)
    return state, decisions


# ---- drift streaks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "alarms", "actions"),
    [
        (2, [1, 0, 1, 0, 1, 0, 1], ["none"] * 7),  # one noisy window at a time never triggers
        (1, [1], ["retrain"]),
        (1, [0, 1], ["none", "retrain"]),
        (3, [1, 1, 0, 1, 1, 1], ["none"] * 5 + ["retrain"]),  # a clean window resets the streak
        # the raise resets the streak: K more drifted windows before the next trigger (suppressed: pending)
        (2, [1, 1, 1, 1, 1], ["none", "retrain", "none", "suppressed", "suppressed"]),
    ],
)
def test_drift_streak_against_k(k, alarms, actions):
    _, decisions = run(PolicyState(), [obs(i, bool(a)) for i, a in enumerate(alarms)], config(consecutive_windows=k))
    assert [d.action for d in decisions] == actions
    assert all(d.trigger == "drift" for d in decisions if d.action != "none")


def test_sustained_drift_raises_exactly_one_retrain_then_suppresses_as_pending():
    state, decisions = run(PolicyState(), [obs(i) for i in range(5)], config(consecutive_windows=2))
    raised = [d for d in decisions if d.action == "retrain"]
    assert len(raised) == 1 and raised[0].window == 1
    assert raised[0].reason == "drift in 2 consecutive windows (K=2): income (0.310), age (0.250)"
    assert raised[0].numbers["consecutive_drift"] == 2 and raised[0].numbers["K"] == 2
    assert raised[0].numbers["drifted_features"] == ["income", "age"]
    assert raised[0].numbers["drift_score.income"] == pytest.approx(0.31)
    assert [d.suppressed_by for d in decisions[2:]] == [None, "pending", "pending"]
    assert "window 1 is still pending" in decisions[3].reason
    assert decisions[3].numbers["pending_window"] == 1
    assert state.decisions == 1 and state.suppressed == {"pending": 2}
    assert state.pending == raised[0] and state.last_trigger_window == 1
    assert state.consecutive_drift == 3  # reset at the raise, kept while suppressed


def test_after_a_raise_k_more_drifted_windows_are_needed():
    cfg = config(consecutive_windows=2)
    state, first = run(PolicyState(), [obs(0), obs(1)], cfg)
    assert first[-1].action == "retrain"
    state, taken = take_pending(state)
    assert taken == first[-1]
    state = retrain_finished(retrain_started(state, "job-1", T0 + 61), "job-1")
    state, later = run(state, [obs(2), obs(3)], cfg)
    assert [d.action for d in later] == ["none", "retrain"]
    assert state.decisions == 2


def test_a_clean_window_reports_none_with_the_numbers():
    state, decision = decide(PolicyState(consecutive_drift=1), obs(7, drift=False), config())
    assert decision.action == "none" and decision.trigger is None and decision.suppressed_by is None
    assert decision.audit_event is None
    assert state.consecutive_drift == 0 and decision.numbers["consecutive_drift"] == 0
    assert decision.reason.startswith("no trigger: no drift")


# ---- live quality ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("live", "reference", "labels", "action", "in_reason"),
    [
        (0.70, 0.85, 500, "retrain", "live auc 0.7000 is 0.1500 worse than the champion's 0.8500"),
        (0.70, 0.85, 199, "none", "fewer than min_labels=200"),
        (0.82, 0.85, 500, "none", "live auc 0.8200 vs champion 0.8500"),  # within the allowed drop
        (None, 0.85, 500, "none", "no live auc"),
        (0.70, None, 500, "none", "no champion auc"),
        (math.nan, 0.85, 500, "none", "no live auc"),  # AUC over one class is not a drop
    ],
)
def test_quality_trigger(live, reference, labels, action, in_reason):
    observation = obs(0, drift=False, live_metric=live, reference_metric=reference, live_labels=labels)
    state, decision = decide(PolicyState(), observation, config())
    assert decision.action == action
    assert in_reason in decision.reason
    if action == "retrain":
        assert decision.trigger == "quality"
        assert decision.numbers["quality_drop"] == pytest.approx(0.15)
        assert decision.numbers["live_labels"] == 500 and state.pending == decision


def test_a_drop_within_the_live_windows_noise_is_not_a_quality_drop():
    # an MAE 6% above the champion's is past quality_drop, but with a standard error of 0.5 it is
    # 1.2 standard errors: what a clean window of a few hundred labels shows by chance
    noisy = obs(
        0, drift=False, metric="mae", live_metric=10.6, reference_metric=10.0, live_labels=300, live_metric_se=0.5
    )
    _, decision = decide(PolicyState(), noisy, config())
    assert decision.action == "none"
    assert "within the window's noise (1.20 standard errors, 2.33 needed)" in decision.reason
    assert decision.numbers["quality_drop_z"] == pytest.approx(1.2)
    sure = noisy.model_copy(update={"live_metric_se": 0.2})  # the same drop, 3 standard errors
    _, decision = decide(PolicyState(), sure, config())
    assert decision.action == "retrain" and decision.numbers["quality_drop_z"] == pytest.approx(3.0)
    _, decision = decide(PolicyState(), noisy, config(quality_confidence=0.5))  # the point estimate alone
    assert decision.action == "retrain"
    auc = obs(0, drift=False, live_metric=0.80, reference_metric=0.85, live_labels=300, live_metric_se=0.025)
    _, decision = decide(PolicyState(), auc, config(quality_drop=0.02))  # absolute: 0.05 / 0.025 = 2 SE
    assert decision.action == "none" and decision.numbers["quality_drop_z"] == pytest.approx(2.0)


def test_low_quality_must_persist_for_quality_windows_and_one_good_window_resets_it():
    cfg = config(quality_windows=2)
    low = {"drift": False, "live_metric": 0.70, "reference_metric": 0.85, "live_labels": 500}
    ok = {**low, "live_metric": 0.84}
    state, decisions = run(PolicyState(), [obs(0, **low), obs(1, **ok), obs(2, **low), obs(3, **low)], cfg)
    assert [d.action for d in decisions] == ["none", "none", "none", "retrain"]
    assert decisions[3].numbers["consecutive_low_quality"] == 2 and "2 windows in a row" in decisions[3].reason
    assert state.consecutive_low_quality == 0  # raising resets the streak, as for drift
    assert reset_streak(PolicyState(consecutive_drift=3, consecutive_low_quality=1)) == PolicyState()


def test_drift_and_quality_together_name_both():
    observation = obs(0, live_metric=0.6, reference_metric=0.8, live_labels=1000)
    _, decision = decide(PolicyState(), observation, config(consecutive_windows=1))
    assert decision.action == "retrain" and decision.trigger == "drift+quality"
    assert "drift in 1 consecutive windows" in decision.reason and "worse than the champion's" in decision.reason


# ---- suppression -----------------------------------------------------------------------------
def test_in_flight_suppresses_until_that_job_finishes():
    cfg = config(consecutive_windows=1)
    state = retrain_started(PolicyState(), "job-7", T0 - 3600)
    state, decision = decide(state, obs(0), cfg)
    assert decision.action == "suppressed" and decision.suppressed_by == "in_flight"
    assert "retrain job job-7 is in flight" in decision.reason and decision.numbers["in_flight"] == "job-7"
    assert decision.audit_event == "retrain_suppressed"
    assert state.suppressed == {"in_flight": 1} and state.pending is None
    state = retrain_finished(state, "job-7")
    state, decision = decide(state, obs(1), cfg)
    assert decision.action == "retrain" and state.pending == decision


def test_cooldown_suppresses_with_the_time_left_and_fires_when_it_ends():
    cfg = config(consecutive_windows=2, cooldown_s=600)
    state = retrain_finished(retrain_started(PolicyState(), "job-1", T0), "job-1")
    times = [T0 + 100, T0 + 200, T0 + 300, T0 + 650]
    state, decisions = run(state, [obs(i, time=t) for i, t in enumerate(times)], cfg)
    assert [d.action for d in decisions] == ["none", "suppressed", "suppressed", "retrain"]
    assert [d.suppressed_by for d in decisions[1:3]] == ["cooldown", "cooldown"]
    assert decisions[1].numbers["cooldown_left_s"] == pytest.approx(400)
    assert decisions[2].numbers["cooldown_left_s"] == pytest.approx(300)
    assert "400s of 600s left" in decisions[1].reason
    # the streak survived the suppression: no K fresh windows needed once the cool-down ended
    assert decisions[3].numbers["consecutive_drift"] == 4
    assert state.suppressed == {"cooldown": 2} and state.decisions == 1


def test_daily_budget_suppresses_and_resets_the_next_utc_day():
    cfg = config(consecutive_windows=1, daily_retrain_budget=2)
    state = PolicyState()
    for i, job in enumerate(["a", "b"]):
        state = retrain_finished(retrain_started(state, job, T0 + i), job)
    assert state.retrains_by_day == {"2024-05-01": 2}
    state, decision = decide(state, obs(0, time=T0 + 3600), cfg)
    assert decision.suppressed_by == "daily_budget"
    assert decision.numbers["retrains_today"] == 2 and decision.numbers["budget"] == 2
    assert "2 of 2 retrains already started on 2024-05-01" in decision.reason
    midnight = datetime(2024, 5, 2, tzinfo=timezone.utc).timestamp()
    state, decision = decide(state, obs(1, time=midnight), cfg)
    assert decision.action == "retrain" and decision.numbers["retrains_today"] == 0


def test_budget_zero_suppresses_everything():
    cfg = config(consecutive_windows=1, daily_retrain_budget=0)
    state, decisions = run(
        PolicyState(), [obs(0), obs(1, drift=False, live_metric=0.5, reference_metric=0.9, live_labels=900)], cfg
    )
    assert [d.suppressed_by for d in decisions] == ["budget_zero", "budget_zero"]
    assert [d.trigger for d in decisions] == ["drift", "quality"]
    assert state.suppressed == {"budget_zero": 2} and state.decisions == 0 and state.pending is None


@pytest.mark.parametrize(
    ("state", "budget", "expected"),
    [
        (
            PolicyState(
                pending=Decision(action="retrain", trigger="drift", reason="r", window=0, time=T0), in_flight="j"
            ),
            4,
            "pending",
        ),
        (PolicyState(in_flight="j", last_retrain_started=T0), 0, "in_flight"),
        (PolicyState(last_retrain_started=T0, retrains_by_day={"2024-05-01": 1}), 0, "budget_zero"),
        (PolicyState(last_retrain_started=T0, retrains_by_day={"2024-05-01": 1}), 1, "daily_budget"),
        (PolicyState(last_retrain_started=T0, retrains_by_day={"2024-05-01": 1}), 2, "cooldown"),
    ],
)
def test_suppression_order(state, budget, expected):
    cfg = config(consecutive_windows=1, cooldown_s=600, daily_retrain_budget=budget)
    _, decision = decide(state, obs(0, time=T0 + 10), cfg)
    assert decision.suppressed_by == expected


def test_retrains_by_day_keeps_a_week():
    state = PolicyState()
    for day in range(10):
        state = retrain_finished(retrain_started(state, f"job-{day}", T0 + day * DAY), f"job-{day}")
    assert sorted(state.retrains_by_day) == [f"2024-05-{d:02d}" for d in range(4, 11)]
    assert state.last_retrain_started == T0 + 9 * DAY


# ---- the submitter's side --------------------------------------------------------------------
def test_take_pending_hands_over_once():
    state, raised = decide(PolicyState(), obs(0), config(consecutive_windows=1))
    state, taken = take_pending(state)
    assert taken == raised and state.pending is None
    again, nothing = take_pending(state)
    assert nothing is None and again == state


def test_retrain_finished_ignores_a_stale_job_id():
    state = retrain_started(PolicyState(), "job-2", T0)
    assert retrain_finished(state, "job-1") == state
    assert retrain_finished(state, "job-1").in_flight == "job-2"
    assert retrain_finished(state, "job-2").in_flight is None


# ---- values, JSON and audit ------------------------------------------------------------------
def test_decide_does_not_mutate_its_input():
    cfg = config(consecutive_windows=1, cooldown_s=600)
    state = retrain_started(PolicyState(consecutive_drift=3, suppressed={"cooldown": 1}), "job-1", T0)
    snapshot = state.model_dump()
    for o in [obs(0, time=T0 + 5), obs(1, drift=False, time=T0 + 6)]:
        new, _ = decide(state, o, cfg)
        assert new is not state
    new, _ = decide(retrain_finished(state, "job-1"), obs(2, time=T0 + 700), cfg)
    assert state.model_dump() == snapshot
    assert new.pending is not None and state.pending is None
    with pytest.raises(ValidationError):
        state.consecutive_drift = 0


def test_state_round_trips_through_json():
    cfg = config(consecutive_windows=2, cooldown_s=600)
    state = retrain_finished(retrain_started(PolicyState(), "job-0", T0 - 7200), "job-0")
    state, _ = run(state, [obs(0), obs(1), obs(2), obs(3)], cfg)
    state = retrain_started(state, "job-1", T0 + 200)
    assert state.pending is not None and state.suppressed == {"pending": 1}
    text = json.dumps(state.model_dump(mode="json"))
    restored = PolicyState.model_validate(json.loads(text))
    assert restored == state
    assert isinstance(restored.pending.numbers["K"], int)
    assert isinstance(restored.pending.numbers["cooldown_left_s"], float)
    # the restored state decides exactly as the original
    assert decide(restored, obs(4), cfg) == decide(state, obs(4), cfg)
    with pytest.raises(ValidationError):
        PolicyState.model_validate({**json.loads(text), "consecutive": 1})


def test_audit_fields_are_json_and_leave_the_audit_time_alone():
    _, decision = decide(
        PolicyState(), obs(4, live_metric=math.nan, reference_metric=0.8), config(consecutive_windows=1)
    )
    assert decision.audit_event == "retrain_decision"
    fields = decision.audit_fields()
    assert "time" not in fields and "event" not in fields
    assert fields["window_time"] == decision.time and fields["window"] == 4
    assert fields["reason"] == decision.reason and fields["trigger"] == "drift"
    assert json.loads(json.dumps(fields, allow_nan=False))["numbers"]["live_metric"] is None


def test_a_decision_must_be_consistent():
    with pytest.raises(ValidationError):
        Decision(action="retrain", trigger=None, reason="r", window=0, time=T0)
    with pytest.raises(ValidationError):
        Decision(action="suppressed", trigger="drift", reason="r", window=0, time=T0)
    with pytest.raises(ValidationError):
        Decision(action="none", trigger=None, suppressed_by="cooldown", reason="r", window=0, time=T0)
