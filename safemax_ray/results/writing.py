"""The report's files: numbers as the tables show them, Markdown and CSV, each file written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safemax_ray import storage
from safemax_ray.errors import SafemaxError


def format_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def column_label(column: Any) -> str:
    # A MultiIndex column (group, metric) flattens to "group/metric": one header line in Markdown/CSV.
    return "/".join(str(part) for part in column) if isinstance(column, tuple) else str(column)


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style Markdown table: index as the first column, numbers to 2 decimals, NaN as "-".

    Written here rather than with DataFrame.to_markdown so the package does not need `tabulate`.
    """
    header = [str(table.index.name or "")] + [column_label(c) for c in table.columns]
    lines = [
        "| " + " | ".join(_escape_cell(h) for h in header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for label, row in table.iterrows():
        cells = [str(label)] + [format_number(v) for v in row.tolist()]
        lines.append("| " + " | ".join(_escape_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` all at once: a reader sees the old file or the new, never half of one."""
    storage.write_bytes_atomic(str(path), data, overwrite=True)
    return path


def local_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    if storage.is_uri(str(out_dir)):
        raise SafemaxError(f"report folder {out_dir} is a URI; pass a local folder as out_dir")
    return Path(str(out_dir).removeprefix("file://"))


def export(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `<name>.md` and `<name>.csv` for each table (quality, cost) atomically; return the paths.

    CSV columns are flattened to "group/metric" so the file has one header line for spreadsheets and
    DuckDB; the first column is the class (0..K-1, then mean, std).
    """
    folder = local_out_dir(out_dir)
    written = []
    for name, table in tables.items():
        written.append(write_atomic(folder / f"{name}.md", to_markdown(table).encode()))
        flat = table.copy()
        flat.columns = [column_label(c) for c in table.columns]
        written.append(write_atomic(folder / f"{name}.csv", flat.to_csv().encode()))
    return written
