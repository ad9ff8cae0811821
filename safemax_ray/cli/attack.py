"""`safemax-ray attack`: relearning attacks and the trajectory probe on an unlearned model."""

from __future__ import annotations

import argparse

from rich.table import Table

from safemax_ray.cli.output import console, fmt


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="relearning attacks and the trajectory probe on an unlearned model")
    p.add_argument(
        "run_or_folder",
        metavar="RUN_OR_FOLDER",
        help="a run id stored under --results-dir, or an unlearned model folder",
    )
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.attack import attack
    from safemax_ray.engine.attack import AttackSettings

    settings = AttackSettings(lr=args.lr, n_samples=args.n_samples, sample_steps=args.sample_steps, seed=args.seed)
    result = attack(
        args.run_or_folder,
        args.results_dir,
        args.forget_class,
        args.shots,
        args.steps,
        settings,
        with_base=not args.no_base,
        address=args.address,
    )
    console.print(relearning_table(result))
    console.print(probe_table(result.rows))
    console.print(f"results: {result.path}")
    return 0


def relearning_table(result) -> Table:
    """Forget-class accuracy after n attack steps, per model and number of shots."""
    table = Table(title=f"relearning attack {result.attack_id}: forget-class accuracy % after n steps")
    relearn = [r for r in result.rows if r["kind"] == "relearn"]
    steps = sorted({r["step"] for r in relearn})
    for column in ("model", "shots", *(str(s) for s in steps), "steps to > 50%"):
        table.add_column(column, justify="right")
    for (model, shots), recovered in sorted(result.recovered.items()):
        curve = {r["step"]: r["forget_acc"] for r in relearn if (r["model"], r["shots"]) == (model, shots)}
        label = "retained only" if shots == 0 else str(shots)
        table.add_row(model, label, *(fmt(curve[s]) for s in steps), "never" if recovered is None else str(recovered))
    return table


def probe_table(rows: list[dict]) -> Table:
    table = Table(title="trajectory probe: real forget images noised to t0, denoised with the forget label")
    for column in ("model", "t0", "forget acc %", "UA %", "H", "noise %"):
        table.add_column(column, justify="right")
    for r in (r for r in rows if r["kind"] == "trajectory"):
        table.add_row(r["model"], str(r["t0"]), *(fmt(r[k]) for k in ("forget_acc", "ua", "entropy", "noise")))
    return table
