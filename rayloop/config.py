"""Typed configuration: YAML -> pydantic models, with `key.sub=value` overrides.

Every section forbids unknown keys, so a typo fails loudly with the key, the bad value and
what is allowed. Ray's own config objects are built from these in one place per subsystem.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rayloop.constants import DEFAULT_HOME, DEFAULT_SERVE_TOKEN_ENV_VAR, HOME_ENV_VAR, STORAGE_ENV_VAR
from rayloop.data import synthetic
from rayloop.data.schema import FeatureSchema
from rayloop.data.synthetic import Scenario
from rayloop.errors import ConfigError
from rayloop.training.search_space import check_space

# share of a drift window's false-alarm level spent on the model scores' tests, None: scores and
# features in one family (why: rayloop.monitoring.drift)
DEFAULT_PREDICTION_SHARE: float | None = None

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigSource",
    "RayloopConfig",
    "DataConfig",
    "SyntheticDataConfig",
    "SplitConfig",
    "FeaturesConfig",
    "TrainingConfig",
    "TuningConfig",
    "RegistryConfig",
    "ServingConfig",
    "MonitoringConfig",
    "RetrainConfig",
    "ProfileConfig",
    "load_config",
    "load_profile",
    "apply_overrides",
    "config_hash",
]

# The embedded default: `configs/demo.yaml` at the repository root.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SyntheticDataConfig(_Section):
    """Generated data, used when `data.source` is `synthetic`."""

    n_rows: int = Field(20_000, gt=0)
    seed: int = 0
    task: Literal["binary", "multiclass", "regression"] = Field(
        "binary", description="the label generated: 0/1, low/medium/high, or a number (rayloop.data.synthetic)"
    )
    scenario: Scenario | None = None
    bad_row_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="rows corrupted to show validation")
    rows_per_file: int = Field(1_000_000, gt=0)


class SplitConfig(_Section):
    """`auto`: by time when the timestamp column exists (train on the past), else by a hash of the
    entity id when that column exists, else by a hash of the row's content."""

    method: Literal["auto", "time", "hash", "content"] = "auto"
    train: float = Field(0.7, gt=0.0, lt=1.0)
    validation: float = Field(0.15, gt=0.0, lt=1.0)
    test: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class DataConfig(_Section):
    source: str = Field("synthetic", description="'synthetic' or a Parquet/CSV URI: path, file://, s3://, gs://")
    format: Literal["auto", "parquet", "csv"] = "auto"
    label_column: str = "label"
    task: Literal["auto", "binary", "multiclass", "regression"] = Field(
        "auto", description="auto: read off the label's type and distinct values (see rayloop.tasks)"
    )
    max_classes: int = Field(50, ge=2, le=10_000, description="most classes a classification may have")
    timestamp_column: str | None = "event_time"
    id_column: str | None = "entity_id"
    schema_: FeatureSchema | None = Field(
        None,
        alias="schema",
        description="declared schema; inferred from the source when absent (synthetic data: the generator's)",
    )
    max_reject_ratio: float = Field(0.05, ge=0.0, le=1.0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    read_blocks: int | None = Field(None, gt=0, description="override the number of read blocks")
    preprocess_run: str | None = Field(None, description="train/tune on this preprocess run id (default: the latest)")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @model_validator(mode="after")
    def _roles_in_schema(self) -> DataConfig:
        if self.schema_ is None and self.source == "synthetic":
            # the generator knows its table: types, ranges and categories to reject its broken rows
            self.schema_ = synthetic.declared_schema(self.synthetic.task)
        if self.schema_ is None:
            return self
        names = set(self.schema_.names)
        for role in ("label_column", "timestamp_column", "id_column"):
            value = getattr(self, role)
            if value is not None and value not in names:
                raise ValueError(f"{role}={value!r} is not a column of data.schema (columns: {sorted(names)})")
        return self


class FeaturesConfig(_Section):
    numeric: list[str] | Literal["auto"] = "auto"
    categorical: list[str] | Literal["auto"] = "auto"
    exclude: list[str] = []
    numeric_strategy: Literal["standardize", "quantile_bins"] = "standardize"
    n_bins: int = Field(10, ge=2, le=1000, description="quantile bins for numeric_strategy=quantile_bins")
    missing_indicators: bool = True
    top_k: int = Field(100, ge=1, description="vocabulary size per categorical; the rest share one slot")
    min_frequency: int = Field(1, ge=1)
    time_features: list[Literal["hour", "day_of_week", "day_of_month", "month"]] = ["hour", "day_of_week"]
    profile_bins: int = Field(
        100,
        ge=2,
        le=1000,
        description="quantile bins of the reference profile (drift tests merge them per window size)",
    )
    quantile_precision: int = Field(200, ge=8, le=65535, description="KLL sketch size (rank error ~1.3% at 200)")


LIGHTGBM_DEFAULTS: dict[str, Any] = {"num_boost_round": 200, "learning_rate": 0.05, "num_leaves": 31}
MLP_DEFAULTS: dict[str, Any] = {
    "hidden": [128, 64],
    "epochs": 10,
    "batch_size": 512,
    "lr": 1e-3,
    "dropout": 0.1,
    "patience": 3,
}


class TrainingConfig(_Section):
    model: Literal["lightgbm", "mlp"] = "lightgbm"
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="auto: local mode (the training runs in the driver process) when the data fits in half "
        "of the driver node's free memory and that node has a CPU to spare, else Ray Train workers "
        "(rayloop.training.placement); 0: local mode (no worker start-up, no data-parallel training, "
        "nothing retried; checkpoints still go to the storage path); n: n Ray Train workers",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    lightgbm: dict[str, Any] = Field(default_factory=lambda: dict(LIGHTGBM_DEFAULTS), description="lightgbm params")
    mlp: dict[str, Any] = Field(
        default_factory=lambda: dict(MLP_DEFAULTS), description="TabularMLP and optimizer params"
    )
    early_stopping_rounds: int = Field(20, ge=1)
    refit: Literal["all", "train_validation", "none"] = Field(
        "all",
        description="after the evaluation fit on train, refit on these splits with the same parameters and "
        "rounds/epochs and serve that (all: the newest rows too); none serves the evaluation fit",
    )
    max_failures: int = Field(1, ge=0, description="times a lost worker group is restarted (workers only)")
    slice_column: str | None = Field(
        None, description="a categorical input column: test metrics per value (skipped, with a warning, if absent)"
    )

    @model_validator(mode="after")
    def _local_mode_retries_nothing(self) -> TrainingConfig:
        # the default max_failures stays quiet; a value the user set would silently do nothing
        if self.num_workers == 0 and "max_failures" in self.model_fields_set and self.max_failures > 0:
            raise ValueError(
                f"max_failures={self.max_failures} restarts lost workers, and num_workers=0 (local mode: the "
                "training runs in the driver) has none to restart: set max_failures=0, or num_workers >= 1"
            )
        return self

    @field_validator("lightgbm", "mlp")
    @classmethod
    def _over_defaults(cls, value: dict[str, Any], info) -> dict[str, Any]:
        # `--set training.lightgbm.num_leaves=63` changes one parameter, not the whole set
        return {**(LIGHTGBM_DEFAULTS if info.field_name == "lightgbm" else MLP_DEFAULTS), **value}


class TuningConfig(_Section):
    enabled: bool = True
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: float = Field(300, gt=0)
    metric: str | None = Field(
        None,
        description="validation metric to optimize; default per task (auc | multi_logloss | rmse); "
        "binary: auc, logloss, accuracy; multiclass: multi_logloss, accuracy, macro_f1; regression: rmse, mae, r2",
    )
    scheduler: Literal["asha", "fifo"] = Field("asha", description="fifo runs every trial to the end (random search)")
    grace_period: int = Field(2, ge=1, description="reports a trial gets before ASHA may stop it")
    reduction_factor: int = Field(3, ge=2)
    report_every_rounds: int = Field(10, ge=1, description="LightGBM rounds per Tune report (an MLP reports per epoch)")
    cpus_per_trial: float = Field(1.0, gt=0)
    seed: int = 0
    search_space: dict[str, Any] = Field(
        default_factory=dict,
        description="{param: {uniform|loguniform|randint|choice: args}}; empty: the model's default",
    )

    @field_validator("search_space")
    @classmethod
    def _space(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_space(value)


class RegistryConfig(_Section):
    model_name: str = Field("rayloop-tabular", min_length=1)
    gate_metric: str | None = Field(
        None,
        description="holdout metric of the gate; default per task (binary auc, multiclass macro_f1, regression "
        "rmse); any metric of the task (rayloop.tasks.TASK_METRICS), each with its own direction",
    )
    tolerance: float = Field(0.005, ge=0.0)
    experiment: str = "rayloop"


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    backend: Literal["auto", "native", "torch", "torch_compile", "cuda_graph", "tensorrt"] = "auto"
    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=1, description="beyond this, requests get a fast 503")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After on an overload 503")
    max_records_per_request: int = Field(1024, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    decision_threshold: float = Field(0.5, gt=0, lt=1, description="label = probability >= threshold")
    auth_token_env: str = Field(
        DEFAULT_SERVE_TOKEN_ENV_VAR, description="env var holding an optional bearer token (never the token itself)"
    )
    model_ref: str = Field("champion", description="alias or version the app serves")
    follow_alias_s: float = Field(
        1.0,
        ge=0,
        description="replicas serving an alias check where it points this often and swap when it moves "
        "(0: only on a redeploy)",
    )
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(32, gt=0)
    parity_tolerance: float = Field(
        1e-3, gt=0, description="an optimized backend's largest difference from the reference (relative for values)"
    )
    interval_coverage: float = Field(
        0.9, gt=0, lt=1, description="a regression's prediction intervals hold this share of labels (split-conformal)"
    )

    @model_validator(mode="after")
    def _limits(self) -> ServingConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or every batch is capped at max_ongoing_requests"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        return self


class MonitoringConfig(_Section):
    """The DriftMonitor: what replicas sample, how windows are judged, when a retrain is asked for."""

    enabled: bool = Field(True, description="replicas send samples and labels to the model's DriftMonitor")
    window_size: int = Field(1000, ge=10, description="sampled rows per tumbling drift window")
    sample_rate: float = Field(1.0, gt=0.0, le=1.0, description="fraction of served rows sent to the monitor")
    buffer_size: int = Field(
        10_000, ge=1, description="rows a replica holds for the monitor; beyond it, drop and count"
    )
    # each send costs the monitor a Ray call and a pass over every feature whatever its size, so
    # fewer, bigger sends cost it less per served row
    send_batch_rows: int = Field(1024, ge=1, description="a replica sends when this many rows are buffered ...")
    send_interval_s: float = Field(1.0, gt=0, description="... or when this much time has passed")
    p_value: float = Field(0.01, gt=0, lt=1, description="false-discovery level across all drift tests of a window")
    psi_threshold: float = Field(0.2, gt=0, description="PSI over which a feature counts as materially drifted")
    min_psi: float = Field(0.0, ge=0, description="a significant feature alarms only when its PSI is also above this")
    prediction_share: float | None = Field(
        DEFAULT_PREDICTION_SHARE,
        gt=0,
        lt=1,
        description="share of p_value for the model scores' tests, the rest for the features' (null: one family); "
        "0.5 finds label-prior shifts sooner and input shifts a little later",
    )
    numeric_tests: list[Literal["rank", "scale", "ks", "chi2"]] = Field(
        ["rank", "scale", "ks", "chi2"],
        min_length=1,
        description="tests that decide numeric and score drift (all are reported; missingness is always tested)",
    )
    consecutive_windows: int = Field(2, ge=1, description="drifted windows in a row that raise a retrain decision")
    quality_metric: str | None = Field(
        None,
        description="live metric from feedback; default per task (binary auc, multiclass accuracy, regression mae)",
    )
    quality_drop: float = Field(
        0.05,
        ge=0,
        description="live metric this much worse than the champion's test metric raises one (absolute for "
        "auc/accuracy/macro_f1, relative for rmse/mae: 0.05 = 5% larger error)",
    )
    quality_windows: int = Field(
        2, ge=1, description="windows in a row the live metric must stay that low (one noisy window is not a drop)"
    )
    quality_confidence: float = Field(
        0.99,
        ge=0.5,
        lt=1.0,
        description="and the drop must be beyond the live window's noise with this one-sided confidence "
        "(a bootstrap of its labels; 0.5: the point estimate alone)",
    )
    min_labels: int = Field(200, ge=10, description="joined labels a live-quality window needs")
    label_horizon_s: float = Field(86_400, gt=0, description="how long a prediction waits for its label in memory")
    max_pending_labels: int = Field(200_000, ge=1, description="predictions kept in memory for the label join")
    flush_rows: int = Field(5_000, ge=1, description="inference-log rows buffered before a Parquet file is written ...")
    flush_interval_s: float = Field(30.0, gt=0, description="... or seconds since the last write")
    cooldown_s: float = Field(600, ge=0, description="seconds after a retrain starts before another may")
    daily_retrain_budget: int = Field(4, ge=0, description="retrains per UTC day")
    storage: str | None = Field(None, description="state and inference-log root (pyarrow URI); default RAYLOOP_HOME")
    niceness: Annotated[int, Field(ge=0, le=19)] | Literal["idle"] = Field(
        10,
        description="how the monitor's threads yield the CPU to replicas sharing it (its buffers absorb the wait): "
        "a nice increment (0 keeps Ray's worker priority), or 'idle': only when nothing else wants the CPU "
        "(Linux SCHED_IDLE; nice 19 elsewhere), so a saturated core starves it and replicas drop samples",
    )


class RetrainConfig(_Section):
    """What the loop does with a retrain decision: the job, its data window and the rollout."""

    enabled: bool = Field(True, description="the monitor submits `workloads.retrain` for each retrain decision")
    reference_ratio: float = Field(
        2.0,
        ge=0.0,
        description="original training rows kept per labelled recent training row "
        "(a random sample; 0: recent rows only)",
    )
    recent_weight: int = Field(
        2, ge=1, le=100, description="each labelled recent row counts this many times (it is repeated)"
    )
    holdout_fraction: float = Field(
        0.3, gt=0.0, lt=1.0, description="the most recent labelled rows kept out of training for the gate"
    )
    min_labelled_rows: int = Field(
        1000, ge=20, description="labelled rows since the drift began that a retrain needs; the monitor waits for them"
    )
    max_label_wait_s: float = Field(
        600, ge=0, description="after this long waiting for labels the job is submitted anyway (and refuses if short)"
    )
    since: float | None = Field(
        None, description="epoch seconds: log rows served from then on form the recent window (the monitor sets it)"
    )
    tune: bool = Field(
        False, description="run the Ray Tune search in the retrain job (slower) instead of one training run"
    )
    timeout_s: float = Field(1800, gt=0, description="a retrain job running longer is stopped and counted as timed out")
    working_dir: str | None = Field(
        None, description="runtime_env working_dir of the job; default: the installed rayloop package"
    )
    driver_cpus: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="CPUs the Jobs API reserves for the job's driver (entrypoint_num_cpus), which puts it on a "
        "node with that many free; auto: 1 when the monitor's node (the head) has no CPUs, so the driver runs "
        "on a worker node and a small window trains there in local mode, else 0 (the driver beside the monitor)",
    )
    seed: int = 0


class RayloopConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)


class ProfileConfig(_Section):
    """Where one environment keeps its state: `configs/profiles/<name>.yaml`.

    The one place that says where checkpoints go and which MLflow server holds the registry;
    `rayloop env --profile` exports it for `ray start`, and `rayloop cluster render` writes it
    into every KubeRay manifest."""

    name: str = Field(min_length=1)
    config: str = Field(
        "configs/demo.yaml", description="the rayloop config the cluster runs (relative to the working dir)"
    )
    home: str = Field(DEFAULT_HOME, description="RAYLOOP_HOME on every node: a shared volume on a cluster")
    storage: str | None = Field(
        None, description="RAYLOOP_STORAGE: Train/Tune checkpoints (s3://, gs:// or a shared path); default under home"
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLFLOW_TRACKING_URI: a real MLflow server; default the sqlite store under home"
    )
    image: str = Field(
        "rayproject/ray",
        description="image repository; the tag is always <pinned Ray>-<python>-gpu (cluster/Dockerfile)",
    )
    namespace: str = "default"
    state_volume_claim: str | None = Field(None, description="a ReadWriteMany PVC mounted at `home` on every Ray pod")
    state_storage_class: str | None = Field(
        None,
        description="storageClassName of that PVC: a ReadWriteMany class (EFS, Filestore, Azure Files); "
        "default: the cluster's default class, which is often ReadWriteOnce only",
    )
    state_volume_size: str = Field("100Gi", description="the PVC's request (EFS ignores it; Filestore needs 1Ti+)")
    mlflow_artifacts: str | None = Field(
        None,
        description="--artifacts-destination of the MLflow server `rayloop cluster render` writes when "
        "mlflow_tracking_uri names an in-cluster Service (s3://, gs://, wasbs://); the server proxies "
        "artifacts, so only it needs the bucket",
    )
    operator_namespace: str = Field(
        "kuberay-system", description="where the KubeRay operator runs (it calls the dashboard)"
    )
    monitoring_namespace: str = Field("monitoring", description="where Prometheus runs (it scrapes port 8080)")
    serve_client_namespaces: list[str] = Field(
        default_factory=list, description="namespaces whose pods may call the Serve API on port 8000"
    )

    @field_validator("mlflow_tracking_uri", "storage")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # a URI with user:password@ would put a secret in a committed file
        if value and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("must not carry credentials (user:password@host); use the client's env or a secret")
        return value

    @field_validator("mlflow_artifacts")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        # wasbs://container@account... names a container, not a user: only a password is refused
        if value and ":" in value.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]:
            raise ValueError("must not carry credentials (user:password@host); use workload identity")
        return value

    @model_validator(mode="after")
    def _artifacts_for_an_in_cluster_server(self) -> ProfileConfig:
        if self.mlflow_service() is not None and not self.mlflow_artifacts:
            raise ValueError(
                "mlflow_tracking_uri names an in-cluster Service, which `rayloop cluster render` deploys: "
                "set mlflow_artifacts (the bucket its --artifacts-destination proxies, e.g. s3://bucket/mlflow)"
            )
        return self

    def mlflow_service(self) -> tuple[str, str, int] | None:
        """(service, namespace, port) when mlflow_tracking_uri is `http://<service>.<namespace>.svc...`:
        the MLflow server runs in the cluster and the manifests deploy it under exactly that name. None for
        a server elsewhere (or none)."""
        if not self.mlflow_tracking_uri:
            return None
        parsed = urlsplit(self.mlflow_tracking_uri)
        labels = (parsed.hostname or "").split(".")
        if parsed.scheme != "http" or len(labels) < 3 or labels[2] != "svc" or not all(labels[:2]):
            return None
        return labels[0], labels[1], parsed.port or 80

    def env(self) -> dict[str, str]:
        """The environment every Ray node and job of this profile gets."""
        env = {HOME_ENV_VAR: self.home}
        if self.storage:
            env[STORAGE_ENV_VAR] = self.storage
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        return env


PROFILES_DIR = DEFAULT_CONFIG_PATH.parent / "profiles"


def load_profile(name_or_path: str | Path) -> ProfileConfig:
    """A profile by name (`prod` -> configs/profiles/prod.yaml) or by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(
            f"cannot read profile {str(path)!r} ({exc.strerror or exc}); known profiles: {known}"
        ) from exc
    try:
        return ProfileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, f"profile {path}", ProfileConfig)) from None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings; values are YAML (`3`, `true`, `[a, b]`, `null`)."""
    result = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. data.synthetic.n_rows=5000)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = parsed
    return result


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RayloopConfig:
    """Load a YAML config (the embedded demo default when `path` is None) and apply overrides."""
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(source)!r}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(source)!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(source)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides), source=str(source))


class ConfigSource(BaseModel):
    """Where a config comes from: a YAML file (None: the embedded configs/demo.yaml) and
    `key.sub=value` overrides.

    This, not a parsed config, is what crosses a process boundary (a Serve app's args, the
    DriftMonitor's args, a job's command line), so every process reads the same file the same
    way; `load` parses it once per process.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(None, description="YAML config file, made absolute (another process has another cwd)")
    overrides: tuple[str, ...] = Field((), description="`key.sub=value` overrides, applied in order")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value else None

    def load(self) -> RayloopConfig:
        """The parsed config (cached: a process loads a source once)."""
        return _load_once(self.path, self.overrides)

    def with_overrides(self, *more: str) -> ConfigSource:
        """The same source with more overrides after these (later ones win)."""
        return ConfigSource(path=self.path, overrides=(*self.overrides, *more))

    def cli_args(self) -> list[str]:
        """`--config PATH --set K=V ...`: the arguments of a workload that loads this source."""
        args = ["--config", self.path] if self.path else []
        for item in self.overrides:
            args += ["--set", item]
        return args


@functools.lru_cache(maxsize=64)
def _load_once(path: str | None, overrides: tuple[str, ...]) -> RayloopConfig:
    return load_config(path, overrides)


def parse_config(raw: Mapping[str, Any], source: str = "<config>") -> RayloopConfig:
    try:
        return RayloopConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def config_hash(config: RayloopConfig) -> str:
    """Stable content hash of the effective config (lineage for runs and models)."""
    payload = json.dumps(config.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _explain(exc: ValidationError, source: str, root: Any = None) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1], root or RayloopConfig)
            lines.append(f"  {key}: unknown key; allowed keys here: {', '.join(allowed) or '(none)'}")
            continue
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {key}: {err['msg']} (got {shown})")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts union member names (e.g. 'list[str]', "literal['auto']") into error locations
    return isinstance(part, str) and ("[" in part or part in {"function-after"})


def _allowed_keys(loc: tuple[Any, ...], root: Any) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields:
            return []
        field = next((f for name, f in fields.items() if (f.alias or name) == part or name == part), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    fields = getattr(model, "model_fields", {})
    return sorted(f.alias or name for name, f in fields.items())


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
