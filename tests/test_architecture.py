"""The shape of the package, checked: no import circles, the workloads and the methods named only by
their own modules, and a light package import."""

import ast
from pathlib import Path

import safemax_ray

PACKAGE = Path(safemax_ray.__file__).parent


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Every safemax_ray module -> the safemax_ray modules it imports, at load time or inside functions."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safemax_ray"):
                for alias in node.names:
                    deps.add(resolve(f"{node.module}.{alias.name}"))
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("safemax_ray")}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    graph = import_graph()
    assert "safemax_ray.methods" in graph["safemax_ray.config"]  # the graph sees imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_outside_the_workloads_names_a_workload():
    """Which workload a run has is the registry's answer (`engine/workloads/`): a module elsewhere that
    spells a workload's name as a string, or reads a setting named after one (`cfg.concept`), would need
    editing for the next one. One exception, by what it is: the Eval-Unlearn technique
    (plugins/eval_unlearn.py) erases concepts of text-to-image pipelines, so it builds a concept run."""
    from safemax_ray.engine.workloads import DEFAULT_WORKLOAD, available_workloads

    names = set(available_workloads())
    allowed = {PACKAGE / "plugins" / "eval_unlearn.py": {"concept"}}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "engine" / "workloads") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # An attribute `.classes` is the plain word (argparse's --classes), not the default workload.
            if isinstance(node, ast.Constant):
                spelled = node.value
            elif isinstance(node, ast.Attribute) and node.attr != DEFAULT_WORKLOAD:
                spelled = node.attr
            else:
                continue
            if spelled in names - allowed.get(path, set()):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {spelled!r}")
    assert not found, found
    assert {"classes", "concept", "dit"} <= names  # the check sees the built-ins


def test_the_package_and_the_tune_callback_import_without_torch_or_diffusers():
    """A Ray Train controller unpickles the Tune callback (ray/tune_reports.py): with the package's own
    import light, it does not spend seconds importing torch and diffusers it never uses."""
    import subprocess
    import sys

    script = (
        "import sys, safemax_ray, safemax_ray.ray.tune_reports; "
        "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules)); "
        "print(safemax_ray.UnlearnConfig.__name__)"  # the public names still resolve, on first use
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "UnlearnConfig"]


def test_no_module_outside_methods_names_a_method():
    """Which methods exist is the registry's answer: a module outside `methods/` that spells a method's
    name (other than SAFEMax, the package's reference method and default) would need editing for the
    next one. "sa" is also the name of Selective Amnesia's checkpoint format, which `import`/`export`
    (drivers/interchange.py, cli/interchange.py's --format) name."""
    from safemax_ray.methods import available_methods

    names = set(available_methods()) - {"safemax"}
    formats = {PACKAGE / "drivers" / "interchange.py": {"sa"}, PACKAGE / "cli" / "interchange.py": {"sa"}}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "methods") in path.parents:
            continue
        allowed = formats.get(path, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names - allowed:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, found
