"""Fuzz: hypothesis builds small random CNN- and ViT-like models (residual adds, concatenations,
gated branches, in-place ops, reshapes to tokens and back, attention, a class token, one module
called twice or again further on). Every one either converts with exact eval parity and isolated
gradients, or raises a SplitFXError: never anything else."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import splitfx

from checks import assert_eval_equal, assert_isolated

WIDTH, SIZE, CLASSES = 4, 8, 3
CNN_OPS = ("conv", "residual", "inplace_residual", "concat", "gate", "tokens", "twice", "pool", "reuse")
VIT_OPS = ("mlp", "attention", "inplace_mlp", "linear_twice", "reuse", "concat_tokens")


def _conv(c_in: int = WIDTH, c_out: int = WIDTH) -> nn.Module:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


def _layer(op: str) -> nn.Module:
    """The modules an op owns (``reuse`` owns none: it calls an earlier layer again)."""
    c = WIDTH
    return {
        "conv": lambda: nn.Sequential(_conv(), nn.ReLU(inplace=True)),
        "residual": lambda: nn.Sequential(_conv(), nn.BatchNorm2d(c), nn.ReLU(inplace=True), _conv()),
        "inplace_residual": lambda: nn.Sequential(_conv(), nn.BatchNorm2d(c)),
        "concat": lambda: nn.ModuleList([_conv(), nn.Conv2d(c, c, 1), nn.Conv2d(2 * c, c, 1)]),
        "gate": lambda: nn.ModuleList([_conv(), nn.Conv2d(c, c, 1)]),
        "tokens": lambda: nn.LayerNorm(c),
        "twice": lambda: nn.Conv2d(c, c, 1),
        "pool": lambda: nn.Identity(),
        "reuse": lambda: nn.Identity(),
        "mlp": lambda: nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)),
        "attention": lambda: nn.ModuleList([nn.LayerNorm(c), nn.Linear(c, 3 * c), nn.Linear(c, c)]),
        "inplace_mlp": lambda: nn.Linear(c, c),
        "linear_twice": lambda: nn.Linear(c, c),
        "concat_tokens": lambda: nn.Linear(2 * c, c),
    }[op]()


def _apply(op: str, layer: nn.Module, x: torch.Tensor, earlier: nn.Module | None) -> torch.Tensor:
    if op == "pool":
        return F.avg_pool2d(x, 2)
    if op in ("conv", "reuse"):
        return (earlier or layer)(x)
    if op == "residual":
        return x + layer(x)
    if op == "inplace_residual":
        out = layer(x)
        out += x
        return F.relu(out, inplace=True)
    if op == "concat":
        return layer[2](torch.cat([layer[0](x), layer[1](x)], dim=1))
    if op == "gate":
        return layer[0](x) * torch.sigmoid(layer[1](x))
    if op == "tokens":
        b, c, h, w = x.shape
        return layer(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
    if op in ("twice", "linear_twice"):
        return layer(torch.relu(layer(x)))
    if op == "mlp":
        return x + layer(x)
    if op == "attention":
        norm, qkv, proj = layer
        q, k, v = qkv(norm(x)).chunk(3, dim=-1)
        return x + proj(torch.softmax(q @ k.transpose(-2, -1) / WIDTH**0.5, dim=-1) @ v)
    if op == "inplace_mlp":
        y = layer(x)
        y.relu_()
        return x + y
    if op == "concat_tokens":
        return layer(torch.cat([x, x.flip(1)], dim=-1))
    raise AssertionError(op)


class Generated(nn.Module):
    """A stem, the drawn ops in order, a pooled linear classifier."""

    def __init__(self, vit: bool, ops: tuple[str, ...], cls_token: bool):
        super().__init__()
        self.vit, self.ops = vit, ops
        self.stem = nn.Conv2d(3, WIDTH, 2, stride=2) if vit else _conv(3, WIDTH)
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH)) if vit and cls_token else None
        self.layers = nn.ModuleList(_layer(op) for op in ops)
        # Pool while the map is larger than 1×1; decided here: the traced forward sees no sizes.
        side, self.pooled = SIZE, []
        for op in ops:
            self.pooled.append(op == "pool" and side > 1)
            side //= 2 if self.pooled[-1] else 1
        self.head = nn.Linear(WIDTH, CLASSES)

    def _earlier(self, i: int) -> nn.Module | None:
        """The latest earlier layer a ``reuse`` at ``i`` can call again (same shapes in, same out)."""
        kinds = ("mlp", "linear_twice") if self.vit else ("conv", "twice")
        return next((self.layers[j] for j in range(i - 1, -1, -1) if self.ops[j] in kinds), None)

    def forward(self, x):
        x = self.stem(x)
        if self.vit:
            x = x.flatten(2).transpose(1, 2)
            if self.cls is not None:
                x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for i, (op, layer) in enumerate(zip(self.ops, self.layers, strict=True)):
            if op != "pool" or self.pooled[i]:
                x = _apply(op, layer, x, self._earlier(i) if op == "reuse" else None)
        if self.vit:
            return self.head(x[:, 0] if self.cls is not None else x.mean(1))
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Kernels this small run ~100× faster on one thread than on two that other processes contend for."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def models(draw):
    vit = draw(st.booleans())
    ops = tuple(draw(st.lists(st.sampled_from(VIT_OPS if vit else CNN_OPS), min_size=1, max_size=5)))
    cls_token = vit and draw(st.booleans())
    return vit, ops, cls_token


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=models(), blocks=st.integers(2, 4), recipe=st.sampled_from(["linear", "dgl"]), seed=st.integers(0, 3))
def test_random_models_convert_exactly_or_refuse_clearly(spec, blocks, recipe, seed):
    torch.manual_seed(seed)
    model = Generated(*spec)
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.randint(0, CLASSES, (2,))
    try:
        sm = splitfx.convert(model, x, blocks, recipe=recipe)
    except splitfx.SplitFXError:
        return
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, y)


def test_the_generator_reaches_every_op_and_both_outcomes():
    """The fuzz test means something only if the generator builds what it claims and some of it splits."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    converted = 0
    for vit, ops in ((False, CNN_OPS), (True, VIT_OPS)):
        model = Generated(vit, ops, cls_token=vit)
        assert model(x).shape == (2, CLASSES)
        sm = splitfx.convert(model, x, 3)
        converted += sm.num_blocks == 3
        assert_eval_equal(sm, model, x)
    assert converted == 2
