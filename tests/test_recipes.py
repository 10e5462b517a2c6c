"""Every recipe: a local step with finite losses, isolation as the method defines it, eval parity."""
import pytest
import timm
import torch

import splitfx
from splitfx.recipes.copies import EMA

from checks import assert_eval_equal, assert_isolated

MODELS = {
    "resnet18": (dict(), 64),
    "convnext_atto": (dict(), 64),
    "vit_tiny_patch16_224": (dict(img_size=96), 96),
}
# ffr predicts one value per sample, not classes: its own tests are tests/test_ffr.py.
RECIPES = sorted(set(splitfx.list_recipes()) - {"e2e", "ffr"})


def _setup(name, recipe, num_blocks=4):
    kwargs, size = MODELS[name]
    model = timm.create_model(name, num_classes=10, **kwargs)
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    return model, x, y, splitfx.convert(model, x, num_blocks=num_blocks, recipe=recipe)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_recipe_step_isolation_and_parity(name, recipe):
    model, x, y, sm = _setup(name, recipe)
    assert sm.num_blocks == 4
    assert_isolated(sm, x, y)
    opt = torch.optim.SGD(sm.parameters(), lr=0.01)
    assert all(torch.isfinite(torch.tensor(sm.train_step(x, y, opt))))
    assert_eval_equal(sm, model, x)


def test_e2e_is_one_block_with_the_same_api():
    model, x, y, sm = _setup("resnet18", "e2e")
    assert sm.num_blocks == 1 and len(sm.heads) == 0
    (loss,) = list(sm.local_losses(x, y))
    assert torch.equal(loss, torch.nn.functional.cross_entropy(model(x), y))


# man: every cut has a residual block after it to copy (each block holds one whole); mlaan: cut 0 has no head.
@pytest.mark.parametrize("recipe,heads", [("man", [0, 1, 2]), ("mlaan", [1, 2])])
def test_every_ema_copy_moves_and_none_is_optimised(recipe, heads):
    _, x, y, sm = _setup("resnet18", recipe)
    emas = [m for m in sm.heads.modules() if isinstance(m, EMA)]
    assert [i for i, h in enumerate(sm.heads) if any(isinstance(m, EMA) for m in h.modules())] == heads
    assert len(emas) == len(heads)
    opt = torch.optim.SGD(sm.parameters(), lr=0.1)
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    ema_tensors = [t for e in emas for t in e.state_dict().values()]
    assert not optimised & {id(t) for t in ema_tensors}
    before = [[b.clone() for b in e.module.buffers() if b.is_floating_point()] for e in emas]
    sm.train_step(x, y, opt)
    for e, old in zip(emas, before, strict=True):
        new = [b for b in e.module.buffers() if b.is_floating_point()]
        assert any(not torch.equal(a, b) for a, b in zip(old, new, strict=True)), "EMA copy did not move"
    assert all(any(k.startswith(f"heads.{i}.") and "ema" in k for k in sm.state_dict()) for i in heads)


def test_ema_momentum_of_one_is_rejected():
    with pytest.raises(ValueError, match="never move"):
        EMA(torch.nn.Linear(2, 2), momentum=1.0)


def test_unknown_recipe_lists_the_choices():
    with pytest.raises(ValueError, match="infopro"):
        splitfx.convert(torch.nn.Linear(2, 2), torch.randn(1, 2), recipe="nope")


@pytest.mark.parametrize("recipe", RECIPES)
def test_stepping_each_block_after_its_backward_gives_the_same_weights(recipe):
    """Stepping as soon as gradients are final (one block's alive at a time; for the cascade recipes
    only at the end, as loss k also trains block k+1) equals one step at the end, bit for bit,
    optimizer state included."""
    import copy

    model, x, y, sm = _setup("resnet18", recipe)
    twin, before = copy.deepcopy(sm), copy.deepcopy(model.state_dict())
    whole, each = torch.optim.AdamW(sm.parameters(), lr=0.01), torch.optim.AdamW(twin.parameters(), lr=0.01)
    for _ in range(2):
        assert sm.train_step(x, y, whole) == twin.train_step(x, y, each, step_each_block=True)
    for (name, a), b in zip(sm.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    cascade = recipe in ("hpff", "mlaan")
    assert twin._final_after() == ([False, False, False, True] if cascade else [True] * 4)
    assert sum(not torch.equal(a, before[k]) for k, a in model.state_dict().items()) > 40, "the steps moved weights"
