"""Layouts of any rank: 1-D signals (NCL), video (NCDHW, NDHWC) and maps whose shape cannot tell
NCHW from NHWC, decided from the graph's convolutions, norms and linears."""
import pytest
import torch
import torchvision
from torch import nn

import splitfx
from splitfx.api.planning import split_of
from splitfx.passes.channels import channels_last_in
from splitfx.passes.cost import probe
from splitfx.passes.trace import trace
from splitfx.recipes.decoders import can_reconstruct
from splitfx.recipes.heads import MLPSR, PoolLinear, Resample, adapter
from splitfx.recipes.infopro import InfoProHead
from splitfx.recipes.layout import Layout, MapSpec, channels, follow, infer_layout, pool

from checks import assert_eval_equal, assert_isolated


class Trunk1d(nn.Module):
    """Conv1d(→16, 9, stride 4) + BN1d + ReLU four times on [B, 1, 1600], pooled over time, Linear → 5."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv1d(1 if i == 0 else 16, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU())
            for i in range(4)
        ])
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _conv3d(c_in: int, c_out: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU())


class Tiny3d(nn.Module):
    """A video CNN on [B, 3, T, H, W]: Conv3d + BN3d + ReLU stages, global pool, Linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = _conv3d(3, 8, (1, 2, 2))
        self.layers = nn.Sequential(_conv3d(8, 8, 1), _conv3d(8, 16, 2), _conv3d(16, 16, 1), _conv3d(16, 32, 2))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class ChannelsLast(nn.Module):
    """A Conv patch embedding (2-D or 3-D), then channels-last residual MLP blocks (video swin, ConvNeXt)."""

    def __init__(self, embed: nn.Module, dim: int, classes: int = 10):
        super().__init__()
        self.embed = embed
        self.blocks = nn.Sequential(*[Mlp(dim) for _ in range(4)])
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).movedim(1, -1)
        for block in self.blocks:
            x = x + block(x)
        return self.fc(x.flatten(1, -2).mean(1))


def _plan(model: nn.Module, x: torch.Tensor, k: int = 4, **options):
    torch.manual_seed(0)
    plan = splitfx.plan(model, x, k, **options)
    return plan, split_of(plan)


def test_the_graph_places_channels_in_any_rank_and_the_shape_decides_only_without_it():
    assert infer_layout((2, 16, 100)) == Layout.NLC  # a sequence the graph says nothing of: tokens, as before
    assert infer_layout((2, 16, 100), last=False) == Layout.NCL
    assert infer_layout((2, 16, 100), last=True) == Layout.NLC
    assert infer_layout((2, 8, 4, 8, 8)) is None, "a 5-D tensor is a volume only where the graph says so"
    assert infer_layout((2, 8, 4, 8, 8), last=False) == Layout.NCDHW
    assert infer_layout((2, 4, 8, 8, 8), last=True) == Layout.NDHWC
    assert infer_layout((2, 8, 8, 8), (8, 8)) == Layout.NCHW  # the shape cannot tell
    assert infer_layout((2, 8, 8, 8), (8, 8), last=True) == Layout.NHWC
    assert infer_layout((2, 7, 14, 8), (112, 224), last=None) == Layout.NHWC
    assert infer_layout((2, 10), last=False) == Layout.NC
    assert infer_layout((2, 1, 2, 3, 4, 5), last=False) is None
    # copied layers keep the channels where their input had them, 4-D keeps the shape's reading
    assert follow((2, 32, 25), (1, 1600), (2, 16, 100), Layout.NCL) == Layout.NCL
    assert follow((2, 16, 2, 4, 4), None, (2, 8, 8, 8), Layout.NCHW) == Layout.NCDHW  # after a merged map
    assert follow((2, 2, 4, 4, 16), None, (2, 4, 8, 8, 8), Layout.NDHWC) == Layout.NDHWC
    assert follow((2, 7, 14, 8), (112, 224), (2, 8, 14, 28), Layout.NCHW) == Layout.NHWC


def test_signals_and_volumes_pool_over_positions_and_map_onto_the_frame_grid():
    signal, volume = torch.randn(2, 16, 100), torch.randn(2, 8, 4, 6, 10)
    assert channels(signal.shape, Layout.NCL) == 16 and channels(volume.shape, Layout.NCDHW) == 8
    assert channels(volume.movedim(1, -1).shape, Layout.NDHWC) == 8
    assert torch.equal(pool(signal, Layout.NCL), signal.mean(2))
    assert torch.equal(pool(volume, Layout.NCDHW), volume.mean((2, 3, 4)))
    assert torch.equal(pool(volume.movedim(1, -1), Layout.NDHWC), volume.movedim(1, -1).mean((1, 2, 3)))
    assert torch.equal(MapSpec(Layout.NCL)(signal), signal[:, :, None, :])
    assert torch.equal(MapSpec(Layout.NCDHW)(volume), volume.mean(2)), "a volume's map is its mean over depth"
    assert torch.allclose(MapSpec(Layout.NDHWC)(volume.movedim(1, -1).contiguous()), volume.mean(2))
    assert MapSpec(Layout.NCDHW).map_shape(volume.shape) == (8, 6, 10)
    for layout in (Layout.NCL, Layout.NCDHW, Layout.NDHWC):
        assert not MapSpec(layout).spatial
        assert not can_reconstruct(MapSpec(layout), (2, 3, 32, 32)), "no decoder for a signal or a volume"


def test_copied_layers_are_fed_signals_and_volumes_of_the_shape_they_expect():
    signal, volume = torch.randn(2, 16, 100), torch.randn(2, 8, 4, 8, 8)
    conv = adapter(signal.shape, Layout.NCL, (2, 32, 25), Layout.NCL)
    assert isinstance(conv[0], nn.Conv1d) and conv[0].stride == (4,) and conv(signal).shape == (2, 32, 25)
    last = adapter(volume.movedim(1, -1).shape, Layout.NDHWC, (2, 2, 4, 4, 16), Layout.NDHWC)
    assert last(volume.movedim(1, -1)).shape == (2, 2, 4, 4, 16)
    assert adapter(signal.shape, Layout.NCL, (2, 16, 30), Layout.NCL) is None, "100 positions do not stride to 30"
    for want, layout in (((2, 32, 30), Layout.NCL), ((2, 16, 2, 4, 4), Layout.NCDHW), ((2, 2, 4, 4, 16), Layout.NDHWC),
                         ((2, 30, 16), Layout.NLC), ((2, 16), Layout.NC)):
        assert Resample(MapSpec(Layout.NCDHW), volume.shape, want, layout)(volume).shape == want, layout


def test_the_graph_reads_through_elementwise_ops_and_says_nothing_where_its_ops_disagree():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lin = nn.Conv1d(8, 8, 1), nn.Linear(8, 8)

        def forward(self, x):
            return self.conv(torch.relu(x) * 2) + self.lin(torch.sigmoid(x) * 2)

    x = torch.randn(2, 8, 8)
    gm = trace(Both(), (x,))
    said = channels_last_in(gm, probe(gm, (x,)).graph, ["relu", "mul", "sigmoid", "mul_1", "x"])
    assert said == {"relu": False, "mul": False, "sigmoid": True, "mul_1": True, "x": None}, \
        "through the multiplies to the Conv1d and the Linear; the input reaches both at one distance: no word"


def test_a_conv1d_trunk_is_read_as_ncl_and_its_linear_heads_pool_over_time():
    model, x, y = Trunk1d(), torch.randn(4, 1, 1600), torch.randint(0, 5, (4,))
    plan, split = _plan(model, x)
    assert plan.num_blocks == 4
    assert [b.layout for b in split.boundaries] == [Layout.NCL] * 3
    assert all(b.shape[1] == 16 and b.shape[2] != 16 for b in split.boundaries)
    sm = splitfx.convert(model, x, plan=plan)
    for head, b in zip(sm.heads, split.boundaries, strict=True):
        assert isinstance(head, PoolLinear)
        assert (head.fc.in_features, head.fc.out_features) == (16, 5)
        features = torch.randn(b.shape)
        assert torch.equal(head(features), head.fc(features.mean(2)))
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, y)
    sm.train()
    losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.01))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("model, shape, classes", [(Trunk1d, (4, 1, 1600), 5), (Tiny3d, (2, 3, 4, 16, 16), 10)],
                         ids=["signal", "video"])
def test_dgl_and_infopro_build_heads_on_signals_and_volumes_without_reconstruction(model, shape, classes):
    model, x = model(), torch.randn(shape)
    y = torch.randint(0, classes, (len(x),))
    for recipe, kind in (("dgl", MLPSR), ("infopro", InfoProHead)):
        plan, _ = _plan(model, x, recipe=recipe)
        sm = splitfx.convert(model, x, plan=plan)
        assert all(isinstance(h, kind) for h in sm.heads), recipe
        if recipe == "infopro":
            assert all(h.decoder is None and set(h.weights) == {"task"} for h in sm.heads)
        sm.train()
        assert all(torch.isfinite(loss) for loss in sm.local_losses(x, y)), recipe


def test_a_3d_cnn_is_read_as_ncdhw_with_heads_on_its_channels():
    model, x, y = Tiny3d(), torch.randn(2, 3, 4, 16, 16), torch.randint(0, 10, (2,))
    plan, split = _plan(model, x)
    assert plan.num_blocks == 4
    assert [b.layout for b in split.boundaries] == [Layout.NCDHW] * 3
    sm = splitfx.convert(model, x, plan=plan)
    assert [h.fc.in_features for h in sm.heads] == [b.shape[1] for b in split.boundaries]
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, y)


def test_channels_last_tensors_follow_the_linears_where_the_shape_cannot_tell_or_has_no_guess():
    video = ChannelsLast(nn.Conv3d(3, 24, (2, 4, 4), (2, 4, 4)), 24)
    x, y = torch.randn(2, 3, 4, 16, 16), torch.randint(0, 10, (2,))
    # a cut inside the first MLP, which the partition's own blocks hold whole (docs/design.md, "Partition")
    plan, split = _plan(video, x, split_points=["blocks.0.act", "blocks.1", "blocks.2"])
    parts = [part for b in split.boundaries for part in b.parts]
    assert {layout for _, layout in parts} == {Layout.NDHWC}
    assert all(infer_layout(shape) is None for shape, _ in parts), "no shape-only guess for 5-D"
    sm = splitfx.convert(video, x, plan=plan)
    # each head pools every handed-over tensor (a cut inside an MLP hands over its hidden one too)
    assert [h.fc.in_features for h in sm.heads] == [sum(s[-1] for s, _ in b.parts) for b in split.boundaries]
    assert {s[-1] for s, _ in parts} == {24, 48}
    assert_eval_equal(sm, video, x)
    assert_isolated(sm, x, y)

    square = ChannelsLast(nn.Conv2d(3, 8, 1), 8)  # 8 channels on an 8×8 input: N, 8, 8, 8 either way
    x = torch.randn(2, 3, 8, 8)
    plan, split = _plan(square, x)
    assert all(b.shape == (2, 8, 8, 8) and infer_layout(b.shape, (8, 8)) == Layout.NCHW for b in split.boundaries)
    assert [b.layout for b in split.boundaries] == [Layout.NHWC] * 3


def test_r3d_18_plans_four_blocks_under_e2e_memory_and_trains():
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=10)
    x, y = torch.randn(2, 3, 8, 32, 32), torch.randint(0, 10, (2,))
    plan, split = _plan(model, x)
    assert plan.num_blocks == 4 and plan.local_peak_bytes < plan.e2e_saved_bytes
    assert {b.layout for b in split.boundaries} == {Layout.NCDHW}
    sm = splitfx.convert(model, x, plan=plan)
    assert [h.fc.in_features for h in sm.heads] == [b.shape[1] for b in split.boundaries]
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, y)
