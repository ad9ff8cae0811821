"""The run settings a command takes from --config and its flags: the flags shared by `unlearn`, `batch`
and `compare`, and the UnlearnConfig they make."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from safemax_ray.cli import flags
from safemax_ray.errors import SafemaxError


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Every run setting, then every method option; a flag not given keeps the YAML or default value."""
    from safemax_ray.config import EvalConfig, RayConfig, UnlearnConfig

    p.add_argument("--config", help="YAML file of settings (flags override it)")
    taken = {"--config"}
    flags.add_setting_flags(p.add_argument_group("run"), UnlearnConfig, "", taken)
    flags.add_setting_flags(p.add_argument_group("evaluation (eval: in YAML)"), EvalConfig, "eval.", taken)
    flags.add_setting_flags(p.add_argument_group("Ray (ray: in YAML)"), RayConfig, "ray.", taken)
    group = p.add_argument_group("method options (under method_options in YAML; --OPTION sets the run's method's)")
    flags.add_option_flags(group, _shared_option_fields(), taken)
    group = p.add_argument_group("each method's options, by name (--salun.alpha; compare sets each method's)")
    flags.add_method_flags(group, method_option_classes(), taken)


def add_concept_flags(p: argparse.ArgumentParser) -> None:
    from safemax_ray.config import ConceptConfig

    group = p.add_argument_group("text-to-image: forget a concept (under concept: in YAML; needs the text extra)")
    flags.add_setting_flags(group, ConceptConfig, "concept.")


def method_option_classes() -> dict[str, type]:
    """Each available method's Options dataclass, by method name (from the registry)."""
    from safemax_ray.methods import available_methods, get_method

    found = {}
    for name in available_methods():
        try:
            found[name] = get_method(name).Options
        except Exception:  # noqa: BLE001  (a broken plugin must not break the command; using it says why)
            continue
    return found


def _shared_option_fields() -> dict[str, tuple[dataclasses.Field, Any, list[str]]]:
    """Every option name some method declares, with the methods that have it: --lam sets
    method_options.lam, and the chosen method refuses options it does not have."""
    found: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for name, options in method_option_classes().items():
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            found.setdefault(f.name, (f, hints[f.name], []))[2].append(name)
    return found


def run_config(args: argparse.Namespace, given: dict[str, Any]):
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


def forget_classes(text: str) -> int | list[int]:
    """'3' -> 3; '3,7' or '2-4' -> a list of classes forgotten together (an argparse type)."""
    from safemax_ray.drivers.batch import parse_classes

    try:
        classes = parse_classes(text)
    except SafemaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None  # argparse's own one-line usage error
    return classes[0] if len(classes) == 1 and text.strip().isdigit() else classes
