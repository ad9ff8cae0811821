"""`safemax-ray tune`: a Ray Tune + Optuna study over lr, iterations and a method's options."""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from safemax_ray.cli.output import add_plan_flags, console, fmt, fmt_param, print_plan


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search lr, iterations and method options with Ray Tune + Optuna")
    p.add_argument("--config", required=True, help="tune YAML (see tune_configs/)")
    p.add_argument("--num-samples", type=int, help="trials")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial")
    p.add_argument("--forget-class", type=int)
    p.add_argument("--study", help="study name stored with every trial's row")
    p.add_argument("--objective", choices=["score", "pareto"])
    p.add_argument("--method", help="the method whose options are searched (default: the config's run.method)")
    p.add_argument("--results-dir")
    p.add_argument("--address", help="join a Ray cluster: 'auto' or ray://host:10001")
    p.add_argument("--tracking-uri", help="MLflow: the study a parent run, a child per trial ($MLFLOW_TRACKING_URI)")
    add_plan_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.tune import load_tune_config, tune

    cfg = load_tune_config(
        args.config,
        **{
            "budget.num_samples": args.num_samples,
            "budget.max_concurrent": args.max_concurrent,
            "budget.workers_per_trial": args.workers_per_trial,
            "results_dir": args.results_dir,
            "forget_class": args.forget_class,
            "study": args.study,
            "objective": args.objective,
            "address": args.address,
            "run.method": args.method,
            "tracking_uri": args.tracking_uri,
        },
    )
    if args.plan:
        return _print_study_plan(cfg, args.gpus)
    began = time.perf_counter()
    result = tune(cfg, console=console)
    console.print(trials_table(result, list(cfg.search)))
    if result.rank_agreement is not None:
        console.print(f"screen vs full judgement (re-judged trials): Spearman rho {result.rank_agreement:.2f}")
    console.print(f"best: {result.best_params} -> {result.best_metrics}")
    console.print(f"best config: {result.best_config_path}  (use with: safemax-ray unlearn --config FILE)")
    console.print(f"results: {result.results_dir}/runs  wall time {time.perf_counter() - began:.0f}s")
    return 0


def _print_study_plan(cfg, gpus: int) -> int:
    print_plan(cfg.planned_trials(), gpus, cfg.planned_rejudges())
    if cfg.screen:
        from safemax_ray.drivers.plan import plan_runs

        full = plan_runs(cfg.planned_trials(screened=False), gpus).gpu_hours()
        console.print(f"without the screen: {full:.2f} GPU-hours", highlight=False)
    return 0


def trials_table(result, searched: list[str]) -> Table:
    """The study's trials, best score first, with the searched values and the figures."""
    table = Table(title=f"study {result.study}: {len(result.trials)} trials")
    for column in ("trial", *searched, "UA %", "H", "FID", "retained %", "score", "pareto"):
        table.add_column(column, justify="right")
    for row in sorted(result.trials, key=lambda r: -r["score"]):
        table.add_row(
            row["trial_id"],
            *(fmt_param(row["params"][name]) for name in searched),
            *(fmt(row[key]) for key in ("ua", "entropy", "fid", "retain_acc")),
            f"{row['score']:.3f}",
            "*" if row["pareto"] else "",
        )
    return table
