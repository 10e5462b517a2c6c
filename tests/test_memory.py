"""Measured (not predicted) saved-for-backward bytes of local vs E2E training, and the prediction."""
import pytest
import timm
import torch

import splitfx
from splitfx.base.meter import SavedTensorMeter

from checks import measure


@pytest.mark.parametrize("name", ["resnet50", "vit_small_patch16_224"])
def test_local_peak_and_prediction(name):
    model = timm.create_model(name)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
    sm = splitfx.convert(model, x, num_blocks=4)
    e2e, blocks = measure(sm, x, y)
    assert max(blocks) <= 0.40 * e2e
    # The fake-tensor probe follows the same autograd formulas as the real run: on CPU it is exact.
    assert e2e == sm.plan.e2e_saved_bytes
    assert blocks == [b.saved_bytes for b in sm.plan.blocks]


@pytest.mark.parametrize("recipe", ["man", "mlaan", "hpff"])
def test_heads_recomputed_in_backward_are_predicted_exactly(recipe):
    """A recomputed head keeps its inputs out of autograd's sight (torch.utils.checkpoint); splitfx
    saves them visibly (recipes/recompute.py), so the measured saved bytes of each loss are the plan's."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sm = splitfx.convert(model, x, num_blocks=3, recipe=recipe)
    _, blocks = measure(sm, x, y)
    assert blocks == [b.saved_bytes for b in sm.plan.blocks]


def test_a_recompute_keeps_its_input_in_sight():
    """The input a recomputed module needs until backward is counted by the meter once, as any saved
    tensor: a fresh tensor is, one the graph saves already is not counted twice."""
    from splitfx.recipes.recompute import recomputed

    layer = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh())
    w = torch.randn(32, 64, requires_grad=True)
    with SavedTensorMeter() as meter:
        h = w * 2.0  # a fresh tensor: no op saves it but the recompute
        out = recomputed(layer, h).sum()
        assert meter.live == h.numel() * 4
        out.backward()
        assert meter.live == 0
    torch.testing.assert_close(w.grad, torch.autograd.grad(layer(w * 2.0).sum(), w)[0])


def test_meter_counts_views_once_and_releases_after_backward():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with SavedTensorMeter({id(None)}) as meter:
        h = torch.tanh(x @ w)  # saves x (for w's gradient) and the tanh output
        (h.view(-1) * h.view(-1)).sum().backward()  # saves h's storage twice: counted once
        assert meter.live == 0
    assert meter.peak == x.numel() * 4 + h.numel() * 4


def test_planning_and_converting_keep_no_model_alive():
    """The cost probe's fake autograd graphs hold the meter's hooks from C++; nothing they reach may
    keep the model (and its real weights) alive once the caller lets go (a table of many runs grew
    by a model per run)."""
    import gc
    import weakref

    model = timm.create_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    sm = splitfx.convert(model, x, 4, recipe="hpff")
    for loss in sm.local_losses(x, torch.tensor([0, 1])):
        loss.backward()
    refs = [weakref.ref(model), weakref.ref(sm)]
    del model, sm, loss
    gc.collect()
    assert [r() for r in refs] == [None, None]
