"""scripts/bench_gpu.py runs end to end on a CPU (--tiny) and prints every figure it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench_gpu.py"


@pytest.mark.slow  # the benchmark script in its own interpreter
def test_tiny_benchmark_prints_step_sampling_and_projection():
    """One variant of each kind (the reference and SAFEMax's step, the samplers, the judge): each variant
    is a process of its own, and the other methods' steps are the same code with another name."""
    kinds = ["step:reference", "step:safemax:*", "sample:*", "score:*"]
    command = [sys.executable, str(SCRIPT), "--tiny", "--only", *kinds]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for expected in ("step:reference", "step:safemax:eager", "ms per step", "score:resnet34", "8 device(s)"):
        assert expected in out, out
    minutes = [float(line.split(":")[1].split()[0]) for line in out.splitlines() if "device(s):" in line]
    assert len(minutes) == 4 and minutes[0] > minutes[1] > minutes[2] > minutes[3] > 0
