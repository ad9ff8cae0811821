#!/usr/bin/env bash
# The GPU check in one go (about 7 minutes on one H200): the package through Ray on the GPU, then every
# step, sampler and judge variant of scripts/bench_gpu.py.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # OUT_DIR (default $OUT or /tmp/gpu_check) gets the logs
#   SMOKE=1 bash scripts/gpu_check.sh            # the same on a CPU: narrow model, few samples, --tiny bench
#
# 1. `safemax-ray import` of a reference-layout checkpoint with random weights (the test fixture's),
#    then `safemax-ray unlearn --gpu` on a 32x32 ImageFolder tree with a random ResNet-34 state dict as
#    the judge: one Ray Train worker with NCCL, then two workers sharing the GPU (0.5 each, gloo).
# 2. Two ranks on one GPU over NCCL, without Ray: does NCCL take them?
# 3. scripts/bench_gpu.py --jobs 8: its compilations run while step 1 does; its timed sections wait
#    for step 1 to end (--gate) and take turns on the GPU.
# Where the machine lacks Ray or diffusers, wheels in .whl/ are installed first (see cluster/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$OUT_DIR"
if [ -n "${SMOKE:-}" ]; then
  CH=32 DEVICE=--cpu SAMPLES=(--n-forget-samples 10 --n-retain-per-class 2 --sample-steps 5) BENCH=(--tiny --jobs 3)
else
  CH=128 DEVICE=--gpu SAMPLES=(--n-forget-samples 200 --n-retain-per-class 20 --sample-steps 50) BENCH=(--jobs 8)
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
if [ -d .whl ] && ! python3 -c "import ray, diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

# 3 first: it compiles in the background while the Ray runs go on.
python3 scripts/bench_gpu.py "${BENCH[@]}" --gate "$WORK/ray.done" --json "$OUT_DIR/bench.json" >"$OUT_DIR/bench.log" 2>&1 &
BENCH_PID=$!

python3 - "$WORK" "$CH" <<'EOF' 2>&1 | tee "$OUT_DIR/fixtures.log"
"""The reference fixtures: a random Selective-Amnesia-format checkpoint (CIFAR widths), a random
torchvision ResNet-34 state dict, and a 10-class tree of 32x32 PNGs."""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, "tests")
import reference_ddpm
import resnet34_reference

work = Path(sys.argv[1])
reference_ddpm.save_checkpoint(work / "ckpt.pth", reference_ddpm.random_state(0, ch=int(sys.argv[2])))
torch.save(resnet34_reference.random_state(10), work / "resnet34.pth")
rng = np.random.default_rng(0)
for c in range(10):
    (work / "images" / f"class{c}").mkdir(parents=True)
    for i in range(40):
        pixels = (rng.random((32, 32, 3)) * 255 * (0.3 + 0.07 * c)).astype(np.uint8)
        Image.fromarray(pixels).save(work / "images" / f"class{c}" / f"{i}.png")
print("fixtures in", work)
EOF

run_unlearn() {  # $1: label, then extra flags
  local label=$1; shift
  local began=$SECONDS
  timeout 300 safemax-ray unlearn --model "$WORK/model" --dataset imagefolder --data-root "$WORK/images" --image-size 32 \
    --classifier "$WORK/resnet34.pth" --forget-class 3 "$DEVICE" --iterations 30 --batch-size 64 \
    "${SAMPLES[@]}" --eval-batch-size 200 --results-dir "$WORK/results-$label" "$@" 2>&1 | tail -25
  echo "$label: exit ${PIPESTATUS[0]}, $((SECONDS - began)) s"
  python3 - "$WORK/results-$label" <<'EOF'
import sys

import pandas as pd

rows = pd.read_parquet(f"{sys.argv[1]}/runs")
cols = ["device", "num_workers", "method", "ua", "entropy", "fid", "fid_features", "rte_s", "peak_mem_mb"]
print(rows[[c for c in cols if c in rows]].to_string())
EOF
}
{
  [ "$CH" = 128 ] || printf 'model:\n  ch: 32\n  ch_mult: [1, 2, 2, 2]\n  num_res_blocks: 2\n  attn_resolutions: [16]\n' >"$WORK/config.yml"
  safemax-ray import "$WORK/ckpt.pth" --output "$WORK/model" $([ "$CH" = 128 ] || echo --config "$WORK/config.yml") 2>&1 | tail -3
  run_unlearn one-worker
  run_unlearn two-workers --num-workers 2 --gpus-per-worker 0.5 --cpus-per-worker 1
} >"$OUT_DIR/ray.log" 2>&1
cat "$OUT_DIR/ray.log"

[ -n "${SMOKE:-}" ] || timeout 120 python3 scripts/nccl_shared_gpu.py 2>&1 | grep -E "^rank|Error" | tee "$OUT_DIR/nccl.log"

touch "$WORK/ray.done"
wait $BENCH_PID
cat "$OUT_DIR/bench.log"
