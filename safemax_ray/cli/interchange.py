"""`safemax-ray import` and `export`: models in and out of other toolkits' checkpoint formats."""

from __future__ import annotations

import argparse

from safemax_ray.cli.output import console


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="a Selective-Amnesia-format ckpt.pth (SA, SalUn, SFR-on) as a --model folder")
    p.add_argument("checkpoint", help="their ckpt.pth: [model state, optimizer state, step, EMA shadow]")
    p.add_argument("--output", required=True, help="the diffusers folder to write")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"], help="auto: EMA when present")
    p.add_argument("--config", help="their config.yml, for other widths or schedules (default: CIFAR-10's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run_import)

    p = sub.add_parser("export", help="an unlearned model (run id or folder) in another toolkit's format")
    p.add_argument(
        "run_or_folder", metavar="RUN_OR_FOLDER", help="a run id stored under --results-dir, or a model folder"
    )
    p.add_argument("--format", default="sa", help="sa: Selective Amnesia's ckpt.pth (SalUn, SFR-on load it too)")
    p.add_argument("--output", required=True, help="the file to write, e.g. ckpt.pth")
    p.add_argument("--results-dir", default="safemax_results")
    p.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.interchange import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.output, args.weights, args.config, args.overwrite)
    console.print(f"wrote {out}: use it with --model {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from safemax_ray.drivers.interchange import export_model

    out = export_model(args.run_or_folder, args.output, args.format, args.results_dir)
    console.print(f"wrote {out}")
    return 0
