"""The `safemax-ray` command: parses flags, calls the Python API, prints with rich.

Every subcommand is a thin shell over a function in the package; no logic lives here that the API lacks.
User errors (SafemaxError) print one red line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import typing
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from safemax_ray import flags
from safemax_ray.errors import SafemaxError

console = Console(stderr=False)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `unlearn`, `batch` and `compare`: every run setting, then every method option;
    a flag not given keeps the YAML or default value."""
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig

    p.add_argument("--config", help="YAML file of settings (flags override it)")
    taken = {"--config"}
    flags.add_setting_flags(p.add_argument_group("run"), UnlearnConfig, "", taken)
    flags.add_setting_flags(p.add_argument_group("evaluation (eval: in YAML)"), EvalConfig, "eval.", taken)
    flags.add_setting_flags(p.add_argument_group("Ray (ray: in YAML)"), RayConfig, "ray.", taken)
    group = p.add_argument_group("method options (under method_options in YAML; --OPTION sets the run's method's)")
    flags.add_option_flags(group, _method_options(), taken)
    group = p.add_argument_group("each method's options, by name (--salun.alpha; compare sets each method's)")
    flags.add_method_flags(group, _method_classes(), taken)


def _add_concept_flags(p: argparse.ArgumentParser) -> None:
    from safemax_ray.config import ConceptConfig

    group = p.add_argument_group("text-to-image: forget a concept (under concept: in YAML; needs the text extra)")
    flags.add_setting_flags(group, ConceptConfig, "concept.")


def _method_classes() -> dict[str, type]:
    """Each available method's Options class, by method name (from the registry)."""
    from safemax_ray.methods import available_methods, get_method

    found = {}
    for name in available_methods():
        try:
            found[name] = get_method(name).Options
        except Exception:  # noqa: BLE001  (a broken plugin must not break the command; using it says why)
            continue
    return found


def _method_options() -> dict[str, tuple[dataclasses.Field, Any, list[str]]]:
    """Every option that some method declares (its Options dataclass): --lam sets method_options.lam,
    and the chosen method refuses options it does not have."""
    found: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for name, options in _method_classes().items():
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            found.setdefault(f.name, (f, hints[f.name], []))[2].append(name)
    return found


def _run_config(args: argparse.Namespace, given: dict[str, Any]):
    """The run's config from --config and the flags; --METHOD.OPTION flags must name the run's method."""
    from safemax_ray.config import load_unlearn_config

    rest, per_method = flags.method_flag_options(given)
    cfg = load_unlearn_config(args.config, **rest)
    for method, options in per_method.items():
        if method != cfg.method:
            flag = f"--{method}.{next(iter(options)).replace('_', '-')}"
            raise SafemaxError(f"{flag} sets an option of {method}, but the run's method is {cfg.method}")
        cfg.method_options.update(options)
    return cfg


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _classes(text: str) -> int | list[int]:
    """'3' -> 3; '3,7' or '2-4' -> a list of classes forgotten together."""
    from safemax_ray.drivers.batch import parse_classes

    try:
        classes = parse_classes(text)
    except SafemaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None  # argparse's own one-line usage error
    return classes[0] if len(classes) == 1 and text.strip().isdigit() else classes


def _fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# What a FID was computed on, as the tables name it: only Inception's is the paper's FID.
FID_FEATURES = {"inception": "Inception", "classifier": "judge's features"}


def _with_interval(metrics: dict[str, Any], key: str) -> str:
    """The figure, and its 95% interval where the run has one: 98.00 [95.1, 99.4]; KID with its
    standard deviation over chunks: 0.0123 ± 0.0045."""
    if metrics.get(f"{key}_std") is not None:
        return f"{metrics[key]:.3g} ± {metrics[f'{key}_std']:.2g}"
    lo, hi = metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi")
    if lo is None or hi is None or lo != lo:  # none, or nan (no samples)
        return _fmt(metrics.get(key))
    return f"{_fmt(metrics.get(key))} [{lo:.3g}, {hi:.3g}]"


def metrics_table(metrics: dict[str, Any], title: str, rows: tuple[tuple[str, str], ...]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("base model", justify="right")
    table.add_column("unlearned", justify="right")
    for key, label in rows:
        if key in ("fid", "kid") and metrics.get("fid_features"):
            label = f"{label}; {FID_FEATURES.get(metrics['fid_features'], metrics['fid_features'])}"
        table.add_row(label, _with_interval(metrics, f"base_{key}"), _with_interval(metrics, key))
    table.add_row("RTE (s, unlearning only)", "", _fmt(metrics.get("rte_s")))
    cached = " (cached)" if metrics.get("setup_cached") else ""
    table.add_row("set-up (s)", "", _fmt(metrics.get("setup_s")) + cached)
    table.add_row("peak memory (MB)", "", _fmt(metrics.get("peak_mem_mb")))
    if metrics.get("base_ok") is False:
        table.caption = BASE_WARNING
    return table


BASE_WARNING = (
    "[bold yellow]warning: the base model fails its own check (its samples are not recognised as their "
    "classes), so UA and H say nothing about unlearning; train the base model or classifier longer[/]"
)


def cmd_unlearn(args: argparse.Namespace) -> int:
    from safemax_ray.config import ConceptConfig
    from safemax_ray.drivers.unlearn import unlearn
    from safemax_ray.engine.workloads import workload_for
    from safemax_ray.schema import apply_overrides

    given = flags.overrides(args)
    concept = {k: v for k, v in given.items() if k.startswith("concept.")}
    run = {k: v for k, v in given.items() if k not in concept}
    cfg = _run_config(args, {**run, "forget_class": args.forget_class, "output_dir": args.output_dir})
    if any(v is not None for v in concept.values()):
        cfg.concept = cfg.concept or ConceptConfig()
        apply_overrides(cfg, concept)
    began = time.perf_counter()
    result = unlearn(cfg, console=console, show_progress=not args.no_progress)
    workload = workload_for(cfg)
    console.print(metrics_table(result.metrics, f"{cfg.method}: forget {workload.describe()}", workload.metric_rows))
    for note in workload.notes():
        console.print(f"[yellow]note: {note}[/]")
    console.print(f"model:   {result.model_path}")
    console.print(f"samples: {result.grid_path}")
    console.print(f"results: {result.results_path}")
    console.print(f"wall time {time.perf_counter() - began:.0f}s")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from safemax_ray.engine.pretrain import PretrainConfig, run_pretrain

    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        arch=args.arch,
        num_train_timesteps=args.timesteps,
        block_out_channels=tuple(args.channels) if args.channels else None,
        classifier_steps=args.classifier_steps,
        seed=args.seed,
    )
    run_pretrain(
        config, args.dataset, args.data_root, args.image_size, args.output, args.overwrite, args.device, console
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
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
        },
    )
    if args.plan:
        _print_plan(cfg.planned_trials(), args.gpus, cfg.planned_rejudges())
        if cfg.screen:
            from safemax_ray.drivers.plan import plan_runs

            full = plan_runs(cfg.planned_trials(screened=False), args.gpus).gpu_hours()
            console.print(f"without the screen: {full:.2f} GPU-hours", highlight=False)
        return 0
    began = time.perf_counter()
    result = tune(cfg, console=console)
    table = Table(title=f"study {result.study}: {len(result.trials)} trials")
    searched = list(cfg.search)
    for column in ("trial", *searched, "UA %", "H", "FID", "retained %", "score", "pareto"):
        table.add_column(column, justify="right")
    for row in sorted(result.trials, key=lambda r: -r["score"]):
        table.add_row(
            row["trial_id"],
            *(_fmt_param(row["params"][name]) for name in searched),
            _fmt(row["ua"]),
            _fmt(row["entropy"]),
            _fmt(row["fid"]),
            _fmt(row["retain_acc"]),
            f"{row['score']:.3f}",
            "*" if row["pareto"] else "",
        )
    console.print(table)
    if result.rank_agreement is not None:
        console.print(f"screen vs full judgement (re-judged trials): Spearman rho {result.rank_agreement:.2f}")
    console.print(f"best: {result.best_params} -> {result.best_metrics}")
    console.print(f"best config: {result.best_config_path}  (use with: safemax-ray unlearn --config FILE)")
    console.print(f"results: {result.results_dir}/runs  wall time {time.perf_counter() - began:.0f}s")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.batch import batch_configs, batch_unlearn, parse_classes, tuned_params

    cfg = _run_config(args, flags.overrides(args))
    classes = parse_classes(args.classes)
    params = tuned_params(args.tuned_from, cfg.dataset, args.tuned_study) if args.tuned_from else None
    if args.plan:
        return _print_plan(batch_configs(cfg, classes, params, args.together), args.gpus)
    result = batch_unlearn(
        cfg, classes, params, max_concurrent=args.max_concurrent, console=console, together=args.together
    )
    return _print_outcome("batch", result)


def _print_plan(configs: list, gpus: int, evaluations: list = ()) -> int:
    """--plan: what the runs (and evaluations of trained runs) will cost, then stop before anything
    starts."""
    from safemax_ray.drivers.plan import describe, plan_runs

    if gpus < 1:
        raise SafemaxError(f"--gpus must be >= 1, got {gpus}")
    for cfg in configs:
        cfg.require_classes("--plan")
        cfg.validate()
    for line in describe(plan_runs(configs, gpus, evaluations)):
        console.print(line, highlight=False)
    return 0


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true", help="print the runs and their projected GPU time, then stop")
    p.add_argument("--gpus", type=int, default=1, help="GPUs for --plan's projected wall time")


def _print_outcome(command: str, result: Any, where: str = "") -> int:
    """The last lines of `batch` and `compare`; exit status 1 when a run failed."""
    console.print(
        f"{command}: {len(result.done)} run(s) done, {len(result.skipped)} already stored, "
        f"{len(result.failed)} failed, in {result.seconds:.0f}s{where}"
    )
    for name, error in sorted(result.failed.items()):
        console.print(f"[red]{name}[/]: {error}")
    return 1 if result.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from safemax_ray.config import load_unlearn_config
    from safemax_ray.drivers.batch import parse_classes
    from safemax_ray.drivers.compare import compare, plan_comparison

    given, per_method = flags.method_flag_options(flags.overrides(args))
    shared = sorted(k for k, v in given.items() if k.startswith("method_options.") and v is not None)
    if shared:
        name = shared[0].removeprefix("method_options.")
        raise SafemaxError(f"compare runs several methods: give --METHOD.{name.replace('_', '-')} (e.g. --safemax.lam)")
    cfg = load_unlearn_config(args.config, **given)
    classes, options = parse_classes(args.classes), parse_options(args.options or [])
    for method, values in per_method.items():
        options.setdefault(method, {}).update(values)
    if args.plan:
        return _print_plan(plan_comparison(cfg, classes, args.methods, options), args.gpus)
    result = compare(cfg, classes, args.methods, options, args.max_concurrent, console)
    return _print_outcome("compare", result.batch, f"; report in {result.report.out_dir}")


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


def cmd_attack(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.attack import attack
    from safemax_ray.engine.attack import AttackSettings

    settings = AttackSettings(lr=args.lr, n_samples=args.n_samples, sample_steps=args.sample_steps, seed=args.seed)
    result = attack(
        args.target,
        args.results_dir,
        args.forget_class,
        args.shots,
        args.steps,
        settings,
        with_base=not args.no_base,
        address=args.address,
    )
    table = Table(title=f"relearning attack {result.attack_id}: forget-class accuracy % after n steps")
    steps = sorted({r["step"] for r in result.rows if r["kind"] == "relearn"})
    for column in ("model", "shots", *(str(s) for s in steps), "steps to > 50%"):
        table.add_column(column, justify="right")
    for (model, shots), recovered in sorted(result.recovered.items()):
        relearn = (r for r in result.rows if r["kind"] == "relearn")
        curve = {r["step"]: r["forget_acc"] for r in relearn if (r["model"], r["shots"]) == (model, shots)}
        label = "retained only" if shots == 0 else str(shots)
        table.add_row(model, label, *(_fmt(curve[s]) for s in steps), "never" if recovered is None else str(recovered))
    console.print(table)
    probe = Table(title="trajectory probe: real forget images noised to t0, denoised with the forget label")
    for column in ("model", "t0", "forget acc %", "UA %", "H", "noise %"):
        probe.add_column(column, justify="right")
    for r in (r for r in result.rows if r["kind"] == "trajectory"):
        probe.add_row(r["model"], str(r["t0"]), *(_fmt(r[k]) for k in ("forget_acc", "ua", "entropy", "noise")))
    console.print(probe)
    console.print(f"results: {result.path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.interchange import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.output, args.weights, args.config, args.overwrite)
    console.print(f"wrote {out}: use it with --model {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.interchange import export_model

    out = export_model(args.target, args.output, args.format, args.results_dir)
    console.print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from safemax_ray.results.report import make_report

    result = make_report(
        args.results_dir, out_dir=args.out, method=args.method, dataset=args.dataset, study=args.study, console=console
    )
    console.print(f"wrote {len(result.files)} files to {result.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from safemax_ray.core.models import PRESETS

    parser = argparse.ArgumentParser(
        prog="safemax-ray",
        description="SAFEMax machine unlearning for class-conditional diffusion models and text-to-image pipelines, "
        "on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "unlearn", help="forget a class, or a concept of a text-to-image pipeline (SAFEMax by default), on Ray Train"
    )
    p.add_argument(
        "--forget-class", type=_classes, help="class to forget (default 0), or several to forget together: 3,7"
    )
    p.add_argument("--output-dir", help="where the unlearned model goes (default <results-dir>/models/<run_id>)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    _add_run_flags(p)
    _add_concept_flags(p)
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("pretrain", help="train the base diffusion model and the evaluation classifier")
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "imagefolder"])
    p.add_argument("--data-root")
    p.add_argument("--image-size", type=int)
    p.add_argument("--output", default="pretrained", help="folder for model/ and classifier/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--arch",
        default="digits-tiny",
        choices=list(PRESETS),
        help="UNet layout: " + "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items()),
    )
    p.add_argument("--timesteps", type=int, help="diffusion steps T (default: the preset's; digits 100, CIFAR 1000)")
    p.add_argument("--channels", type=int, nargs="+", help="other block widths for the preset (default: its own)")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_pretrain)

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
    _add_plan_flags(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("batch", help="unlearn many classes, one run each, resumable")
    p.add_argument("--classes", required=True, help="e.g. 0-9 or 0,2,5-7")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: what the cluster fits)")
    p.add_argument(
        "--tuned-from", help="results folder whose best Tune trial per class sets lr, iterations and method options"
    )
    p.add_argument("--tuned-study", help="only trials of this study")
    p.add_argument("--together", action="store_true", help="one model forgets all the classes at once")
    _add_plan_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("compare", help="several methods on the same classes, then the paper's tables and figures")
    p.add_argument("--classes", required=True, help="e.g. 0-9 or 0,2,5-7")
    p.add_argument("--methods", nargs="+", help="methods to compare (default: every registered method)")
    p.add_argument("--options", nargs="*", help="method options as METHOD.OPTION=VALUE, e.g. sa.gamma=0.5")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: what the cluster fits)")
    _add_plan_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("attack", help="relearning attacks and the trajectory probe on an unlearned model")
    p.add_argument("target", help="a run id stored under --results-dir, or an unlearned model folder")
    p.add_argument("--forget-class", type=int, help="the forgotten class (needed for a model folder)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 50], help="real forget images to train on")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 10, 50, 100, 500], help="when to evaluate")
    p.add_argument("--lr", type=float, default=1e-4, help="the attacker's Adam learning rate")
    p.add_argument("--n-samples", type=int, default=100, help="forget-class samples judged at each step count")
    p.add_argument("--sample-steps", type=int, help="DDPM sampling steps (default: the full schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-base", action="store_true", help="skip the base model (the ceiling)")
    p.add_argument("--results-dir", default="safemax_results")
    p.add_argument("--address", help="join a Ray cluster: 'auto' or ray://host:10001")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("import", help="a Selective-Amnesia-format ckpt.pth (SA, SalUn, SFR-on) as a --model folder")
    p.add_argument("checkpoint", help="their ckpt.pth: [model state, optimizer state, step, EMA shadow]")
    p.add_argument("--output", required=True, help="the diffusers folder to write")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"], help="auto: EMA when present")
    p.add_argument("--config", help="their config.yml, for other widths or schedules (default: CIFAR-10's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="an unlearned model (run id or folder) in another toolkit's format")
    p.add_argument("target", help="a run id stored under --results-dir, or a model folder")
    p.add_argument("--format", default="sa", help="sa: Selective Amnesia's ckpt.pth (SalUn, SFR-on load it too)")
    p.add_argument("--output", required=True, help="the file to write, e.g. ckpt.pth")
    p.add_argument("--results-dir", default="safemax_results")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="the paper's tables and figures from a results folder")
    p.add_argument("results_dir")
    p.add_argument("--out", help="folder for Markdown, CSV and PNG files (default <results_dir>/report)")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--study")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _show_package_log()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help); the status says which
        return int(exc.code or 0)
    try:
        return args.func(args)
    except SafemaxError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    except Exception as exc:  # noqa: BLE001  (a clear line for users; --debug shows the traceback)
        if args.debug:
            raise
        cause = _root_cause(exc)
        if isinstance(cause, SafemaxError):
            console.print(f"[bold red]error:[/] {cause}", soft_wrap=True)
            return 2
        console.print(f"[bold red]error:[/] {type(cause).__name__}: {cause} (rerun with --debug for the traceback)")
        return 1


def _show_package_log() -> None:
    """The package's own log lines (a cache miss, how many evaluation tasks and why) on the console."""
    from rich.logging import RichHandler

    log = logging.getLogger("safemax_ray")
    if not log.handlers:
        log.addHandler(RichHandler(console=console, show_path=False, show_level=False))
        log.setLevel(logging.INFO)


def _root_cause(exc: BaseException) -> BaseException:
    """Ray wraps worker exceptions; dig out the user's own error where there is one."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None:
            for err in getattr(exc, "worker_failures", {}).values() if hasattr(exc, "worker_failures") else []:
                inner = err
                break
        if inner is None:
            return exc
        exc = inner
    return exc


if __name__ == "__main__":
    sys.exit(main())
