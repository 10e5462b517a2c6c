"""The package's shape: layers import only downward, no import cycle, small modules, one API shape."""
import ast
import inspect
from pathlib import Path

import networkx as nx
import pytest
import torch

import splitfx
from splitfx.programs import bench
from splitfx.recipes.layout import Layout

PACKAGE = Path(splitfx.__file__).parent
# Layer of each top-level part of the package; a module may import its own part and lower layers.
LAYERS = {"base": 0, "models": 0, "passes": 1, "planner": 2, "recipes": 2, "runtime": 2, "api": 3, "programs": 4,
          "cli": 5, "__init__": 6, "__main__": 6}
# Same-layer imports that are allowed: the planner costs the recipes' heads, the runtime runs their loops,
# and the planner predicts a training step's peak by running the runtime's one step loop on fake tensors.
SIDEWAYS = {("planner", "recipes"), ("runtime", "recipes"), ("planner", "runtime")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["splitfx", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules imported by ``name`` anywhere in its source (functions and TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return {t for t in targets if t in modules and t != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _imports(name, path, modules))
    return graph


def test_import_graph_has_no_cycle():
    graph = _graph()
    assert graph.number_of_edges() > 50, "the import scan found too few imports to mean anything"
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_layers_import_only_downward():
    wrong = []
    for a, b in _graph().edges:
        pa, pb = _part(a), _part(b)
        if pa != pb and not LAYERS[pb] < LAYERS[pa] and (pa, pb) not in SIDEWAYS:
            wrong.append(f"{a} → {b}")
    assert not wrong, wrong


def test_every_module_is_placed_in_a_layer_and_is_small():
    for name, path in _modules().items():
        assert _part(name) in LAYERS, f"{name} is in no layer"
        assert len(path.read_text().splitlines()) <= 300, f"{path} is over 300 lines"


def test_no_module_is_named_like_a_public_function():
    public = {n for n in splitfx.__all__ if callable(getattr(splitfx, n)) and not isinstance(getattr(splitfx, n), type)}
    stems = {Path(p).stem for p in _modules().values()} | {Path(p).parent.name for p in _modules().values()}
    assert not public & stems, public & stems


def test_plan_and_convert_share_their_signature_and_bench_its_names():
    plan_params = inspect.signature(splitfx.plan).parameters
    convert_params = inspect.signature(splitfx.convert).parameters
    assert list(plan_params) == list(convert_params)[: len(plan_params)]
    for name in plan_params:
        assert plan_params[name].kind == convert_params[name].kind
        assert plan_params[name].default == convert_params[name].default, name
    positional = [n for n, p in plan_params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == ["model", "example_inputs", "num_blocks"]
    bench_params = inspect.signature(bench.run).parameters
    for name in ("num_blocks", "recipe", "replace"):
        assert bench_params[name].default == plan_params[name].default, name


def test_plan_and_convert_accept_the_same_keywords_and_agree():
    from test_convert_models import SmallCNN

    model, x = SmallCNN(), torch.randn(2, 3, 16, 16)
    options = dict(method="flops", recipe="dgl", num_classes=10, leaf_modules=["act2"], replace=None,
                   replace_mode="tensor", split_points=None)
    plan = splitfx.plan(model, x, 3, **options)
    sm = splitfx.convert(model, x, 3, **options)
    assert sm.plan.to_dict() == plan.to_dict()
    with pytest.raises(TypeError):
        splitfx.plan(model, x, 3, "flops")  # everything after num_blocks is keyword-only


def _string_keyed_node_attributes(tree: ast.AST) -> list[int]:
    """Lines that read or write a node attribute by a string literal: ``G.nodes[v]["x"]``,
    ``G.nodes[v].get("x")``, ``G.nodes(data="x")``."""
    def node_entry(expr: ast.expr) -> bool:  # ``<anything>.nodes[v]``
        return isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Attribute) and expr.value.attr == "nodes"

    def literal(expr: ast.expr) -> bool:
        return isinstance(expr, ast.Constant) and isinstance(expr.value, str)

    def string_keyed(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            return node_entry(node.value) and literal(node.slice)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return False
        if node.func.attr == "get":
            return node_entry(node.func.value) and bool(node.args) and literal(node.args[0])
        return node.func.attr == "nodes" and any(k.arg == "data" and literal(k.value) for k in node.keywords)

    return sorted(node.lineno for node in ast.walk(tree) if string_keyed(node))


def test_no_string_keyed_node_attribute():
    """A cost graph's node carries one typed record (``passes/node_cost.py``), read through ``node_cost``."""
    sample = ast.parse('G.nodes[v]["saved"]\nG.nodes[v].get("static")\nG.nodes(data="flops")\nnode_cost(G, v).saved')
    assert _string_keyed_node_attributes(sample) == [1, 2, 3], "the scan must see every form it forbids"
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in _modules().values()
             for line in _string_keyed_node_attributes(ast.parse(path.read_text()))]
    assert not found, found


def _calls(attr: str) -> dict[str, list[int]]:
    """Package module → lines calling ``<anything>.attr(...)``."""
    found: dict[str, list[int]] = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                found.setdefault(str(path.relative_to(PACKAGE)), []).append(node.lineno)
    return found


def test_one_step_loop_runs_backward_and_one_loop_runs_the_blocks():
    """``runtime/step.run_step`` is the only place that calls ``backward``; ``Recipe.losses`` (and a
    recipe's own override) the only loop that calls ``local_loss``, besides the planner's aux-cost
    probe, which runs one head forward and never steps."""
    assert set(_calls("backward")) == {"runtime/step.py"}, _calls("backward")
    callers = {m for m in _calls("local_loss") if not m.startswith("recipes/")}
    assert callers == {"planner/driver.py"}, callers


def _reflective_checks(tree: ast.AST) -> list[int]:
    """Lines that guess a recipe's or a head's capabilities: ``hasattr``/``getattr`` on them,
    ``inspect.signature`` of their methods, or ``type(r).m is (not) Recipe.m``."""
    def about_recipe(expr: ast.expr) -> bool:
        text = ast.unparse(expr).lower()
        return "recipe" in text or "head" in text

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = ast.unparse(node.func)
            if name in ("hasattr", "getattr", "inspect.signature") and about_recipe(node.args[0]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(ast.unparse(s).startswith("type(") for s in sides) and any(
                    ast.unparse(s).startswith("Recipe.") for s in sides):
                lines.append(node.lineno)
    return lines


def test_no_reflective_recipe_capability_check():
    """What a recipe can do is declared in ``RecipeTraits`` and read, not guessed by reflection."""
    sample = ast.parse('getattr(recipe, "uses_inputs", None)\nhasattr(sm.recipe, "aux_reaches")\n'
                       'inspect.signature(recipe.reaches)\ntype(recipe).losses is not Recipe.losses\n'
                       'getattr(head, "ema_sources", None)\nrecipe.traits.cascade')
    assert _reflective_checks(sample) == [1, 2, 3, 4, 5], "the scan must see every form it forbids"
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in _modules().values()
             for line in _reflective_checks(ast.parse(path.read_text()))]
    assert not found, found


def test_layouts_are_named_by_the_enum_alone():
    """Layouts are ``recipes.layout.Layout`` members; the only string literals naming one are the
    enum's own values."""
    names = {member.value for member in Layout if member is not Layout.UNREAD}
    found = []
    for path in _modules().values():
        tree = ast.parse(path.read_text())
        own = {id(node) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "Layout"
               for node in ast.walk(c)}
        found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names and id(node) not in own]
    assert not found, found


@pytest.mark.parametrize("report", ["SplitPlan", "BlockPlan", "StagePlan"])
def test_plan_reports_are_plain_frozen_data(report):
    """The reports are frozen dataclasses with no field typed ``Any`` (or ``object``): what convert
    builds from is the planner's ``Split``, never something riding on the report."""
    import dataclasses
    import re

    from splitfx.base import report as reports
    from splitfx.base import stage_plan

    cls = getattr(reports, report, None) or getattr(stage_plan, report)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    loose = [f.name for f in dataclasses.fields(cls) if re.search(r"\bAny\b|\bobject\b", str(f.type))]
    assert not loose, f"{report} fields typed Any or object: {loose}"
