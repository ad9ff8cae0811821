"""The `safemax-ray` command: one module per subcommand (its flags, its handler, its tables), flags
generated from the settings dataclasses (`flags`, `settings`), printing in `output`.

Every subcommand is a thin shell over a function in the package; no logic lives here that the API lacks.
User errors (SafemaxError) print one red line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from safemax_ray.cli import attack, batch, compare, interchange, pretrain, report, tune, unlearn
from safemax_ray.cli.output import console
from safemax_ray.errors import SafemaxError

# In the order `--help` lists them.
SUBCOMMANDS = (unlearn.add_parser, pretrain.add_parser, tune.add_parser, batch.add_parser, compare.add_parser)
SUBCOMMANDS += (attack.add_parser, interchange.add_parsers, report.add_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safemax-ray",
        description="SAFEMax machine unlearning for class-conditional diffusion models and text-to-image pipelines, "
        "on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
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
            inner = next(iter(getattr(exc, "worker_failures", {}).values()), None)
        if inner is None:
            return exc
        exc = inner
    return exc
