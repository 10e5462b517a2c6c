"""Shape reads across cuts: sizes read early and used late are constants for one input size, baked
into the block that reads them and checked where they are computed (``passes/cost.py``,
``passes/emit.py``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitfx
from splitfx.api.conversion import segments
from splitfx.passes import cost
from splitfx.passes.node_cost import node_cost
from splitfx.passes.trace import trace

from checks import assert_eval_equal, assert_isolated


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: the sizes unpacked from ``x.size()`` shape every view."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim), CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A tiny nanoGPT: token and position embeddings, pre-LN causal blocks, final LN, LM head scoring
    the next token after the last one (``tied``: the head's weight is the token embedding's)."""

    def __init__(self, vocab: int = 50, dim: int = 32, depth: int = 4, heads: int = 4, context: int = 16,
                 tied: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.h = nn.ModuleList(GPTBlock(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        _, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x)[:, -1])


class Upsampled(nn.Module):
    """Reads the input's size at the top and resizes to it at the end (deeplabv3's forward), then
    scores the classes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(4)])
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        size = x.shape[-2:]
        y = F.interpolate(self.head(self.body(self.stem(x))), size=size, mode="bilinear", align_corners=False)
        return y.mean((2, 3))


def _chained(blocks, x):
    with torch.no_grad():
        for block in blocks:
            x = block(*x) if isinstance(x, tuple) else block(x)
    return x


def _costs(model: nn.Module, x: torch.Tensor):
    gm = trace(model, (x,))
    return gm, cost.probe(gm, (x,)).graph


def test_sizes_other_than_the_batch_picked_from_a_whole_shape_are_constants():
    """``B, T, C = x.size()``: B is the batch size (recomputed after a cut), T and C shape constants
    (baked), the whole size neither; ``x.shape[:2]`` holds the batch and stays no constant."""

    class Reads(nn.Module):
        def forward(self, x):
            B, T, C = x.size()
            head = x.shape[:2]
            return x.view(B, T * C) + head[1], x.shape[-2:]

    gm, G = _costs(Reads(), torch.randn(2, 5, 4))
    code = {n.name: n for n in gm.graph.nodes}
    whole, b, t, c = "size", "getitem", "getitem_1", "getitem_2"
    assert code[t].args == (code[whole], 1) and code[c].args == (code[whole], 2)
    assert node_cost(G, b).batch_int and not node_cost(G, b).static
    assert [node_cost(G, n).static for n in (t, c)] == [True, True]
    assert [node_cost(G, n).value for n in (t, c)] == [5, 4]
    assert not node_cost(G, whole).static and node_cost(G, whole).value == torch.Size([2, 5, 4])
    assert node_cost(G, "getitem_3").value == torch.Size([2, 5]) and not node_cost(G, "getitem_3").static
    last = node_cost(G, "getitem_5")
    assert last.static and last.value == torch.Size([5, 4]) and type(last.value) is torch.Size


def test_a_size_read_at_the_top_and_used_at_the_end_is_baked_into_the_last_block():
    model, x = Upsampled(), torch.randn(2, 3, 16, 16)
    plan = splitfx.plan(model, x, 4)
    assert plan.num_blocks == 4 and plan.legal_cuts >= 8
    blocks = segments(plan)
    assert "torch.Size((16, 16))" in blocks[-1].code and "expect_shapes" in blocks[-1].code
    assert "expect_constant" in blocks[0].code
    model.eval()
    assert torch.equal(_chained(blocks, x), model(x))
    sm = splitfx.convert(model, x, plan=plan)
    assert_eval_equal(sm, model, x)
    bigger = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sm(bigger), model(bigger)), "the model's own forward is never specialised"
    with pytest.raises(splitfx.SplitFXError, match=r"holds it as the constant torch.Size\(\[16, 16\]\)"):
        _chained(blocks, bigger)
    with pytest.raises(splitfx.SplitFXError, match="convert the model again"):
        blocks[-1](torch.randn(2, 8, 16, 16))
    assert_isolated(sm, x, torch.tensor([0, 3]))


@pytest.mark.parametrize("split_points", [None, ["h.0", "h.1.attn.qkv", "h.2.attn"]])
def test_a_nanogpt_splits_across_its_unpacked_sizes(split_points):
    """Cuts between the blocks and, with split points, inside an attention that has unpacked
    ``B, T, C`` before the cut and reads them after it."""
    torch.manual_seed(0)
    model, idx, y = GPT(), torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2,))
    sm = splitfx.convert(model, idx, 4, split_points=split_points)
    assert sm.num_blocks == 4
    if split_points:
        assert [b.modules[-1] for b in sm.plan.blocks[:3]] == ["h.0.mlp.2", "h.1.attn.qkv", "h.2.attn.proj"]
        assert "expect_shapes" in sm.blocks[2].code and "size(0)" in sm.blocks[2].code
    assert_eval_equal(sm, model, idx)
    losses = sm.train_step(idx, y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def _deeplab_loss(out, y):
    return F.cross_entropy(out["out"], y)


@pytest.fixture(scope="module")
def deeplab():
    """DeepLabV3 (MobileNetV3-Large) at 64², planned at K=4 by memory: ``x.shape[-2:]`` at the top of
    its forward and in ASPP pooling is read by the final ``F.interpolate``. Its dict output trains with
    a loss_fn; ``dgl``'s heads read the maps at the cuts."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    plan = splitfx.plan(model, x, 4, recipe="dgl", loss_fn=_deeplab_loss, example_target=y)
    return model, x, y, plan


def _assert_segments_equal(plan, model, x):
    blocks = segments(plan)
    assert "torch.Size((64, 64))" in blocks[-1].code and "expect_shapes" in blocks[-1].code
    model.eval()
    with torch.no_grad():
        assert torch.equal(_chained(blocks, x)["out"], model(x)["out"])


def test_deeplabv3_splits_by_memory_across_its_input_size_read(deeplab):
    model, x, _, plan = deeplab
    assert plan.num_blocks == 4 and plan.legal_cuts > 150
    _assert_segments_equal(plan, model, x)


def test_deeplabv3_splits_at_split_points(deeplab):
    model, x, y, _ = deeplab
    plan = splitfx.plan(model, x, split_points=["backbone.4", "backbone.10", "backbone.16"], recipe="dgl",
                        loss_fn=_deeplab_loss, example_target=y)
    assert [b.modules[-1] for b in plan.blocks[:3]] == ["backbone.4.block.3.1", "backbone.10",
                                                         "backbone.16.2"]
    _assert_segments_equal(plan, model, x)


def test_deeplabv3_trains_one_finite_step(deeplab):
    model, x, y, plan = deeplab
    sm = splitfx.convert(model, x, plan=plan, loss_fn=_deeplab_loss)
    losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.01))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_a_whole_shape_live_across_places_is_named_with_what_to_read_instead():
    """The whole ``x.size()`` holds the batch: no cut hands it over, and the error says how to read
    it instead; places inside an unpacking (``B, T, C = x.size()``) are not blamed on it."""

    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            size = x.size()
            B, C = x.size()
            return self.c(self.b(self.a(x))).view(size) * C + B

    with pytest.raises(splitfx.PlanError) as info:
        splitfx.plan(Late(), torch.randn(2, 4), 4, num_classes=4)
    message = str(info.value)
    assert "`x.size()` (node size) in Late's forward is live until `c.view(size)` (node view)" in message
    assert "unpack it where it is read, `B, C, H, W = x.shape`" in message
    assert "node size_1" not in message
