"""The recipe registry: built-ins register themselves, a user's recipe trains and shows on the CLI."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import splitfx
from splitfx.cli import main
from splitfx.recipes import registry

from checks import assert_eval_equal, assert_isolated

DESIGN = Path(__file__).parents[1] / "docs" / "design.md"


@pytest.fixture
def clean_registry():
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_builtins_are_registered_and_create_with_options():
    assert {"e2e", "linear", "dgl", "infopro", "infopro_supcon", "auglocal", "man", "hpff", "mlaan"} <= set(
        splitfx.list_recipes())
    dgl = splitfx.recipe("dgl", n=2, m=3)
    assert (dgl.name, dgl.n, dgl.m) == ("dgl", 2, 3)
    with pytest.raises(ValueError, match="register"):
        splitfx.recipe("nope")


def test_registering_a_name_twice_is_refused(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        @splitfx.register_recipe("linear")
        class Other(splitfx.Recipe):
            pass
    with pytest.raises(TypeError, match="subclass"):
        splitfx.register_recipe("not_a_recipe")(object)


def test_the_documented_user_recipe_runs_trains_and_is_isolated(clean_registry, capsys):
    text = DESIGN.read_text()
    section = text[text.index("## Writing a recipe"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 40, "the design doc promises a recipe in under 40 lines"
    scope: dict = {}
    exec(compile(code, str(DESIGN), "exec"), scope)
    sm, model, x, y = scope["sm"], scope["model"], scope["x"], scope["y"]
    assert "pool_mlp" in splitfx.list_recipes() and sm.recipe.name == "pool_mlp"
    assert sm.num_blocks == 4 and all(isinstance(h, scope["PoolMLP"]) for h in sm.heads)
    assert_isolated(sm, x, y)
    assert_eval_equal(sm, model, x)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "pool_mlp" in capsys.readouterr().out


def test_an_installed_package_registers_through_its_entry_point(tmp_path):
    (tmp_path / "myrecipes").mkdir()
    (tmp_path / "myrecipes" / "__init__.py").write_text(textwrap.dedent("""
        import splitfx

        class Mine(splitfx.Recipe):
            def make_head(self, boundary, graph):
                return splitfx.recipe("linear").make_head(boundary, graph)
    """))
    info = tmp_path / "myrecipes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myrecipes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[splitfx.recipes]\nmine_from_plugin = myrecipes:Mine\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "splitfx", "train", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mine_from_plugin" in out.stdout
