"""The report (results: loading, tables, figures, writing, html) on a small fake results folder: real numbers,
filters, latest-wins, files."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from safemax_ray.errors import SafemaxError
from safemax_ray.results import figures, loading, report, tables, writing
from safemax_ray.results import parquet as results

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)

# (method, study, class) -> (ua, entropy, fid, retain_acc, rte_s, peak_mem_mb)
VALUES = {
    ("safemax", "", 0): (100.0, 1.10, 16.0, 95.0, 300.0, 9000.0),
    ("safemax", "", 1): (90.0, 0.80, 17.5, 96.0, 320.0, 9100.0),
    ("safemax", "", 2): (100.0, 1.40, 15.0, 94.0, 290.0, 8900.0),
    ("salun", "sweep", 0): (99.0, 0.05, 18.0, 97.0, 700.0, 23000.0),
    ("salun", "sweep", 1): (100.0, 0.02, 16.5, 98.0, 710.0, 23500.0),
    ("salun", "sweep", 2): (98.0, 0.10, 17.0, 96.5, 690.0, 22800.0),
}


def make_row(method: str, study: str, forget_class: int, minutes: int, values, **extra) -> dict:
    ua, entropy, fid, retain_acc, rte_s, peak = values
    row = {
        "run_id": f"{method}-{study or 'none'}-{forget_class}-{minutes}",
        "run_key": f"{method}-digits-{forget_class}-abc-0",
        "timestamp": T0 + dt.timedelta(minutes=minutes),
        "method": method,
        "dataset": "digits",
        "forget_class": forget_class,
        "forget_classes": str(forget_class),
        "per_class_json": "{}",
        "lam": 0.5,
        "lr": 1e-4,
        "iterations": 100,
        "batch_size": 16,
        "alpha": 0.1,
        "seed": 0,
        "target": "uniform",
        "guidance": 2.0,
        "sample_steps": 50,
        "n_forget_samples": 64,
        "n_retain_per_class": 16,
        "ua": ua,
        "entropy": entropy,
        "fid": fid,
        "retain_acc": retain_acc,
        "fid_features": "classifier",
        "rte_s": rte_s,
        "peak_mem_mb": peak,
        "device": "cpu",
        "num_workers": 1,
        "base_model": "/models/base",
        "study": study,
        "noise_forget": 0.0,
        "noise_retain": 0.0,
        "method_options_json": "{}",
        "base_ok": True,
        "setup_s": 0.0,
        "config_json": "{}",
    }
    row.update(extra)
    return row


@pytest.fixture()
def results_dir(tmp_path):
    folder = tmp_path / "results"
    grid = tmp_path / "grid0.png"
    Image.new("RGB", (24, 16), (200, 30, 30)).save(grid)
    for i, ((method, study, c), values) in enumerate(VALUES.items()):
        extra = {"grid_path": str(grid)} if (method, c) == ("safemax", 0) else {}
        if (method, c) == ("safemax", 2):
            extra = {"grid_path": str(tmp_path / "missing.png")}  # must be skipped, not fail
        results.write_row(str(folder), make_row(method, study, c, minutes=10 + i, values=values, **extra))
    # An older and a newer rerun of safemax class 1: the newer one (minute 99) must replace minute 11's.
    results.write_row(str(folder), make_row("safemax", "", 1, 1, (0.0, 9.9, 99.0, 1.0, 1.0, 1.0)))
    results.write_row(str(folder), make_row("safemax", "", 1, 99, (80.0, 0.70, 18.5, 93.0, 330.0, 9200.0)))
    return str(folder)


def expected(method: str, study: str, index: int) -> list[float]:
    vals = [VALUES[(method, study, c)][index] for c in range(3)]
    if method == "safemax":
        vals[1] = (80.0, 0.70, 18.5, 93.0, 330.0, 9200.0)[index]  # latest rerun wins
    return vals


def test_load_runs_groups_and_latest_wins(results_dir):
    df = loading.load_runs(results_dir)
    assert len(df) == 6
    assert sorted(df["group"].unique()) == ["safemax", "sweep"]  # study label beats method name
    row = df[(df["group"] == "safemax") & (df["forget_class"] == 1)]
    assert len(row) == 1
    assert row["ua"].item() == 80.0 and row["run_id"].item().endswith("-99")


def test_quality_and_cost_tables_match_numpy(results_dir):
    t = tables.tables(loading.load_runs(results_dir))
    quality, cost = t["quality"], t["cost"]
    assert list(quality.index) == [0, 1, 2, "mean", "std"]
    assert list(cost.index) == [0, 1, 2, "mean", "std"]
    assert isinstance(quality.columns, pd.MultiIndex)
    checks = [
        (quality, "UA %", 0),
        (quality, "H", 1),
        (quality, "FID (judge's features)", 2),  # the rows' fid_features: not the paper's FID
        (quality, "retain acc %", 3),
        (cost, "RTE s", 4),
        (cost, "peak mem MB", 5),
    ]
    for group, (method, study) in {"safemax": ("safemax", ""), "sweep": ("salun", "sweep")}.items():
        for table, label, index in checks:
            vals = expected(method, study, index)
            np.testing.assert_allclose(table.loc[[0, 1, 2], (group, label)].to_numpy(float), vals)
            assert table.loc["mean", (group, label)] == pytest.approx(np.mean(vals))
            assert table.loc["std", (group, label)] == pytest.approx(np.std(vals, ddof=1))


def test_summary_rows_are_nan_safe(results_dir, tmp_path):
    # A group that ran only class 0 has a mean equal to that value and a NaN std, not 0 or an error.
    df = loading.load_runs(results_dir)
    df = df[~((df["group"] == "sweep") & (df["forget_class"] > 0))]
    quality = tables.tables(df)["quality"]
    assert np.isnan(quality.loc[1, ("sweep", "UA %")])
    assert quality.loc["mean", ("sweep", "UA %")] == pytest.approx(99.0)
    assert np.isnan(quality.loc["std", ("sweep", "UA %")])
    assert "| 1 | " in writing.to_markdown(quality) and " - |" in writing.to_markdown(quality)


def test_cost_ratios_count_only_set_ups_that_were_computed():
    # Three SA classes share one cached Fisher: the run that computed it took 100 s, the others read it.
    rows = [make_row("safemax", "", c, c, VALUES[("safemax", "", c)], setup_s=0.5) for c in range(3)]
    rows += [
        make_row("sa", "", c, 10 + c, (90.0, 0.9, 17.0, 95.0, 3000.0, 9000.0), setup_s=s, setup_cached=cached)
        for c, (s, cached) in enumerate([(100.0, False), (2.0, True), (3.0, True)])
    ]
    df = pd.DataFrame(rows).assign(group=lambda d: d["method"])
    ratios = tables.cost_ratios(df)
    assert ratios.loc["sa", "set-up s"] == pytest.approx(100.0)
    assert ratios.loc["safemax", "set-up s"] == pytest.approx(0.5)  # no setup_cached column value: computed
    assert ratios.loc["sa", "RTE + set-up / safemax"] == pytest.approx(3100.0 / (np.mean([300, 320, 290]) + 0.5))


def test_filters(results_dir):
    assert set(loading.load_runs(results_dir, method="salun")["group"]) == {"sweep"}
    assert set(loading.load_runs(results_dir, study="")["method"]) == {"safemax"}
    only = loading.load_runs(results_dir, study="sweep", dataset="digits")
    assert len(only) == 3 and set(only["method"]) == {"salun"}


def test_errors_name_the_problem(results_dir, tmp_path):
    with pytest.raises(SafemaxError, match="no results under"):
        loading.load_runs(str(tmp_path / "empty"))
    with pytest.raises(SafemaxError, match=r"method='nope'") as info:
        loading.load_runs(results_dir, method="nope", dataset="digits")
    assert "dataset='digits'" in str(info.value) and "safemax" in str(info.value)


def test_markdown_format(results_dir):
    quality = tables.tables(loading.load_runs(results_dir))["quality"]
    md = writing.to_markdown(quality)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| class | safemax/H | safemax/UA % |")
    assert len(lines) == 2 + 5
    mean_h = np.mean(expected("safemax", "", 1))
    mean_line = next(line for line in lines if line.startswith("| mean |"))
    assert f"| {mean_h:.2f} |" in mean_line
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_make_report_writes_tables_and_images(results_dir, tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    result = report.make_report(results_dir, console=console)
    assert result.out_dir == tmp_path / "results" / "_report"
    names = sorted(p.name for p in result.files)
    assert names == sorted(
        ["quality.md", "quality.csv", "cost.md", "cost.csv", "ratios.md", "ratios.csv"]
        + ["ua.png", "entropy.png", "fid.png", "samples_grid.png", "report.html"]
    )
    for path in result.files:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
    assert not [p for p in result.out_dir.iterdir() if p.name.startswith(".")]  # no temp files left

    assert "| mean |" in (result.out_dir / "quality.md").read_text()
    csv = pd.read_csv(result.out_dir / "cost.csv", index_col=0)
    assert csv.loc["mean", "sweep/RTE s"] == pytest.approx(700.0)
    assert csv.loc["std", "safemax/peak mem MB"] == pytest.approx(np.std([9000.0, 9200.0, 8900.0], ddof=1))
    ratios = pd.read_csv(result.out_dir / "ratios.csv", index_col=0)
    assert ratios.loc["safemax", "RTE / safemax"] == pytest.approx(1.0)
    assert ratios.loc["sweep", "RTE / safemax"] == pytest.approx(700.0 / ratios.loc["safemax", "RTE s"])

    printed = buffer.getvalue()
    assert "quality" in printed and "cost" in printed and "mean" in printed and "std" in printed

    # Rerunning overwrites the report in place (atomically) rather than failing.
    again = report.make_report(results_dir, out_dir=tmp_path / "other", method="safemax")
    assert again.out_dir == tmp_path / "other"
    assert list(again.tables["quality"].columns.get_level_values(0).unique()) == ["safemax"]


def test_samples_grid_skipped_when_no_image(results_dir, tmp_path):
    files = figures.figures(loading.load_runs(results_dir, method="salun"), tmp_path / "figs")
    assert sorted(p.name for p in files) == ["entropy.png", "fid.png", "ua.png"]


def test_print_tables_bold_summary_rows(results_dir):
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=True, color_system="standard")
    report.print_tables(tables.tables(loading.load_runs(results_dir)), console)
    out = buffer.getvalue()
    bold_lines = [line for line in out.splitlines() if "\x1b[1m" in line]
    assert any("mean" in line for line in bold_lines) and any("std" in line for line in bold_lines)
    assert not any(" 0 " in line.split("│")[1] for line in bold_lines if "│" in line)


def test_printed_tables_fit_a_terminal_one_per_metric(results_dir):
    # The paper's layout: a table per metric, classes down and methods across, readable at 80 columns.
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False)
    built = tables.tables(loading.load_runs(results_dir))
    report.print_tables(built, console)
    out = buffer.getvalue()
    assert "…" not in out
    for name in ("quality", "cost"):
        for _, label in tables.QUALITY_METRICS if name == "quality" else tables.COST_METRICS:
            assert f"{name}: {label}" in out
    header = next(line for line in out.splitlines() if "safemax" in line and "sweep" in line)
    assert "H" not in header  # methods across, the metric in the title
    mean_h = built["quality"].loc["mean", ("safemax", "H")]
    assert f"{mean_h:.2f}" in out
    assert any(line.lstrip("│ ").startswith("RTE / safemax") for line in out.splitlines())


def test_several_datasets_get_separate_groups(results_dir):
    # Class 0 of another dataset must not replace (latest-wins) or be averaged with class 0 of digits.
    results.write_row(
        results_dir,
        make_row("safemax", "", 0, 500, (50.0, 2.0, 30.0, 90.0, 60.0, 500.0), dataset="cifar10", run_id="c10-0"),
    )
    df = loading.load_runs(results_dir)
    assert sorted(df["group"].unique()) == ["safemax/cifar10", "safemax/digits", "sweep/digits"]
    quality = tables.tables(df)["quality"]
    assert quality.loc[0, ("safemax/digits", "UA %")] == 100.0
    assert quality.loc["mean", ("safemax/cifar10", "UA %")] == 50.0
    assert set(loading.load_runs(results_dir, dataset="digits")["group"]) == {"safemax", "sweep"}


def test_samples_grid_wraps_ten_classes_into_rows_of_five(tmp_path):
    folder = str(tmp_path / "ten")
    grid = tmp_path / "grid.png"
    Image.new("RGB", (24, 24), (30, 200, 30)).save(grid)
    for c in range(10):
        values = (100.0, 0.7, 1.0, 100.0, 100.0, 800.0)
        results.write_row(folder, make_row("safemax", "", c, minutes=c, values=values, grid_path=str(grid)))
    (path,) = [p for p in figures.figures(loading.load_runs(folder), tmp_path / "figs") if p.name == "samples_grid.png"]
    with Image.open(path) as image:
        width, height = image.size
    # Two rows of five panels (figure 13 x 5.6 in); one row of ten would be 26 x 2.8 in.
    assert width / height == pytest.approx(13 / 5.6, rel=0.1)


def test_the_fid_column_names_its_features_and_never_mixes_them_silently():
    labels = lambda kinds: dict(tables.quality_metrics(pd.DataFrame({"fid_features": kinds})))["fid"]  # noqa: E731
    assert labels(["inception", "inception"]) == "FID"
    assert labels(["classifier"]) == "FID (judge's features)"
    assert labels(["inception", "classifier"]) == "FID (mixed: judge's + Inception features)"


def test_intervals_table_shows_each_figure_with_its_interval(results_dir):
    df = loading.load_runs(results_dir)
    df = df.assign(ua_lo=df["ua"] - 1.0, ua_hi=df["ua"] + 1.0, fid_lo=df["fid"] / 2, fid_hi=df["fid"] * 2)
    for name in ("entropy", "retain_acc", "noise_forget"):
        df = df.assign(**{f"{name}_lo": np.nan, f"{name}_hi": np.nan})
    table = tables.tables(df)["intervals"]
    ua = df[(df["group"] == "safemax") & (df["forget_class"] == 1)]["ua"].item()
    assert table.loc[1, ("safemax", "UA %")] == f"{ua - 1:.3g}-{ua + 1:.3g}"
    assert table.loc[1, ("safemax", "H")] == "-"  # no interval stored
    fid = df[(df["group"] == "safemax") & (df["forget_class"] == 1)]["fid"].item()
    (fid_label,) = [label for label in table.columns.get_level_values("metric") if label.startswith("FID")][:1]
    assert table.loc[1, ("safemax", fid_label)] == f"{fid / 2:.3g}-{fid * 2:.3g}"


def test_a_cifar10_run_without_inception_weights_says_its_fid_is_not_the_papers():
    from safemax_ray.config import UnlearnConfig
    from safemax_ray.engine.workloads import workload_for

    notes = workload_for(UnlearnConfig(dataset="cifar10", data_root="/data/cifar10")).notes()
    assert len(notes) == 1 and "not the paper's FID" in notes[0] and "--fid-weights" in notes[0]
    with_weights = UnlearnConfig(dataset="cifar10", data_root="/data/cifar10")
    with_weights.eval.fid_weights = "/models/pt_inception-2015-12-05.pth"
    assert workload_for(with_weights).notes() == [] and workload_for(UnlearnConfig()).notes() == []


def test_the_html_report_holds_every_table_and_figure_inline(results_dir, tmp_path):
    result = report.make_report(results_dir, out_dir=tmp_path / "out")
    page = (result.out_dir / "report.html").read_text()
    assert "http" not in page and "src='data:image/png;base64," in page  # nothing to fetch
    for name in result.tables:
        assert f"<h2>{name}</h2>" in page
    pngs = sorted(p for p in result.files if p.suffix == ".png")
    inline = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert sorted(base64.b64decode(x) for x in inline) == sorted(p.read_bytes() for p in pngs)
    assert page.count("<table") == len(result.tables)


# Run in the page after it loaded: how many tables and cells, and each image's natural width.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({tables: document.querySelectorAll('table').length,
    cells: document.querySelectorAll('td').length, widths: [...document.images].map(i => i.naturalWidth)});
  document.body.appendChild(out);
});
</script></body>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's chromium with apt-get; install it to run this check")
    return found


def test_the_html_report_renders_in_headless_chromium(results_dir, tmp_path):
    """The page opened in a real browser: every table rendered, every image decoded (naturalWidth > 0),
    and a screenshot that is not blank."""
    browser = _chromium()
    result = report.make_report(results_dir, out_dir=tmp_path / "out")
    page = result.out_dir / "report.html"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["tables"] == len(result.tables) and seen["cells"] > 0
    assert len(seen["widths"]) == 4 and all(w > 0 for w in seen["widths"])  # ua, entropy, fid, samples_grid
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], timeout=120, check=True)
    with Image.open(shot) as image:
        colours = image.convert("L").getextrema()
    assert colours[1] - colours[0] > 100  # text and figures on a white page, not one flat colour
