"""The extension points docs/design.md documents, run as written: a cut rule and a pipeline schedule
(the recipe example is run by tests/test_registry.py)."""
import re
from pathlib import Path

import pytest
import torch
from dist_helpers import batches, converted

from splitfx.planner import legality
from splitfx.runtime import schedules
from splitfx.runtime.grid import Grid
from splitfx.runtime.pipeline import Stage
from splitfx.runtime.rank import Rank
from splitfx.runtime.schedules import Streaming

DESIGN = Path(__file__).parents[1] / "docs" / "design.md"


def _example(heading: str) -> dict:
    """Run the first Python block under ``heading`` of docs/design.md; its names."""
    text = DESIGN.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(DESIGN), "exec"), scope)
    return scope


@pytest.fixture
def restore(monkeypatch):
    monkeypatch.setattr(legality, "CUT_RULES", dict(legality.CUT_RULES))
    monkeypatch.setattr(schedules, "SCHEDULES", dict(schedules.SCHEDULES))


def test_the_documented_cut_rule_keeps_attention_whole(restore):
    import splitfx

    before = legality.CUT_RULES.copy()
    scope = _example("## Adding a cut rule")
    assert set(legality.CUT_RULES) - set(before) == {"no cut inside an attention module"}
    with pytest.raises(ValueError, match="already registered"):
        legality.cut_rule("no cut inside an attention module")(lambda cut, facts: True)
    plan, model = scope["plan"], scope["model"]
    del legality.CUT_RULES["no cut inside an attention module"]
    free = splitfx.plan(model, torch.randn(2, 3, 32, 32), num_blocks=4)
    assert plan.legal_cuts < free.legal_cuts, "the rule refused some cuts"
    assert plan.num_blocks == 4
    for block in plan.blocks[:-1]:
        assert ".attn" not in block.modules[-1], block.modules[-1]


def test_the_documented_schedule_trains_each_batch_twice(restore):
    scope = _example("## Adding a pipeline schedule")
    assert schedules.SCHEDULES["echo"] is scope["Echo"]
    class Other(schedules.PipelineSchedule):
        pass

    with pytest.raises(ValueError, match="already registered"):
        schedules.register_schedule("echo")(Other)
    x, y = batches(1)[0]
    grads = []
    for schedule in (Streaming(), schedules.schedule_named("echo")):
        sm = converted(3)
        me = Rank(Grid(0, 1, 1, torch.device("cpu"), 30), Stage(sm, 0, 3), torch.optim.SGD(sm.parameters(), lr=0.0),
                  schedule=schedule)
        losses = me.train_step(0, (x, y))
        assert len(losses) == 3
        grads.append({n: p.grad for n, p in sm.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(grads[1][name], 2 * g), name


def test_heads_with_ema_copies_need_their_recipe_to_declare_them():
    """A pipeline refuses stages whose heads follow another stage's layers; a recipe that builds such
    heads without declaring RecipeTraits(ema=True) is refused when they are built, not trusted."""
    import dataclasses

    import timm

    import splitfx
    from splitfx.recipes.man import MAN

    class Quiet(MAN):
        traits = dataclasses.replace(MAN.traits, ema=False)

    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(splitfx.ArgumentError, match="does not declare them"):
        splitfx.convert(model, torch.randn(2, 3, 32, 32), 3, recipe=Quiet())
