"""`report.html`: the report as one page a colleague can open, with nothing beside it and no network.

The tables are HTML tables (numbers as the Markdown shows them), the figures PNG data URIs, the
warnings a list; the Markdown, CSV and PNG files stay for tools and diffs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from safemax_ray.results.writing import format_number

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; }
figure { margin: 1rem 0; } img { max-width: 100%; border: 1px solid #eee; }
.warning { color: #8a5a00; }
"""


def page(title: str, tables: dict[str, pd.DataFrame], images: list[Path], warnings: list[str]) -> str:
    """The whole page: warnings first, then each table under its name, then each figure inline."""
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(f"<ul class='warning'>{items}</ul>")
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(_table(table))
    for image in images:
        parts.append(_figure(image))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(table: pd.DataFrame) -> str:
    shown = table.map(format_number)
    return shown.to_html(escape=True, border=0, classes="report-table")


def _figure(image: Path) -> str:
    data = base64.b64encode(image.read_bytes()).decode("ascii")
    name = html.escape(image.stem.replace("_", " "))
    return f"<figure><img src='data:image/png;base64,{data}' alt='{name}'><figcaption>{name}</figcaption></figure>"
