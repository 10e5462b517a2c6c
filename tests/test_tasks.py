"""Heads told the task: dense maps, images, regression, token sequences and structured outputs, each
on a tiny model; classification stays what it was."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

import splitfx
from splitfx import models as task_models
from splitfx.base.errors import ArgumentError
from splitfx.base.jsonl import append_record
from splitfx.planner.driver import Planner
from splitfx.recipes import registry
from splitfx.recipes.heads import Scored
from splitfx.recipes.predict import DenseHead, ImageHead, Squeezed, Structured, TokenHead
from splitfx.recipes.task import TaskKind, TokenCrossEntropy, scoring

from checks import assert_interleaved_equals_summed, assert_isolated, measure


def conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class Seg(nn.Module):
    """A tiny segmentation net: stride-2 stem, four conv layers, 1×1 classifier, bilinear back to 32²."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.Sequential(*[conv(8, 8) for _ in range(4)])
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.layers(self.stem(x))), size=(32, 32), mode="bilinear",
                             align_corners=False)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x):
        return x + 0.1 * self.body(x)


class EDSR(nn.Module):
    """EDSR's shape at ×2: head conv, residual blocks, body conv + skip, conv + PixelShuffle tail."""

    def __init__(self, c: int = 16, blocks: int = 4):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(c) for _ in range(blocks)], nn.Conv2d(c, c, 3, 1, 1))
        self.tail = nn.Sequential(nn.Conv2d(c, 3 * 4, 3, 1, 1), nn.PixelShuffle(2))

    def forward(self, x):
        x = self.head(x)
        return self.tail(self.body(x) + x)


class Tabular(nn.Module):
    """An MLP regressor: 10 features → one value per row."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(10 if i == 0 else 32, 32), nn.ReLU()) for i in range(4)])
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(self.layers(x)).squeeze(-1)


class CausalBlock(nn.Module):
    def __init__(self, d: int, t: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.register_buffer("mask", torch.full((t, t), float("-inf")).triu(1))
        self.scale = d ** -0.5

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1) * self.scale + self.mask).softmax(-1)
        x = x + self.proj(att @ v)
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """A character model: token + position embeddings, four causal blocks, per-token scores."""

    def __init__(self, vocab: int = 30, d: int = 16, t: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, t, d) * 0.02)
        self.blocks = nn.Sequential(*[CausalBlock(d, t) for _ in range(4)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.lm_head(self.norm(self.blocks(self.embed(tokens) + self.pos)))


class TwoMaps(Seg):
    """Segmentation and an edge map, as a dict."""

    def __init__(self):
        super().__init__()
        self.edges = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        y = self.layers(self.stem(x))
        return {"out": self.classifier(y), "edges": self.edges(y)}


def _tree_equal(a, b) -> bool:
    """Equal leaves in equal structures; an OrderedDict compares as the dict fx's graph returns for it."""
    a, b = (dict(v) if isinstance(v, OrderedDict) else v for v in (a, b))
    (la, sa), (lb, sb) = tree_flatten(a), tree_flatten(b)
    return sa == sb and all(torch.equal(u, v) for u, v in zip(la, lb, strict=True))


def _check(sm: splitfx.SplitModule, model: nn.Module, x, y) -> None:
    """Eval parity, observed isolation, interleaved == summed, a finite step, and the prediction."""
    sm.eval()
    with torch.no_grad():
        assert _tree_equal(sm(x), model(x))
    assert_isolated(sm, x, y)
    assert_interleaved_equals_summed(sm, x, y)
    e2e, blocks = measure(sm, x, y, sm.loss_fn)
    assert e2e == sm.plan.e2e_saved_bytes
    assert blocks == [b.saved_bytes for b in sm.plan.blocks]
    losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.01))
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("recipe", ["linear", "dgl", "infopro"])
def test_dense_heads_predict_the_output_map(recipe):
    torch.manual_seed(0)
    model, x, y = Seg(), torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))
    sm = splitfx.convert(model, x, 4, recipe=recipe, example_target=y)
    assert isinstance(sm.loss_fn, nn.CrossEntropyLoss)
    for k, head in enumerate(sm.heads):
        dense = [m for m in head.modules() if isinstance(m, DenseHead)]
        assert len(dense) == ("task" in getattr(head, "weights", {"task": 1})), k  # InfoPro's cut 0: λ2 = 0
    with torch.no_grad():
        assert sm.heads[-1](sm.blocks[1](sm.blocks[0](x))).shape == (4, 5, 32, 32)
    _check(sm, model, x, y)


def test_image_heads_shuffle_to_the_output_size():
    torch.manual_seed(0)
    model, x = EDSR(), torch.randn(2, 3, 16, 16)
    y = torch.randn(2, 3, 32, 32)
    sm = splitfx.convert(model, x, 4, example_target=y)
    assert isinstance(sm.loss_fn, nn.L1Loss)  # EDSR's and Local-SR's loss
    for head in sm.heads:
        assert isinstance(head, ImageHead)
        assert isinstance(head.net[1], nn.PixelShuffle) and head.net[1].upscale_factor == 2
    _check(sm, model, x, y)


def test_regression_heads_predict_one_value_per_row():
    torch.manual_seed(0)
    model, x, y = Tabular(), torch.randn(16, 10), torch.randn(16)
    sm = splitfx.convert(model, x, 4)  # the target defaults to the output's shape: [B] floats
    assert isinstance(sm.loss_fn, nn.MSELoss)
    for k, head in enumerate(sm.heads):
        assert isinstance(head, Squeezed) and head.inner.fc.out_features == 1, k
    _check(sm, model, x, y)


def test_token_heads_keep_causality():
    torch.manual_seed(0)
    model = TinyLM()
    x, y = torch.randint(0, 30, (3, 12)), torch.randint(0, 30, (3, 12))
    sm = splitfx.convert(model, x, 4, example_target=y)
    assert isinstance(sm.loss_fn, TokenCrossEntropy)
    assert all(isinstance(h, TokenHead) and h.fc.out_features == 30 for h in sm.heads)
    _check(sm, model, x, y)
    sm.eval()
    changed = x.clone()
    changed[:, 7] = (x[:, 7] + 1) % 30
    with torch.no_grad():
        before, after = sm.blocks[0](x), sm.blocks[0](changed)
        a, b = sm.heads[0](before), sm.heads[0](after)
    assert torch.equal(a[:, :7], b[:, :7]), "an aux head saw a later token"
    assert not torch.equal(a[:, 7:], b[:, 7:])


TASK_MODELS = {  # a model, its input and its target, per task family
    "tokens": lambda: (TinyLM(), torch.randint(0, 30, (3, 12)), torch.randint(0, 30, (3, 12))),
    "dense": lambda: (Seg(), torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))),
    "image": lambda: (EDSR(), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 32, 32)),
    "regression": lambda: (Tabular(), torch.randn(16, 10), torch.randn(16)),
}


# The recipes that cannot serve a task family, and refuse it at plan time.
REFUSED = {("ffr", task) for task in ("tokens", "dense", "image")} | {("infopro_supcon", task) for task in TASK_MODELS}


@pytest.mark.parametrize("task", TASK_MODELS)
@pytest.mark.parametrize("recipe", [r for r in registry.list_recipes() if r != "e2e"])
def test_every_recipe_trains_every_task_or_refuses_with_the_reason(task, recipe):
    """The task's loss reaches every head, cascades' leap networks included (their task head sits
    inside the copied layers), or the recipe refuses at plan time, naming the task."""
    torch.manual_seed(0)
    model, x, y = TASK_MODELS[task]()
    if (recipe, task) in REFUSED:
        with pytest.raises(splitfx.PlanError, match=task if recipe != "ffr" else f"an? {task} output"):
            splitfx.convert(model, x, 4, recipe=recipe, example_target=y)
        return
    sm = splitfx.convert(model, x, 4, recipe=recipe, example_target=y)
    for scored in (m for m in sm.heads.modules() if isinstance(m, Scored)):
        assert scoring(scored.classifier) is not F.cross_entropy, "a head scored with class cross-entropy"
    assert_isolated(sm, x, y)
    losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.01))
    assert len(losses) == sm.num_blocks and all(torch.isfinite(torch.tensor(losses)))


def test_structured_outputs_get_one_head_per_leaf():
    torch.manual_seed(0)
    model, x = TwoMaps(), torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 5, (4, 16, 16))

    def loss_fn(out, target):
        return F.cross_entropy(out["out"], target) + out["edges"].pow(2).mean()

    sm = splitfx.convert(model, x, 3, loss_fn=loss_fn, example_target=y)
    with torch.no_grad():
        predicted = sm.heads[0](sm.blocks[0](x))
    assert isinstance(sm.heads[0], Structured)
    assert {k: tuple(v.shape) for k, v in predicted.items()} == {"out": (4, 5, 16, 16), "edges": (4, 1, 16, 16)}
    _check(sm, model, x, y)


def test_the_probe_costs_the_real_target():
    model, x = Seg(), torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 5, (2, 32, 32))
    planner = Planner(model, (x,), method="memory", recipe=splitfx.recipe("linear"), num_classes=None,
                      leaf_modules=(), replace=None, replace_mode="tensor", max_cut_tensors=16, tolerance=0.05,
                      example_target=y)
    assert planner.task.kind == TaskKind.DENSE
    assert (tuple(planner.aux.target.shape), planner.aux.target.dtype) == ((2, 32, 32), torch.long)


def test_classification_heads_are_unchanged_and_score_with_the_users_loss():
    model, x, y = Tabular(), torch.randn(8, 10), torch.randint(0, 1, (8,))
    classifier = nn.Sequential(model.layers, nn.Linear(32, 4))
    torch.manual_seed(0)
    plain = splitfx.convert(classifier, x, 3)
    torch.manual_seed(0)
    told = splitfx.convert(classifier, x, 3, example_target=y)
    assert all(_tree_equal(a.state_dict(), b.state_dict()) for a, b in zip(plain.heads, told.heads, strict=True))
    assert not [m for h in told.heads for m in h.modules() if "criterion" in m.__dict__]

    def smoothed(out, target):
        return F.cross_entropy(out, target, label_smoothing=0.2)

    sm = splitfx.convert(classifier, x, 3, loss_fn=smoothed)
    first = next(iter(sm.local_losses(x, y)))
    assert torch.equal(first, smoothed(sm.heads[0](sm.blocks[0](x)), y))


def test_what_no_head_can_do_says_what_to_pass():
    with pytest.raises(splitfx.PlanError, match="loss_fn=f"):
        splitfx.plan(TwoMaps(), torch.randn(2, 3, 32, 32), 3)
    with pytest.raises(splitfx.ArgumentError, match="example_target has shape"):
        splitfx.plan(Seg(), torch.randn(2, 3, 32, 32), 3, example_target=torch.zeros(3, 32, 32))


def test_the_documented_task_recipe_runs_as_written(monkeypatch):
    from test_extending import DESIGN, _example

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    text = DESIGN.read_text()
    code = text[text.index("## A recipe for a new task"):].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) < 40, "the design doc promises a recipe for a new task in under 40 lines"
    scope = _example("## A recipe for a new task")
    sm, x, depth = scope["sm"], scope["x"], scope["depth"]
    assert all(isinstance(h, scope["Probe"]) and h.size == (32, 32) for h in sm.heads)
    assert all(torch.isfinite(torch.tensor(scope["losses"])))
    assert_isolated(sm, x, depth)


def test_an_fpn_whose_loss_reads_every_level():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    # BatchNorm, not the default FrozenBatchNorm2d: the probe does not count the per-channel scale
    # that FrozenBatchNorm2d computes from its buffers and mul saves (19 KB here), so the exact
    # prediction check below would fail for a reason unrelated to the heads.
    model = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d)
    x, y = torch.randn(2, 3, 64, 64), torch.zeros(2)

    def loss_fn(levels, target):
        return sum(level.pow(2).mean() for level in levels.values()) + 0 * target.sum()

    sm = splitfx.convert(model, x, 4, loss_fn=loss_fn, example_target=y)
    levels = model(x)
    with torch.no_grad():
        predicted = sm.heads[0](sm.blocks[0](x))
    assert {k: v.shape for k, v in predicted.items()} == {k: v.shape for k, v in levels.items()}
    _check(sm, model, x, y)
    assert sm.plan.local_peak_bytes < sm.plan.e2e_saved_bytes


def test_a_tied_embedding_gpt_trains_per_token_at_four_blocks():
    from test_shape_reads import GPT

    class Sequence(GPT):
        """The nanoGPT scoring every position, its LM head tied to the token embedding."""

        def forward(self, idx):
            _, t = idx.size()
            x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    torch.manual_seed(0)
    model = Sequence(tied=True)
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    sm = splitfx.convert(model, x, 4, tied="detach", example_target=y)
    assert sm.num_blocks == 4 and isinstance(sm.loss_fn, TokenCrossEntropy)
    assert all(isinstance(h, TokenHead) for h in sm.heads)
    _check(sm, model, x, y)
    assert sm.plan.local_peak_bytes < sm.plan.e2e_saved_bytes


@pytest.mark.parametrize("build, x, y", [
    (task_models.SegNet, torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4, 32, 32))),
    (task_models.EDSR, torch.randn(2, 1, 16, 16), torch.rand(2, 1, 32, 32)),
], ids=["segmentation", "super-resolution"])
def test_glcan_heads_end_in_a_copy_of_the_models_own_task_head(build, x, y):
    torch.manual_seed(0)
    model = build()
    tail = model.classifier if isinstance(model, task_models.SegNet) else model.tail
    sm = splitfx.convert(model, x, 4, recipe="glcan", example_target=y)
    for head in sm.heads:
        copies = [m for m in head.tail.modules() if isinstance(m, nn.Conv2d) and m.weight.shape == tail.weight.shape]
        assert len(copies) == 1 and copies[0].weight is not tail.weight
        assert torch.equal(copies[0].weight, tail.weight)  # copied when the head was built
    _check(sm, model, x, y)


class EarlyAux(nn.Module):
    """Logits and auxiliary logits computed after the first layer, as Inception's aux classifier."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
        self.aux, self.out = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = self.layers[0](x)
        aux = self.aux(h)
        return self.out(self.layers[3](self.layers[2](self.layers[1](h)))), aux


def test_outputs_computed_before_the_last_block_are_named():
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))

    def both(out, target):
        return F.cross_entropy(out[0], target) + 0.4 * F.cross_entropy(out[1], target)

    plan = splitfx.plan(EarlyAux(), x, 3, split_points=["layers.0", "layers.2"], loss_fn=both, example_target=y)
    assert any("reads output[1] in block 1 detached" in note for note in plan.notes)
    with pytest.raises(splitfx.PlanError, match=r"reads no output its last block computes .*output\[1\] in block 1"):
        splitfx.plan(EarlyAux(), x, 3, split_points=["layers.0", "layers.2"], loss_fn=lambda out, t: out[1].sum(),
                     example_target=y)


def test_glcan_refuses_classes_forced_on_an_output_it_cannot_score():
    x = torch.randint(0, 30, (2, 12))
    with pytest.raises(splitfx.PlanError, match="glcan's global branch predicts the model's own output"):
        splitfx.plan(TinyLM(), x, 3, recipe="glcan", num_classes=5)
    plan = splitfx.plan(TinyLM(), x, 3, recipe="glcan", num_classes=5, loss_fn=lambda out, y: out.mean())
    assert plan.num_blocks == 3


def test_the_tasks_sweep_pairs_every_recipe_and_k_with_e2e_by_seed_and_resumes(tmp_path, monkeypatch):
    from splitfx.programs import tasks as programs_tasks

    out = str(tmp_path / "tasks.jsonl")
    lines = programs_tasks.sweep(["friedman"], [4, 4], ["linear", "dgl"], 2, 1, out, progress=lambda _: None)
    assert sorted((r["recipe"], r["blocks"], r["seed"]) for r in lines) == sorted(
        [("e2e", 1, s) for s in (0, 1)] + [(r, 4, s) for r in ("linear", "dgl") for s in (0, 1)]), "one run each"
    monkeypatch.setattr(programs_tasks, "run", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    again = programs_tasks.sweep(["friedman"], [4], ["linear", "dgl"], 2, 1, out, progress=lambda _: None)
    assert [r["value"] for r in again] == [r["value"] for r in lines]
    table = programs_tasks.table(again)
    value = {(r["recipe"], r["blocks"], r["seed"]): r["value"] for r in lines}
    ratio = (value["dgl", 4, 0] / value["e2e", 1, 0] + value["dgl", 4, 1] / value["e2e", 1, 1]) / 2
    row = next(line for line in table.splitlines() if "K=4, dgl" in line)
    assert f"| {ratio:.3f} ± " in row and row.endswith("| 2 |"), row
    assert len([line for line in table.splitlines() if line.startswith("| friedman")]) == 2
    alone = programs_tasks.table([r for r in again if r["recipe"] == "dgl"])
    assert "no E2E run of the same seed" in next(line for line in alone.splitlines() if "K=4, dgl" in line)
    # A line of other code: the table refuses the mix, and a resumed sweep refuses before training anything.
    append_record(out, {**lines[0], "seed": 5, "code": "0ld" * 20})
    with pytest.raises(ArgumentError, match="2 versions of the splitfx sources"):
        programs_tasks.table(programs_tasks.done(out).values())
    with pytest.raises(ArgumentError, match="2 versions of the splitfx sources"):
        programs_tasks.sweep(["friedman"], [4], ["linear"], 7, 1, out, progress=lambda _: None)
