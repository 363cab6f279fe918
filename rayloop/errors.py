"""One exception hierarchy for rayloop.

Every message says what to change. Errors cross Ray process boundaries (a task raises,
the driver reports), so each class pickles with its structured fields intact.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "RayloopError",
    "ConfigError",
    "DataSourceError",
    "MissingColumnsError",
    "RejectRatioError",
    "FeatureError",
    "RayTempDirError",
    "BundleError",
    "RegistryError",
    "GateRefusedError",
    "RetrainError",
    "PreprocessRunError",
    "LabelError",
    "ClusterError",
]


class RayloopError(Exception):
    """Base class: catch this to handle any rayloop failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep subclasses picklable with their own signatures
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type, state: dict) -> RayloopError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class ConfigError(RayloopError):
    """A config file or `--set` override is invalid; the message names key, value and what is allowed."""


class DataSourceError(RayloopError):
    """A data source cannot be found or read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read data source {path!r}: {reason}")
        self.path = path
        self.reason = reason


class MissingColumnsError(RayloopError):
    """Required columns are absent from a source: nothing can be validated row by row."""

    def __init__(self, path: str, missing: Sequence[str], available: Sequence[str]) -> None:
        super().__init__(
            f"data source {path!r} is missing required column(s) {sorted(missing)}; "
            f"it has {list(available)}. Fix the data, or the schema in the config "
            "(data.schema.columns / required: false)."
        )
        self.path = path
        self.missing = sorted(missing)
        self.available = list(available)


class RejectRatioError(RayloopError):
    """Too many rows failed validation for the run to be trusted."""

    def __init__(self, rejected: int, total: int, limit: float, rejects_path: str) -> None:
        ratio = rejected / total if total else 1.0
        super().__init__(
            f"{rejected} of {total} rows ({ratio:.2%}) failed validation, over the limit "
            f"data.max_reject_ratio={limit:.2%}. The rejected rows and their reasons are in "
            f"{rejects_path}; fix the source or raise the limit."
        )
        self.rejected = rejected
        self.total = total
        self.limit = limit
        self.rejects_path = rejects_path


class FeatureError(RayloopError):
    """Features cannot be fitted or applied (e.g. a batch lacks a feature column)."""


class RayTempDirError(RayloopError):
    """Ray's temp dir is too long for Unix socket paths."""


class BundleError(RayloopError):
    """A directory or registered version is not a model bundle this rayloop can load."""


class RegistryError(RayloopError):
    """The model registry lacks what was asked for (a name, a version, an alias, a previous champion)."""


class PreprocessRunError(RayloopError):
    """A preprocess run to train on is missing or incomplete; the message names the run, what is
    missing and the command that makes it."""

    def __init__(self, message: str, *, run_id: str | None, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.missing = list(missing)


class LabelError(RayloopError):
    """A label does not fit the task (a class unseen in training, a float label for a classifier,
    too many classes, a string for a regression): names the column, the rule and the values."""

    def __init__(self, column: str, rule: str, detail: str) -> None:
        super().__init__(f"label column {column!r}: {detail} (rule: {rule})")
        self.column = column
        self.rule = rule
        self.detail = detail


class RetrainError(RayloopError):
    """A retrain cannot run as asked (too few labelled recent rows, no champion); the champion stays."""


class GateRefusedError(RayloopError):
    """The quality gate refused a challenger; the champion stays. Carries the decision."""

    def __init__(self, name: str, version: str, reason: str) -> None:
        super().__init__(f"model {name!r} version {version} was not promoted: {reason}")
        self.name = name
        self.version = version
        self.reason = reason


class ClusterError(RayloopError):
    """A local multi-node cluster cannot be built, started or found (rayloop.control.local_cluster)."""
