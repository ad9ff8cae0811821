"""What a hyperparameter search optimises: one documented scalar score, or the Pareto front.

score = UA/100 + H/ln(K) - max(0, FID/FID_base - 1) - max(0, acc_base - acc)/100

The first two terms reward forgetting (UA up to 1; entropy up to 1 at the uniform prediction over K
classes), the last two charge only for damage to the retained classes relative to the base model: a FID
that grows by half its base value costs 0.5, as does a 50-point drop in retained accuracy. A perfect run
scores 2. Without base figures the penalties are computed against nothing and are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

PARETO_OBJECTIVES = (("ua", "max"), ("entropy", "max"), ("fid", "min"))


def score(metrics: Mapping[str, float], num_classes: int) -> float:
    value = metrics["ua"] / 100.0 + metrics["entropy"] / math.log(num_classes)
    base_fid, base_acc = metrics.get("base_fid"), metrics.get("base_retain_acc")
    if base_fid is not None and base_fid > 0:
        value -= max(0.0, metrics["fid"] / base_fid - 1.0)
    if base_acc is not None:
        value -= max(0.0, base_acc - metrics["retain_acc"]) / 100.0
    return value


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b everywhere and better somewhere."""
    better = [(x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes, strict=True)]
    worse = [(x < y) if m == "max" else (x > y) for x, y, m in zip(a, b, modes, strict=True)]
    return any(better) and not any(worse)


def pareto_mask(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """True for each point that no other point dominates."""
    return [not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]
