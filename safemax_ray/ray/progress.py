"""Live progress of remote Ray Train workers in the driver's terminal.

Rank 0 sends (phase, done, total, loss) to a tiny actor; the driver runs `fit()` in a thread and polls
the actor to drive a rich progress bar, one line per phase (train, sample base, sample unlearned).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


@ray.remote(num_cpus=0)
class ProgressActor:
    def __init__(self) -> None:
        self.phases: dict[str, tuple[int, int, float | None]] = {}

    def update(self, phase: str, done: int, total: int, loss: float | None) -> None:
        self.phases[phase] = (done, total, loss)

    def snapshot(self) -> dict[str, tuple[int, int, float | None]]:
        return dict(self.phases)


def run_with_progress(fit: Callable[[], T], actor: Any, console: Console, poll_s: float = 0.5) -> T:
    """Run `fit` in a thread while drawing the actor's phases; returns what `fit` returns."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fit()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}
        thread.start()
        while thread.is_alive():
            thread.join(poll_s)
            try:
                phases = ray.get(actor.snapshot.remote(), timeout=5)
            except Exception:  # the bar is cosmetic: never fail a run over it
                continue
            for phase, (done, total, loss) in phases.items():
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total, info="")
                info = f"loss {loss:.4f}" if loss is not None else ""
                bar.update(tasks[phase], completed=done, total=total, info=info)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
