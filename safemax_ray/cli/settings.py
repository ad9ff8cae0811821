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
    for name, settings in workload_settings_classes().items():
        title = (settings.__doc__ or name).strip().splitlines()[0].rstrip(".")
        group = p.add_argument_group(f"workload {name}: {title} (under {name}: in YAML; sets --workload {name})")
        flags.add_setting_flags(group, settings, f"{name}.", taken)


def workload_settings_classes() -> dict[str, type]:
    """Each available workload's own settings class, by workload name (from the registry)."""
    from dataclasses import fields

    from safemax_ray.engine.workloads import installed_workloads

    return {name: w.Settings for name, w in installed_workloads().items() if fields(w.Settings)}


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
    rest, per_method = flags.method_flag_options(given)
    cfg = load_config(args.config, rest)
    for method, options in per_method.items():
        if method != cfg.method:
            flag = f"--{method}.{next(iter(options)).replace('_', '-')}"
            raise SafemaxError(f"{flag} sets an option of {method}, but the run's method is {cfg.method}")
        cfg.method_options.update(options)
    return cfg


def load_config(path: str | None, given: dict[str, Any]):
    """The YAML file's config with the flags given; a workload's flags (`--pipeline`) choose it."""
    from safemax_ray.config import load_unlearn_config

    workloads = set(workload_settings_classes())
    sections = _workload_sections(given, workloads)
    cfg = load_unlearn_config(path, **{k: v for k, v in given.items() if k.partition(".")[0] not in workloads})
    for name, values in sections.items():
        if cfg.workload != name:
            if given.get("workload") is not None:
                raise SafemaxError(f"--workload is {cfg.workload}, but flags of workload {name} were given")
            cfg.workload, cfg.workload_settings = name, {}
        cfg.workload_settings.update(values)
    return cfg


def _workload_sections(given: dict[str, Any], names: set[str]) -> dict[str, dict[str, Any]]:
    """The workload flags given ({"concept.pipeline": "sd"} -> {"concept": {"pipeline": "sd"}}); flags
    of two workloads at once are refused."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in given.items():
        name, _, field = key.partition(".")
        if name in names and field and value is not None:
            sections.setdefault(name, {})[field] = value
    if len(sections) > 1:
        raise SafemaxError(f"flags of workloads {' and '.join(sorted(sections))} were given; a run has one workload")
    return sections


def forget_classes(text: str) -> int | list[int]:
    """'3' -> 3; '3,7' or '2-4' -> a list of classes forgotten together (an argparse type)."""
    from safemax_ray.drivers.batch import parse_classes

    try:
        classes = parse_classes(text)
    except SafemaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None  # argparse's own one-line usage error
    return classes[0] if len(classes) == 1 and text.strip().isdigit() else classes
