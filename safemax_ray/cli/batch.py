"""`safemax-ray batch`: many classes, one run each (or one run forgetting them together), resumable."""

from __future__ import annotations

import argparse

from safemax_ray.cli import flags
from safemax_ray.cli.output import add_plan_flags, console, print_outcome, print_plan
from safemax_ray.cli.settings import add_run_flags, run_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="unlearn many classes, one run each, resumable")
    p.add_argument("--classes", required=True, help="e.g. 0-9 or 0,2,5-7")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: what the cluster fits)")
    p.add_argument(
        "--tuned-from", help="results folder whose best Tune trial per class sets lr, iterations and method options"
    )
    p.add_argument("--tuned-study", help="only trials of this study")
    p.add_argument("--together", action="store_true", help="one model forgets all the classes at once")
    add_plan_flags(p)
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.batch import batch_configs, batch_unlearn, parse_classes, tuned_params

    cfg = run_config(args, flags.overrides(args))
    classes = parse_classes(args.classes)
    params = tuned_params(args.tuned_from, cfg.dataset, args.tuned_study) if args.tuned_from else None
    if args.plan:
        return print_plan(batch_configs(cfg, classes, params, args.together), args.gpus)
    result = batch_unlearn(
        cfg, classes, params, max_concurrent=args.max_concurrent, console=console, together=args.together
    )
    return print_outcome("batch", result)
