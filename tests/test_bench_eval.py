"""scripts/bench_eval.py runs (at 2 sampling steps) and shows the base model judged once per class."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval.py"


@pytest.mark.slow  # a fresh interpreter judging a three-class comparison twice
def test_bench_eval_shares_the_base_model_and_prints_the_paper_plan():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sample-steps", "2", "--classes", "0,1,2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # 3 runs x (200 forget + 9 x 30 retained) before; the classes 0-2 at 200 and all ten at 30 after.
    assert "base  1410, unlearned  1410" in out and "base   900, unlearned  1410" in out
    assert "figures are identical either way" in out
    assert "total 34.5 GPU-hours" in out and "base sets     20" in out
