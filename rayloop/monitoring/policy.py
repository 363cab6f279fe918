"""When to ask for a retrain: pure logic over the DriftMonitor's tumbling windows.

After each window the monitor calls `decide` with what the window showed. The policy raises a
retrain decision when drift stays on for K windows in a row, or when live quality stays more than
`quality_drop` below the champion's test metric, beyond the live window's own noise
(`quality_confidence`), for `quality_windows` windows; it suppresses one
while another is pending or in flight, during the cool-down and past the daily budget. Every
answer is a `Decision` with its reason and numbers, so the monitor can audit and count acted-on
and suppressed decisions alike.

The state is a plain pydantic model that round-trips through JSON (the monitor persists it and
reloads it on restart). Nothing here touches Ray, files or the audit log; every function returns a
new state and never changes the one it was given.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayloop.config import MonitoringConfig
from rayloop.tasks import quality_shortfall, shortfall_se

__all__ = [
    "Decision",
    "Observation",
    "PolicyState",
    "decide",
    "reset_streak",
    "retrain_finished",
    "retrain_started",
    "take_pending",
]

# Days of retrain counts kept in the state: enough for the daily budget and a week of history.
KEEP_DAYS = 7

Trigger = Literal["drift", "quality", "drift+quality"]
SuppressedBy = Literal["pending", "in_flight", "cooldown", "daily_budget", "budget_zero"]
Number = float | int | str | list[str] | None


class _Model(BaseModel):
    # frozen: a state or decision is a value; the functions below return new ones
    model_config = ConfigDict(extra="forbid", frozen=True)


class Observation(_Model):
    """What one closed drift window showed: the policy's only input besides its state."""

    window: int = Field(ge=0)
    time: float = Field(description="epoch seconds at the window's end; the policy's clock")
    drift_alarm: bool
    drifted_features: list[str] = []
    drift_scores: dict[str, float] = Field(default_factory=dict, description="e.g. PSI per drifted feature")
    live_metric: float | None = None
    live_labels: int = Field(0, ge=0, description="joined labels behind live_metric")
    live_metric_se: float | None = Field(
        None, ge=0, description="the live metric's standard error (a bootstrap of its labels); None: not known"
    )
    reference_metric: float | None = Field(None, description="the champion's test metric")
    metric: str = Field("auc", description="the live metric's name: which way is worse (rayloop.tasks)")


class Decision(_Model):
    """The policy's answer for one window; acted-on and suppressed ones are both audited."""

    action: Literal["retrain", "suppressed", "none"]
    trigger: Trigger | None = None
    reason: str
    suppressed_by: SuppressedBy | None = None
    window: int
    time: float
    numbers: dict[str, Number] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Decision:
        # a decision that says "retrain" without a trigger (or "none" with one) is a bug, not data
        if (self.trigger is None) != (self.action == "none"):
            raise ValueError(f"action {self.action!r} with trigger {self.trigger!r}")
        if (self.suppressed_by is None) != (self.action != "suppressed"):
            raise ValueError(f"action {self.action!r} with suppressed_by {self.suppressed_by!r}")
        return self

    @property
    def audit_event(self) -> str | None:
        """The audit event name; None for a window that triggered nothing (not worth a log line)."""
        return {"retrain": "retrain_decision", "suppressed": "retrain_suppressed"}.get(self.action)

    def audit_fields(self) -> dict[str, Any]:
        """Keyword fields for `audit.record(decision.audit_event, **fields)`.

        The window's end is `window_time`, not `time`: `audit.record` stamps its own `time`.
        """
        dumped = self.model_dump(mode="json")  # JSON-safe copies (a NaN becomes null)
        return {
            "action": self.action,
            "trigger": self.trigger,
            "suppressed_by": self.suppressed_by,
            "reason": self.reason,
            "window": self.window,
            "window_time": self.time,
            "numbers": dumped["numbers"],
        }


class PolicyState(_Model):
    """Everything the policy remembers between windows; the monitor persists it as JSON."""

    consecutive_drift: int = Field(0, ge=0)
    consecutive_low_quality: int = Field(0, ge=0)
    last_trigger_window: int | None = None
    pending: Decision | None = Field(None, description="a raised decision the submitter has not taken yet")
    in_flight: str | None = Field(None, description="job id of the running retrain")
    last_retrain_started: float | None = Field(None, description="epoch seconds; starts the cool-down")
    retrains_by_day: dict[str, int] = Field(default_factory=dict, description="UTC 'YYYY-MM-DD' -> retrains started")
    decisions: int = Field(0, ge=0, description="retrain decisions raised")
    suppressed: dict[str, int] = Field(default_factory=dict, description="suppressed_by -> count")


def decide(state: PolicyState, obs: Observation, config: MonitoringConfig) -> tuple[PolicyState, Decision]:
    """Judge one closed window: raise a retrain, suppress one (and say why), or do nothing.

    Raising resets the drift streak, so one sustained drift raises one decision, not one per window.
    A suppressed trigger keeps the streak, so persisting drift fires once the suppression lifts.
    """
    k = config.consecutive_windows
    streak = state.consecutive_drift + 1 if obs.drift_alarm else 0
    live, ref = _finite(obs.live_metric), _finite(obs.reference_metric)
    # how much worse live is: absolute for scores, relative for errors (rayloop.tasks)
    drop = quality_shortfall(obs.metric, live, ref) if live is not None and ref is not None else None
    drift_fires = streak >= k
    drop_z = _drop_z(obs, drop, ref)
    quality_low = (
        drop is not None
        and obs.live_labels >= config.min_labels
        and drop > config.quality_drop
        and (drop_z is None or drop_z >= _z_needed(config))
    )
    low_streak = state.consecutive_low_quality + 1 if quality_low else 0
    quality_fires = low_streak >= config.quality_windows
    day = _utc_day(obs.time)
    today = state.retrains_by_day.get(day, 0)
    cooldown_left = _cooldown_left(state, obs.time, config.cooldown_s)
    numbers: dict[str, Number] = {
        "consecutive_drift": streak,
        "consecutive_low_quality": low_streak,
        "quality_windows": config.quality_windows,
        "K": k,
        "drifted_features": list(obs.drifted_features),
        "metric": obs.metric,
        "live_metric": live,
        "reference_metric": ref,
        "quality_drop": drop,
        "quality_drop_allowed": config.quality_drop,
        "quality_drop_z": drop_z,
        "quality_z_needed": round(_z_needed(config), 3),
        "live_labels": obs.live_labels,
        "min_labels": config.min_labels,
        "retrains_today": today,
        "budget": config.daily_retrain_budget,
        "cooldown_left_s": cooldown_left,
        "in_flight": state.in_flight,
        "pending_window": state.pending.window if state.pending is not None else None,
        **{f"drift_score.{name}": score for name, score in obs.drift_scores.items()},
    }

    if not (drift_fires or quality_fires):
        reason = f"no trigger: {_drift_status(streak, k)}; {_quality_status(obs, live, ref, config)}"
        decision = Decision(action="none", reason=reason, window=obs.window, time=obs.time, numbers=numbers)
        return _replace(state, consecutive_drift=streak, consecutive_low_quality=low_streak), decision

    trigger: Trigger = "drift+quality" if drift_fires and quality_fires else "drift" if drift_fires else "quality"
    why = []
    if drift_fires:
        why.append(_drift_reason(streak, k, obs))
    if quality_fires:
        assert live is not None and ref is not None and drop is not None
        why.append(
            f"live {obs.metric} {live:.4f} is {drop:.4f} worse than the champion's {ref:.4f} "
            f"(allowed drop {config.quality_drop:g}, {obs.live_labels} labels, {low_streak} windows in a row)"
        )
    reason = "; ".join(why)

    blocked = _suppressed_by(state, config, day, today, cooldown_left)
    if blocked is not None:
        key, because = blocked
        decision = Decision(
            action="suppressed",
            trigger=trigger,
            reason=f"{reason}; suppressed: {because}",
            suppressed_by=key,
            window=obs.window,
            time=obs.time,
            numbers=numbers,
        )
        counts = {**state.suppressed, key: state.suppressed.get(key, 0) + 1}
        return _replace(
            state, consecutive_drift=streak, consecutive_low_quality=low_streak, suppressed=counts
        ), decision

    decision = Decision(
        action="retrain", trigger=trigger, reason=reason, window=obs.window, time=obs.time, numbers=numbers
    )
    new = _replace(
        state,
        consecutive_drift=0,
        consecutive_low_quality=0,
        last_trigger_window=obs.window,
        pending=decision,
        decisions=state.decisions + 1,
    )
    return new, decision


def take_pending(state: PolicyState) -> tuple[PolicyState, Decision | None]:
    """Hand the raised decision to the retrain submitter and clear it.

    Call `retrain_started` right after, before awaiting the submission (the job id can be chosen up
    front): between the two, neither `pending` nor `in_flight` holds off another trigger. If the
    submission then fails, `retrain_finished` with the same id frees the slot again.
    """
    if state.pending is None:
        return state, None
    return _replace(state, pending=None), state.pending


def retrain_started(state: PolicyState, job_id: str, now: float) -> PolicyState:
    """Record a started retrain: it blocks others while in flight and counts against today's budget."""
    day = _utc_day(now)
    oldest = (datetime.fromtimestamp(now, tz=timezone.utc).date() - timedelta(days=KEEP_DAYS - 1)).isoformat()
    by_day = {d: n for d, n in state.retrains_by_day.items() if d >= oldest}
    by_day[day] = by_day.get(day, 0) + 1
    return _replace(state, in_flight=job_id, last_retrain_started=now, retrains_by_day=by_day)


def reset_streak(state: PolicyState) -> PolicyState:
    """After a rebase: windows judged against the old reference no longer count towards K."""
    return _replace(state, consecutive_drift=0, consecutive_low_quality=0)


def retrain_finished(state: PolicyState, job_id: str) -> PolicyState:
    """Free the in-flight slot; a stale id (an older job's late report) changes nothing."""
    if state.in_flight != job_id:
        return state
    return _replace(state, in_flight=None)


# ---- helpers ---------------------------------------------------------------------------------
def _replace(state: PolicyState, **changes: Any) -> PolicyState:
    # validated copy, sharing nothing mutable with the input
    return PolicyState.model_validate({**state.model_dump(), **changes})


def _finite(value: float | None) -> float | None:
    # a NaN metric (e.g. AUC over one class) is "no measurement", never a quality drop
    return value if value is not None and math.isfinite(value) else None


def _utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, tz=timezone.utc).date().isoformat()


def _cooldown_left(state: PolicyState, now: float, cooldown_s: float) -> float:
    if state.last_retrain_started is None:
        return 0.0
    elapsed = max(0.0, now - state.last_retrain_started)  # a window stamped before the start: just started
    return max(0.0, cooldown_s - elapsed)


def _suppressed_by(
    state: PolicyState, config: MonitoringConfig, day: str, today: int, cooldown_left: float
) -> tuple[SuppressedBy, str] | None:
    if state.pending is not None:
        return "pending", f"the retrain decision of window {state.pending.window} is still pending"
    if state.in_flight is not None:
        return "in_flight", f"retrain job {state.in_flight} is in flight"
    budget = config.daily_retrain_budget
    if budget == 0:
        return "budget_zero", "the daily retrain budget is 0"
    counted = today + (state.pending is not None)  # a pending decision is a retrain about to start
    if counted >= budget:
        return "daily_budget", f"{counted} of {budget} retrains already started on {day} (UTC daily budget)"
    if cooldown_left > 0:
        return (
            "cooldown",
            f"cool-down, {cooldown_left:.0f}s of {config.cooldown_s:g}s left since the last retrain started",
        )
    return None


def _drift_reason(streak: int, k: int, obs: Observation) -> str:
    reason = f"drift in {streak} consecutive windows (K={k})"
    if obs.drifted_features:
        shown = [
            f"{name} ({obs.drift_scores[name]:.3f})" if name in obs.drift_scores else name
            for name in obs.drifted_features
        ]
        reason += ": " + ", ".join(shown)
    return reason


def _drift_status(streak: int, k: int) -> str:
    return f"drift in {streak} of K={k} consecutive windows" if streak else "no drift"


def _quality_status(obs: Observation, live: float | None, ref: float | None, config: MonitoringConfig) -> str:
    metric = obs.metric
    if live is None or ref is None:
        return f"no live {metric} to compare" if live is None else f"no champion {metric} to compare"
    if obs.live_labels < config.min_labels:
        return f"live {metric} over {obs.live_labels} labels, fewer than min_labels={config.min_labels}"
    status = f"live {metric} {live:.4f} vs champion {ref:.4f} (allowed drop {config.quality_drop:g})"
    drop = quality_shortfall(metric, live, ref)
    z = _drop_z(obs, drop, ref)
    if drop > config.quality_drop and z is not None and z < _z_needed(config):
        status += f", within the window's noise ({z:.2f} standard errors, {_z_needed(config):.2f} needed)"
    return status


def _z_needed(config: MonitoringConfig) -> float:
    return NormalDist().inv_cdf(config.quality_confidence)


def _drop_z(obs: Observation, drop: float | None, ref: float | None) -> float | None:
    """The drop in standard errors of the live metric; None where its noise is not known."""
    if drop is None or ref is None or obs.live_metric_se is None:
        return None
    se = shortfall_se(obs.metric, obs.live_metric_se, ref)
    return round(drop / se, 3) if 0 < se < math.inf else None
