"""`safemax-ray report`: the paper's tables and figures from a results folder."""

from __future__ import annotations

import argparse

from safemax_ray.cli.output import console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the paper's tables and figures from a results folder")
    p.add_argument("results_dir")
    p.add_argument("--out", help="folder for Markdown, CSV, PNG and report.html (default <results_dir>/_report)")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--study")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.results.report import make_report

    result = make_report(
        args.results_dir, out_dir=args.out, method=args.method, dataset=args.dataset, study=args.study, console=console
    )
    console.print(f"wrote {len(result.files)} files to {result.out_dir}")
    return 0
