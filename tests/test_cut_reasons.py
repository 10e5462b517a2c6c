"""Too few legal cuts: the PlanError names what closes the others (``planner/closed_cuts.py``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitfx


class ShapeLate(nn.Module):
    """Reads its input's size at the top and uses it at the very end: a torch.Size live throughout."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        size = x.size()
        y = self.body(self.stem(x)).mean((2, 3))
        return self.head(y).view(size[0], -1)


class Tied(nn.Module):
    """The input projection's weight is read again, transposed, as the output projection."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return F.linear(self.norm(self.body(self.embed(x))), self.embed.weight.t())


class Lift(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1)


class KeepsGrid(nn.Module):
    """A 5-D tensor (no layout an aux head can read) made early and kept until the end."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.lift = Lift()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.stem(x)
        grid = self.lift(y)
        return self.head((self.body(y) + grid.squeeze(1)).mean((2, 3)))


def _plan_error(model: nn.Module, x: torch.Tensor, num_blocks: int = 4) -> splitfx.PlanError:
    with pytest.raises(splitfx.PlanError) as info:
        splitfx.plan(model, x, num_blocks=num_blocks, num_classes=4)
    return info.value


def test_a_shape_read_used_late_is_named_with_its_node_and_the_places_it_closes():
    err = _plan_error(ShapeLate(), torch.randn(2, 3, 8, 8))
    message = str(err)
    assert err.max_blocks == 2 and "has 1 legal cut points" in message
    assert "`x.size()` (node size) in ShapeLate's forward is live until `size[0]`" in message
    assert "a shape read that changes with the batch" in message
    assert "e.g. after 'stem', 'body'" in message


def test_a_tied_weight_is_named_with_both_uses():
    message = str(_plan_error(Tied(), torch.randn(2, 6)))
    assert "has 0 legal cut points" in message
    assert "parameter 'embed.weight' is used by `self.embed(...)` (node embed) in module 'embed' (Linear)" in message
    assert "again by `linear(norm, t)` (node linear) in Tied's forward" in message
    assert "two losses" in message and "after 'embed', 'body', 'norm'" in message


def test_a_long_lived_tensor_no_head_can_read_is_named_with_its_module_and_the_rule():
    message = str(_plan_error(KeepsGrid(), torch.randn(2, 3, 8, 8), num_blocks=8))
    assert "`stem.unsqueeze(1)` (node unsqueeze) in module 'lift' (Lift) is live until" in message
    assert 'fails the cut rule "an aux head can read it"' in message
    assert "shape [2, 1, 8, 8, 8]" in message and "after 'lift'" in message


def test_too_many_tensors_at_once_names_the_longest_lived():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return self.c(self.b(h) + h)

    with pytest.raises(splitfx.PlanError) as info:
        splitfx.plan(Skip(), torch.randn(2, 4), num_blocks=4, max_cut_tensors=1)
    message = str(info.value)
    assert "more tensors are live at once than max_cut_tensors allows" in message
    assert "the longest-lived: `self.a(...)` (node a) in module 'a' (Linear)" in message


def test_a_model_with_every_place_open_says_so():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    message = str(_plan_error(mlp, torch.randn(2, 4), num_blocks=8))
    assert "Every place between two of its 4 nodes where a tensor can be handed over is a cut." in message


def test_a_split_point_with_no_cut_after_it_says_what_closes_it_and_where_cuts_are():
    """The one place after the split point, explained as the planner's own cut rules see it: the shape
    read live across it, and the nearest modules a cut may follow."""
    with pytest.raises(splitfx.PlanError) as info:
        splitfx.plan(ShapeLate(), torch.randn(2, 3, 8, 8), split_points=["body.0"], num_classes=4)
    message = str(info.value)
    assert message.startswith("split point 'body.0': no cut can follow it in ShapeLate: `x.size()` (node size)")
    assert "a shape read that changes with the batch" in message
    assert message.endswith("The nearest cuts are after node getitem of its forward."), message
