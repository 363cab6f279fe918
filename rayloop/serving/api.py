"""Request and response models of the Serve app, built from the bundle's schema (no Ray).

A record carries every input column of the model; its types and rules come from the schema the
model was trained with:

- numbers are JSON numbers (not booleans, not strings) and follow the schema's `min`/`max`;
  integers must be whole and fit in int64;
- `NaN` (accepted as a JSON extension) means missing: allowed where the column is nullable,
  refused otherwise; infinities are refused unless the column allows them;
- categories are *not* closed at serving: an unseen value is scored as out-of-vocabulary, which
  is what the features were fitted to do (drift monitoring counts those values);
- timestamps are ISO 8601; a naive one is read as UTC;
- columns of the training table that are not features (the id, the timestamp when it is not
  used, the label) are accepted and otherwise ignored, so a training row can be scored as it is;
  the id and the timestamp are logged with the row;
- unknown fields are refused, so a misspelt column never goes silently missing.

`RecordParser.parse(body, content_type)` returns plain row dicts or raises
`RequestError(status, errors)`: 400 for a body that is not JSON, 415 for another content type, 413
for a body too large, 422 for rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    with_config,
)
from pydantic_core import PydanticCustomError, to_json
from typing_extensions import NotRequired, TypedDict

from rayloop.data.schema import ColumnSchema, FeatureSchema
from rayloop.errors import LabelError
from rayloop.tasks import Task

__all__ = [
    "Feedback",
    "RecordParser",
    "RequestError",
    "error_detail",
    "json_bytes",
    "require_json",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING = 1024


@dataclass
class RequestError(Exception):
    status: int
    errors: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"detail": self.errors}


def _float_rule(column: ColumnSchema):
    def check(value: float | None) -> float | None:
        if value is None:
            return None
        if math.isnan(value):
            if not column.nullable:
                raise PydanticCustomError("null", "NaN (missing) is not allowed: the column is not nullable")
            return None
        if math.isinf(value) and not column.allow_infinite:
            raise PydanticCustomError("not_finite", "infinite values are not allowed in this column")
        if column.min is not None and value < column.min:
            raise PydanticCustomError("range", "must be >= {min}", {"min": column.min})
        if column.max is not None and value > column.max:
            raise PydanticCustomError("range", "must be <= {max}", {"max": column.max})
        return value

    return check


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _no_bool_or_text(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError(
            "int_type",
            "Input should be a valid integer (a number, not {kind})",
            {"kind": "a boolean" if isinstance(value, bool) else "a string"},
        )
    return value


def _field_type(column: ColumnSchema, *, native: bool = False) -> Any:
    """The pydantic type of one input column.

    `native=True` gives the fast variant: finite floats within the column's range, checked
    in pydantic-core without a Python call per value. It accepts a subset of what the full
    type accepts, with the same result, so a body that passes it needs no other check.
    """
    if column.dtype == "float64" and native:
        limits = {k: v for k, v in (("ge", column.min), ("le", column.max)) if v is not None}
        base: Any = Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
    elif column.dtype == "float64":
        # strict: a number (an int is one), never a boolean or a string
        base = Annotated[float, Field(strict=True, allow_inf_nan=True), AfterValidator(_float_rule(column))]
    elif column.dtype == "int64":
        limits = {
            "ge": max(INT64_MIN, math.ceil(column.min)) if column.min is not None else INT64_MIN,
            "le": min(INT64_MAX, math.floor(column.max)) if column.max is not None else INT64_MAX,
        }
        if native:
            base = Annotated[int, Field(strict=True, **limits)]
        else:  # a whole float (3.0, as pandas writes an int column with gaps) is an int too
            base = Annotated[int, BeforeValidator(_no_bool_or_text), Field(strict=False, **limits)]
    elif column.dtype == "bool":
        base = Annotated[bool, Field(strict=True)]
    elif column.dtype == "timestamp":
        base = Annotated[datetime, AfterValidator(_utc)]
    else:
        base = Annotated[str, Field(max_length=MAX_STRING)]
    return base | None if column.nullable else base


class Feedback(BaseModel):
    """The true label of an earlier prediction, by its request id (a binary 0/1 model's; a model
    of any task gets its own with `feedback_model`)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
    label: Literal[0, 1]


def feedback_model(task: Task) -> type[BaseModel]:
    """The feedback body of one model: its label in the task's type (a class value, or a finite
    number for a regression; never a boolean for a number), an unknown class refused."""

    def check(value: Any) -> Any:
        try:
            return task.parse_label(value)
        except LabelError as exc:
            raise PydanticCustomError(exc.rule, "{detail}", {"detail": exc.detail}) from None

    if task.kind == "regression":
        label_type: Any = Annotated[float, Field(strict=True, allow_inf_nan=False), AfterValidator(check)]
        description = "the observed value"
    else:
        label_type = Annotated[Any, AfterValidator(check)]
        description = f"the true class, one of {task.classes}"
    return create_model(
        "Feedback",
        __config__=ConfigDict(extra="forbid"),
        request_id=(str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")),
        label=(label_type, Field(description=description)),
    )


# ---- responses (the OpenAPI page shows the served model's task) --------------------------------
class BinaryPrediction(BaseModel):
    request_id: str
    label: Any = Field(description="the predicted class: the positive one when probability >= the threshold")
    probability: float = Field(description="P(positive class)")
    model_version: str


class MulticlassPrediction(BaseModel):
    request_id: str
    label: Any = Field(description="the most probable class (an original class value)")
    probabilities: dict[str, float] = Field(description="class -> probability, summing to 1")
    model_version: str


class RegressionPrediction(BaseModel):
    request_id: str
    prediction: float
    interval: list[float] | None = Field(
        None, description="[low, high]: the prediction interval at serving.interval_coverage (split-conformal)"
    )
    model_version: str


PREDICTION_MODELS: dict[str, type[BaseModel]] = {
    "binary": BinaryPrediction,
    "multiclass": MulticlassPrediction,
    "regression": RegressionPrediction,
}


def response_schema(task: Task) -> dict[str, Any]:
    """The JSON schema of `/v1/predict`'s answer for the task."""
    item = PREDICTION_MODELS[task.kind].model_json_schema()
    return {"type": "object", "properties": {"predictions": {"type": "array", "items": item}}}


def json_bytes(payload: Any) -> bytes:
    """Response JSON through pydantic-core's serializer (several times faster than `json.dumps`);
    NaN or infinity become null, never invalid JSON."""
    return to_json(payload, inf_nan_mode="null")


def require_json(content_type: str | None) -> None:
    """415 unless the request says it carries JSON."""
    if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, [{"field": "content-type", "rule": "media_type", "message": "send application/json"}])


def error_detail(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic errors as `{field, rule, message}`: the field path and the rule that failed."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        parts = [prefix] if prefix else []
        for part in err["loc"]:
            if isinstance(part, int):
                parts[-1:] = [f"{parts[-1] if parts else 'records'}[{part}]"]
            else:
                parts.append(str(part))
        out.append({"field": ".".join(parts) or "body", "rule": err["type"], "message": err["msg"]})
    return out


def _adapters(record: Any, max_records: int) -> tuple[TypeAdapter, TypeAdapter]:
    """Validators for one record and for a list of 1..max_records."""
    return TypeAdapter(record), TypeAdapter(Annotated[list[record], Field(min_length=1, max_length=max_records)])


def _validate(one: TypeAdapter, many: TypeAdapter, body: bytes, start: bytes) -> list[dict[str, Any]]:
    return [one.validate_json(body)] if start == b"{" else many.validate_json(body)


class RecordParser:
    """Validates request bodies against one model's input schema; reused for every request."""

    def __init__(
        self,
        schema: FeatureSchema,
        input_columns: list[str],
        max_records: int,
        max_body_bytes: int,
        passthrough: list[str] | None = None,
    ) -> None:
        """`passthrough`: columns of the training table that are not model inputs (the id, the
        timestamp, the label): accepted, typed, optional, and otherwise ignored."""
        by_name = {c.name: c for c in schema.columns}
        extra = [n for n in (passthrough or []) if n in by_name and n not in input_columns]

        def fields(native: bool) -> dict[str, Any]:
            out: dict[str, Any] = {n: _field_type(by_name[n], native=native) for n in input_columns}
            for n in extra:  # optional, and null allowed
                column = by_name[n].model_copy(update={"nullable": True})
                out[n] = NotRequired[_field_type(column, native=native)]  # type: ignore[valid-type]
            return out

        config = with_config(ConfigDict(extra="forbid", str_max_length=MAX_STRING))
        self.record_type = config(TypedDict("Record", fields(False)))  # type: ignore[operator]
        fast_type = config(TypedDict("Record", fields(True)))  # type: ignore[operator]
        self.input_columns = list(input_columns)
        self.passthrough = extra
        self.max_records = max_records
        self.max_body_bytes = max_body_bytes
        self._one, self._many = _adapters(self.record_type, max_records)
        # tried first: most bodies pass the native checks, which need no Python call per value
        self._fast_one, self._fast_many = _adapters(fast_type, max_records)

    def json_schema(self) -> dict[str, Any]:
        """The OpenAPI body: one record, or a list of at most `max_records`."""
        return {
            "oneOf": [
                self._one.json_schema(),
                {"type": "array", "items": self._one.json_schema(), "minItems": 1, "maxItems": self.max_records},
            ]
        }

    def parse(self, body: bytes, content_type: str | None) -> list[dict[str, Any]]:
        require_json(content_type)
        if len(body) > self.max_body_bytes:
            raise RequestError(
                413,
                [{"field": "body", "rule": "max_bytes", "message": f"body is larger than {self.max_body_bytes} bytes"}],
            )
        start = body.lstrip()[:1]
        if start not in (b"{", b"["):
            raise RequestError(
                400, [{"field": "body", "rule": "json", "message": "body must be a JSON object or array"}]
            )
        try:  # the fast types first; anything they refuse (NaN, infinities, errors) the full ones judge
            return _validate(self._fast_one, self._fast_many, body, start)
        except ValidationError:
            pass
        try:
            return _validate(self._one, self._many, body, start)
        except ValidationError as exc:
            detail = error_detail(exc, "" if start == b"[" else "record")
            if any(e["rule"] == "json_invalid" for e in detail):
                raise RequestError(400, detail) from None
            raise RequestError(422, detail) from None
