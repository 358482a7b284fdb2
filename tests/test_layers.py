"""The package's two layers (issue 20): library modules import no stage module, stage
modules import library modules and never each other, and no import circle.

A stage module is one a Snakemake rule runs: it defines a top-level ``run`` function
(``lcseg_steps.runner.adapter`` calls ``<module>.run(job)``). Everything else is library. Imports
are read with ``ast`` (top-level, function-local and ``TYPE_CHECKING`` ones alike), so the
test needs no import of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lcseg_steps"

# The stage modules, written out so that a module gaining or losing ``run`` fails here.
STAGES = {
    "lcseg_steps.stages.index",
    "lcseg_steps.stages.demo_data",
    "lcseg_steps.stages.extract",
    "lcseg_steps.stages.image_level",
    "lcseg_steps.stages.fit_dataset",
    "lcseg_steps.stages.fit_category",
    "lcseg_steps.stages.merge",
    "lcseg_steps.stages.refine",
    "lcseg_steps.stages.objects",
    "lcseg_steps.stages.assign",
    "lcseg_steps.stages.segment",
    "lcseg_steps.stages.scene_dataset",
    "lcseg_steps.stages.scene_levels",
    "lcseg_steps.stages.scene_refine",
    "lcseg_steps.stages.scene_model",
    "lcseg_steps.stages.model",
    "lcseg_steps.stages.evaluate",
    "lcseg_steps.stages.summary",
    "lcseg_steps.stages.report",
    "lcseg_steps.stages.baselines",
    "lcseg_steps.stages.separability",
    "lcseg_steps.stages.table",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, modules: set[str]) -> str | None:
    """The package module ``name`` denotes (the longest prefix that is one), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The package modules that ``module`` imports, anywhere in its body."""
    is_pkg = f"{module}.__init__" in modules or any(m.startswith(f"{module}.") for m in modules)
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module ``pkg.mod``
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from lcseg_steps.clustering import
    levels`` is an edge to ``lcseg_steps.clustering.levels``, ``from lcseg_steps import
    __version__`` to the package ``lcseg_steps`` itself)."""
    trees = _trees()
    modules = set(trees)
    return {m: _imports(m, t, modules) for m, t in trees.items()}


def stage_modules() -> set[str]:
    return {
        m
        for m, tree in _trees().items()
        if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path ``a -> ... -> a``), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_stage_modules_are_the_ones_defining_run():
    assert stage_modules() == STAGES


def test_stage_modules_are_the_stages_folder():
    """The layers show in the folders: every module of ``lcseg_steps/stages/`` is a stage,
    and no stage sits anywhere else."""
    in_folder = {m for m in _trees() if m.startswith("lcseg_steps.stages.")}
    assert in_folder == STAGES


def _unused_imports(tree: ast.Module) -> set[str]:
    """Names a module imports and never uses itself (what it could only re-export)."""
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcseg_steps"):
            for a in node.names:
                imported[a.asname or a.name] = node.module
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return {name for name in imported if name not in used and name != "__version__"}


def test_stage_modules_re_export_nothing():
    """A test or a library imports a library name from its library module, not through a
    stage: a stage imports only what it uses."""
    trees = _trees()
    bad = {m: sorted(_unused_imports(trees[m])) for m in STAGES if _unused_imports(trees[m])}
    assert not bad, f"stage modules importing names they do not use: {bad}"


def test_unused_import_check_sees_a_re_export():
    tree = ast.parse("from lcseg_steps.perimage.qkv import qkv_features, FEATURES\nx = FEATURES\n")
    assert _unused_imports(tree) == {"qkv_features"}


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "lcseg_steps.stores.layout" in graph["lcseg_steps.stages.merge"]  # top-level
    assert "lcseg_steps.perimage.backbone" in graph["lcseg_steps.stages.index"]  # function-local
    assert (
        "lcseg_steps.clustering.levels" in graph["lcseg_steps.stages.merge"]
    )  # from ... import levels
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    assert _cycle(import_graph()) is None


def test_stage_modules_import_no_other_stage_module():
    graph = import_graph()
    bad = {m: sorted(graph[m] & STAGES) for m in STAGES if graph[m] & STAGES}
    assert not bad, f"stage modules importing stage modules: {bad}"


def test_library_modules_import_no_stage_module():
    graph = import_graph()
    bad = {m: sorted(graph[m] & STAGES) for m in graph if m not in STAGES and graph[m] & STAGES}
    assert not bad, f"library modules importing stage modules: {bad}"


def test_every_import_of_the_package_resolves():
    """Function-local imports too (an import run only on one path would fail only there):
    every ``from lcseg_steps... import name`` names a module or a name it defines."""
    import importlib

    bad = []
    for module, tree in _trees().items():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcseg_steps")
            ):
                continue
            target = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(target, a.name):
                    try:
                        importlib.import_module(f"{node.module}.{a.name}")
                    except ImportError:
                        bad.append(f"{module}:{node.lineno}: {node.module}.{a.name}")
    assert not bad, bad
