"""Unit tests of unit discovery (the model's own layers found in the graph) on tiny modules."""
import pytest
import torch
from torch import nn

from splitfx.passes.cost import probe
from splitfx.passes.cuts import schedule
from splitfx.passes.trace import trace
from splitfx.passes.units import Unit, find_units

from tinynets import Branchy, MLPBlock, Stack


def _units(model, x):
    gm = trace(model, (x,))
    P = probe(gm, (x,))
    sched = schedule(P.graph)
    return sched, find_units(model, P, sched)


def test_identical_residual_blocks_of_a_sequential_are_the_units():
    sched, units = _units(Branchy(depth=3), torch.randn(2, 3, 6, 6))
    shape = (2, 4, 6, 6)
    assert units == [Unit("layers.0", 3, 8, shape, shape), Unit("layers.1", 8, 13, shape, shape),
                     Unit("layers.2", 13, 18, shape, shape)]
    cut_positions = {c.position for c in sched.cuts}
    assert all(u.start in cut_positions and u.end in cut_positions for u in units)
    # the block's nodes, the second call of its shared in-place ReLU included
    assert sched.order[3:8] == ["layers_0_conv1", "layers_0_relu", "layers_0_conv2", "add", "layers_0_relu_1"]


def test_units_of_a_residual_mlp_stack():
    sched, units = _units(Stack(), torch.randn(4, 6))
    assert [u.name for u in units] == [f"blocks.{i}" for i in range(5)]
    assert [(u.start, u.end) for u in units] == [(2, 7), (7, 12), (12, 17), (17, 22), (22, 27)]
    assert all(u.in_shape == u.out_shape == (4, 8) for u in units)
    assert sched.order[2:7] == ["blocks_0_fc1", "blocks_0_bn", "relu", "blocks_0_fc2", "add"]


class Pair(nn.Module):
    """Called as pair(h, h): contiguous between cuts, but cannot run on one input alone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, a, b):
        return self.fc(a) + b


class Stage(nn.Module):
    """Not a container itself: its ModuleList's children are the layers."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([MLPBlock(), MLPBlock()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.proj = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.pair = Pair()
        self.stage = Stage()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.proj(torch.relu(self.stem(x))))
        return self.head(self.stage(self.pair(h, h)))


def test_which_modules_are_units():
    """proj: a parametrised child of the root between two cuts. Not: stem (starts at the input, no cut
    before it), act (no parameters), pair (needs two inputs), stage (contains finer units), the
    children of an MLPBlock (their parent is no Sequential/ModuleList), head (ends at the output)."""
    sched, units = _units(Mixed(), torch.randn(4, 6))
    assert [u.name for u in units] == ["proj", "stage.blocks.0", "stage.blocks.1"]
    pos = {n: i for i, n in enumerate(sched.order)}
    assert units[0] == Unit("proj", pos["proj"], pos["proj"] + 1, (4, 8), (4, 8))
    assert units[1].end == units[2].start


def test_no_cuts_no_units():
    model = nn.Sequential(nn.Linear(6, 3))
    sched, units = _units(model, torch.randn(2, 6))
    assert sched.cuts == [] and units == []


class GridBlock(nn.Module):
    """timm's SAM ViT block in small: it reads its input's size first (``x.shape``, live while the block
    runs), so no cut right after the previous block; the same tensor is handed over once the size is read."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        b, h, w, c = x.shape
        y = self.fc(x.reshape(b, h * w, c))
        return x + y.reshape(b, h, w, c)


class GridStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.Sequential(*[GridBlock() for _ in range(4)])
        self.neck = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))

    def forward(self, x):
        return self.neck(self.blocks(self.stem(x)))


def test_a_block_that_reads_its_input_size_first_is_still_a_unit():
    """The size read keeps no cut at the block's first node, but the cut after it hands over the same
    tensor (its ``run`` covers the read), so the blocks are the layers and a plan balances over them."""
    import splitfx

    x = torch.randn(2, 4, 4, 8)
    sched, units = _units(GridStack(), x)
    assert [u.name for u in units[:4]] == [f"blocks.{i}" for i in range(4)]
    assert all(any(u.start == c.position and len(c.run) > 1 for c in sched.cuts) for u in units[1:4])
    plan = splitfx.plan(GridStack(), x, num_blocks=4)
    assert all(any(m.startswith("blocks.") and m.endswith(".fc") for m in b.modules) for b in plan.blocks), plan


def test_a_split_point_before_a_size_read_is_the_cut_after_it():
    """Right after ``blocks.0`` the next block's size read is live, yet the cut after the read hands over
    the same tensor: the split point takes that cut."""
    import splitfx

    plan = splitfx.plan(GridStack(), torch.randn(2, 4, 4, 8), split_points=["blocks.0", "blocks.2"])
    fcs = [[m for m in b.modules if m.endswith(".fc")] for b in plan.blocks]
    assert fcs == [["blocks.0.fc"], ["blocks.1.fc", "blocks.2.fc"], ["blocks.3.fc"]]


def test_repl_and_its_refusals_see_the_cut_a_size_read_follows():
    """RepL over such blocks: the cut before the replaced block's neighbours (whose run holds the first
    one's size read) stays open, the run of identical blocks reaches the last one, and a split point
    inside the trio, or after the last module, is refused with the reason."""
    import splitfx
    from splitfx.passes.replace import identical_runs

    x = torch.randn(2, 4, 4, 8)
    plan = splitfx.plan(GridStack(), x, split_points=["stem"], replace=["blocks.1"])
    assert plan.replaced == ["blocks.1"] and plan.blocks[0].modules[0] == "stem"
    gm = trace(GridStack(), (x,))
    P = probe(gm, (x,))
    sched = schedule(P.graph)
    runs = identical_runs(GridStack(), P, sched, find_units(GridStack(), P, sched))
    assert [[u.name for u in run] for run in runs] == [[f"blocks.{i}" for i in range(4)]]
    with pytest.raises(splitfx.PlanError, match=r"'blocks\.1': no cut can follow it in GridStack: RepL keeps the "
                                                r"replaced block with the neighbours .*after 'stem', 'blocks\.2'"):
        splitfx.plan(GridStack(), x, split_points=["blocks.1"], replace=["blocks.1"])
    with pytest.raises(splitfx.PlanError, match=r"'neck\.1': it is the last module of GridStack"):
        splitfx.plan(GridStack(), x, split_points=["neck.1"])
