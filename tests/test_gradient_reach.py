"""Isolation observed during one real step (``GradientReach``, what the coverage sweep records) agrees
with the K-pass observation of tests/checks.py, for an independent and a cascade recipe, with and
without a per-block optimizer step; and it reports a loss that reaches beyond its blocks."""
import pytest
import torch

import splitfx
from splitfx.runtime.isolation import GradientReach

from checks import assert_isolated
from tinynets import Stack


@pytest.mark.parametrize("recipe", ["linear", "hpff"])
@pytest.mark.parametrize("step_each_block", [False, True])
def test_one_step_observes_what_k_separate_backwards_observe(recipe, step_each_block):
    torch.manual_seed(0)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    sm = splitfx.convert(Stack(), x, 4, recipe=recipe)
    reached = assert_isolated(sm, x, y)
    with GradientReach(sm) as reach:
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1), step_each_block=step_each_block,
                      after_loss=reach.after_loss)
    assert reach.per_loss == reached
    assert reach.violations() == []
    if recipe == "hpff":
        assert any(len(sm.recipe.reaches(k, 4)) == 2 for k in range(4)), "a cascade: some loss trains two blocks"


def test_a_parameter_the_forward_never_reads_is_no_violation():
    torch.manual_seed(0)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    model = Stack()
    model.spare = torch.nn.Linear(3, 3)  # held, never called: E2E does not train it either
    sm = splitfx.convert(model, x, 3)
    with GradientReach(sm) as reach:
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1), after_loss=reach.after_loss)
    assert reach.violations() == []
    assert not any(n.startswith("model.spare.") for got in reach.per_loss for n in got)


def test_a_loss_reaching_beyond_its_blocks_is_reported(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    sm = splitfx.convert(Stack(), x, 3)
    with GradientReach(sm) as reach:
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1), after_loss=reach.after_loss)
    monkeypatch.setattr(type(sm.recipe), "reaches", lambda self, k, num_blocks=None: (0,))
    violations = reach.violations()
    assert len(violations) == 2 and "outside its blocks" in violations[0]
    assert violations[0].startswith("loss 1 reached ")
    assert violations[1].startswith("loss 2 reached ")
    with GradientReach(sm) as reach:
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert reach.per_loss == [set().union(*reach.per_loss)], "without after_loss every loss lands in one record"
    assert reach.violations() == ["1 losses were observed for 3 blocks"]
