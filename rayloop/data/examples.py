"""Real data sets that ship inside scikit-learn (no download), as tables a user would have.

`rayloop example NAME PATH` writes one to Parquet or CSV; the tests and `benchmarks/bench_tasks.py`
read them the same way. Each is a plain table: the features under their own names and the label
in `target`, with no id and no timestamp column (the usual CSV export).

| name | task | rows | label |
|---|---|---|---|
| breast_cancer | binary | 569 | 0 malignant, 1 benign |
| wine | multiclass | 178 | cultivar 0, 1, 2 |
| digits | multiclass | 1,797 | the digit 0..9 (8x8 pixel intensities) |
| iris | multiclass | 150 | species, as its name (a string label) |
| diabetes | regression | 442 | disease progression after a year |
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = ["EXAMPLES", "LABEL", "example_table", "write_example"]

LABEL = "target"
EXAMPLES = {
    "breast_cancer": "binary",
    "wine": "multiclass",
    "digits": "multiclass",
    "iris": "multiclass",
    "diabetes": "regression",
}


def example_table(name: str) -> pa.Table:
    """One of EXAMPLES as an Arrow table (features, then `target`)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; known: {sorted(EXAMPLES)}")
    from sklearn import datasets  # ships the files; imported only here

    loaded = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = loaded.frame.rename(columns=lambda c: _column_name(str(c)))
    if "target" in frame.columns and LABEL != "target":
        frame = frame.rename(columns={"target": LABEL})
    if name == "iris":  # a string label, as many real tables have
        frame[LABEL] = [str(loaded.target_names[i]) for i in frame[LABEL]]
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_example(name: str, path: str | Path) -> Path:
    """Write an example to `path`: Parquet, or CSV when the name ends in .csv."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    table = example_table(name)
    if target.suffix == ".csv":
        pacsv.write_csv(table, target)
    else:
        pq.write_table(table, target)
    return target


def _column_name(text: str) -> str:
    """scikit-learn's names ("mean radius", "sepal length (cm)") as plain column names."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "column"
