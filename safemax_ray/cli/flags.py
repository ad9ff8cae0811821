"""Command-line flags generated from the settings dataclasses, so that a setting is declared once.

Every field declared with `schema.setting` (help text, and a flag name where it is not `--<name>`)
becomes a flag; every method's option (`methods.base.option`) too. A flag left out means "keep the YAML
or default value": the parsed flags come back as flat overrides such as {"eval.guidance": 1.0} for
`schema.apply_overrides`, which checks their types like a YAML file's.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

SETTING_DEST = "setting__"  # argparse dest prefix; "__" stands for the dots of a nested key
OPTION_DEST = "method_option__"
METHOD_DEST = "method__"  # --<method>.<option>: "method__<method>__<option>"


def add_setting_flags(group: Any, cls: type, prefix: str = "", taken: set[str] | None = None) -> None:
    """A flag for each `setting` field of dataclass `cls` (whose config key is `prefix` + name)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue  # not a flag: nested settings, lists and the per-command ones
        dest = SETTING_DEST + (prefix + f.name).replace(".", "__")
        _add_flag(group, f.name, dict(f.metadata), hints[f.name], dest, taken)


def add_option_flags(group: Any, options: dict[str, tuple[dataclasses.Field, Any, list[str]]], taken: set[str]) -> None:
    """One flag per method option: {name: (field, type hint, the methods that have it)}."""
    for name, (f, hint, owners) in options.items():
        metadata = {**f.metadata, "help": f"{f.metadata.get('help', '')} [{', '.join(owners)}]"}
        _add_flag(group, name, metadata, hint, OPTION_DEST + name, taken)


def add_method_flags(group: Any, methods: dict[str, type], taken: set[str]) -> None:
    """--<method>.<option> for every option of every method ({name: Options class}): a flag that names
    whose option it sets, so that methods sharing an option name (alpha) never share its flag."""
    for method, options in methods.items():
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            dashed = f.name.replace("_", "-")
            metadata = {**f.metadata, "flag": f"--{method}.{dashed}", "off_flag": f"--{method}.no-{dashed}"}
            _add_flag(group, f.name, metadata, hints[f.name], f"{METHOD_DEST}{method}__{f.name}", taken)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as {config key: value}; flags not given are None ("keep"). A method's own flag
    comes back as "methods.<method>.<option>", for the command to place (`method_flag_options`)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith(SETTING_DEST):
            out[dest.removeprefix(SETTING_DEST).replace("__", ".")] = value
        elif dest.startswith(OPTION_DEST):
            out["method_options." + dest.removeprefix(OPTION_DEST)] = value
        elif dest.startswith(METHOD_DEST):
            out["methods." + dest.removeprefix(METHOD_DEST).replace("__", ".", 1)] = value
    return out


def method_flag_options(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the other overrides, {method: {option: value}}) from `overrides`' output, flags given only."""
    rest, per_method = {}, {}
    for key, value in given.items():
        if not key.startswith("methods."):
            rest[key] = value
        elif value is not None:
            method, name = key.removeprefix("methods.").split(".", 1)
            per_method.setdefault(method, {})[name] = value
    return rest, per_method


def _add_flag(group: Any, name: str, metadata: dict, hint: Any, dest: str, taken: set[str] | None) -> None:
    flag = metadata.get("flag") or "--" + name.replace("_", "-")
    if taken is not None:
        if flag in taken:
            return  # e.g. a plugin's option named like a run flag: settable in YAML
        taken.add(flag)
    help_text = metadata["help"]
    if _base(hint) is bool:
        off = metadata.get("off_flag") or "--no-" + flag.removeprefix("--")
        group.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=help_text)
        group.add_argument(off, dest=dest, action="store_const", const=False, help=f"the opposite of {flag}")
        return
    group.add_argument(
        flag,
        dest=dest,
        type=_converter(hint),
        choices=metadata.get("choices"),
        metavar=None if metadata.get("choices") else name.upper(),
        help=help_text,
    )


def _base(hint: Any) -> Any:
    """`int | None` -> int; other unions stay as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _converter(hint: Any) -> Callable[[str], Any]:
    base = _base(hint)
    if base in (int, float, str):
        return base
    if set(typing.get_args(base)) == {int, str}:  # a number or a word, e.g. eval.workers: 4 or auto
        return lambda text: int(text) if text.lstrip("-").isdigit() else text
    raise TypeError(f"no command-line form for settings of type {hint}")
