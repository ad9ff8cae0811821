"""`safemax-ray compare`: several methods on the same classes, then the paper's tables and figures."""

from __future__ import annotations

import argparse
from typing import Any

from safemax_ray.cli import flags
from safemax_ray.cli.output import add_plan_flags, console, print_outcome, print_plan
from safemax_ray.cli.settings import add_run_flags, load_config
from safemax_ray.errors import SafemaxError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="several methods on the same classes, then the paper's tables and figures")
    p.add_argument("--classes", required=True, help="e.g. 0-9 or 0,2,5-7")
    p.add_argument("--methods", nargs="+", help="methods to compare (default: every registered method)")
    p.add_argument("--options", nargs="*", help="method options as METHOD.OPTION=VALUE, e.g. sa.gamma=0.5")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: what the cluster fits)")
    add_plan_flags(p)
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.batch import parse_classes
    from safemax_ray.drivers.compare import compare, plan_comparison

    given, per_method = flags.method_flag_options(flags.overrides(args))
    shared = sorted(k for k, v in given.items() if k.startswith("method_options.") and v is not None)
    if shared:
        name = shared[0].removeprefix("method_options.").replace("_", "-")
        raise SafemaxError(f"compare runs several methods: give --METHOD.{name} (e.g. --safemax.lam)")
    cfg = load_config(args.config, given)
    classes, options = parse_classes(args.classes), parse_options(args.options or [])
    for method, values in per_method.items():
        options.setdefault(method, {}).update(values)
    if args.plan:
        return print_plan(plan_comparison(cfg, classes, args.methods, options), args.gpus)
    result = compare(cfg, classes, args.methods, options, args.max_concurrent, console)
    return print_outcome("compare", result.batch, f"; report in {result.report.out_dir}")


def parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """['sa.fisher_samples_per_class=50', ...] -> {'sa': {'fisher_samples_per_class': 50}} (YAML values)."""
    import yaml

    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and method and name):
            raise SafemaxError(f"bad --options entry {pair!r}: write METHOD.OPTION=VALUE, e.g. sa.gamma=0.5")
        options.setdefault(method, {})[name] = yaml.safe_load(value)
    return options
