"""Models beyond image classification at K=4: eval parity (the blocks run one after another, and the
converted module's forward, equal the model), isolation observed in the first step, a finite first
step and the memory ratio, printed and written to docs/task-models.md with commit, command and machine.

    python docs/task_models.py            # a few minutes on 2 cores
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import splitfx
from splitfx.base.files import write_text
from splitfx.base.provenance import provenance
from splitfx.base.tensors import equal_outputs
from splitfx.models import EDSR, MLPRegressor
from splitfx.runtime.isolation import GradientReach

OUT = Path(__file__).with_name("task-models.md")


class Signal1d(nn.Module):
    """A Conv1d trunk on raw signals [B, 1, 1600]: four strided conv layers, pool, 5 classes."""

    def __init__(self):
        super().__init__()
        layers, c = [], 1
        for width in (16, 32, 32, 64):
            layers.append(nn.Sequential(nn.Conv1d(c, width, 9, 4, 4), nn.BatchNorm1d(width), nn.ReLU()))
            c = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        return self.fc(self.layers(x).mean(-1))


class TiedGPT(nn.Module):
    """A character GPT whose LM head is its token embedding, scoring every position."""

    def __init__(self, vocab: int = 50, width: int = 32, context: int = 16):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.h = nn.ModuleList([nn.TransformerEncoderLayer(**_config(layer)) for _ in range(4)])
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)
        self.register_buffer("positions", torch.arange(context), persistent=False)
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(self.positions)
        for block in self.h:
            x = block(x, src_mask=self.mask, is_causal=True)
        return self.lm_head(self.ln_f(x))


def _config(layer: nn.TransformerEncoderLayer) -> dict:
    return dict(d_model=layer.linear1.in_features, nhead=layer.self_attn.num_heads,
                dim_feedforward=layer.linear1.out_features, dropout=0.0, batch_first=True, norm_first=True)


def _fpn() -> nn.Module:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d)


def _segmentation(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import segmentation

        return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)

    return build


def _video() -> nn.Module:
    from torchvision.models.video import r3d_18

    return r3d_18(num_classes=10)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, aux_logits=True, init_weights=False, num_classes=10)

    return build


def _inception_loss(out, target):
    """torchvision's reference training: the logits' loss plus 0.4 × the auxiliary logits'."""
    return F.cross_entropy(out.logits, target) + 0.4 * F.cross_entropy(out.aux_logits, target)


def _googlenet_loss(out, target):
    """GoogLeNet's: the logits' loss plus 0.3 × each auxiliary classifier's."""
    aux = F.cross_entropy(out.aux_logits1, target) + F.cross_entropy(out.aux_logits2, target)
    return F.cross_entropy(out.logits, target) + 0.3 * aux


def _seg_loss(out, target):
    return F.cross_entropy(out["out"], target)


def _levels_loss(levels, target):
    return sum(level.pow(2).mean() for level in levels.values()) + 0 * target.sum()


# name, task, model, input, target, convert keywords
CASES = [
    ("torchvision deeplabv3_mobilenet_v3_large", "segmentation", _segmentation("deeplabv3_mobilenet_v3_large"),
     torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64)), dict(loss_fn=_seg_loss)),
    ("torchvision fcn_resnet50", "segmentation", _segmentation("fcn_resnet50"),
     torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64)), dict(loss_fn=_seg_loss)),
    ("EDSR-style ×2 (splitfx.models:EDSR)", "super-resolution", EDSR,
     torch.randn(2, 1, 16, 16), torch.rand(2, 1, 32, 32), {}),
    ("torchvision r3d_18", "video classification", _video, torch.randn(2, 3, 8, 32, 32), torch.randint(0, 10, (2,)),
     {}),
    ("1-D CNN on [B, 1, 1600]", "signal classification", Signal1d, torch.randn(4, 1, 1600),
     torch.randint(0, 5, (4,)), {}),
    ("MLP regressor (splitfx.models:MLPRegressor)", "regression", MLPRegressor, torch.randn(16, 10),
     torch.randn(16), {}),
    ("tied-embedding GPT, per-token loss", "language modelling", TiedGPT, torch.randint(0, 50, (2, 16)),
     torch.randint(0, 50, (2, 16)), dict(tied="detach")),
    ("torchvision resnet18 FPN, loss over every level", "feature pyramid", _fpn, torch.randn(2, 3, 64, 64),
     torch.zeros(2), dict(loss_fn=_levels_loss)),
    ("torchvision inception_v3, auxiliary logits in the loss", "classification, two outputs in training",
     _torchvision("inception_v3"), torch.randn(2, 3, 299, 299), torch.randint(0, 10, (2,)),
     dict(loss_fn=_inception_loss)),
    ("torchvision googlenet, auxiliary logits in the loss", "classification, three outputs in training",
     _torchvision("googlenet"), torch.randn(2, 3, 224, 224), torch.randint(0, 10, (2,)),
     dict(loss_fn=_googlenet_loss)),
]


def check(model: nn.Module, x, y, keywords: dict) -> dict:
    torch.manual_seed(0)
    sm = splitfx.convert(model, x, 4, example_target=y, **keywords)
    sm.eval()
    with torch.no_grad():
        reference = model(x)
        equal = equal_outputs(sm.chained(x), reference) and equal_outputs(sm(x), reference)
    sm.train()
    with GradientReach(sm) as reach:
        losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.01), after_loss=reach.after_loss)
    plan = sm.plan
    return {"blocks": sm.num_blocks, "equal": equal, "isolated": not reach.violations(),
            "finite": all(map(torch.isfinite, map(torch.tensor, losses))),
            "saved": plan.local_peak_bytes / plan.e2e_saved_bytes, "step": plan.step_peak_bytes /
            plan.e2e_step_peak_bytes}


def main() -> int:
    torch.set_num_threads(2)
    rows = ["| model | task | input | K | eval equal | isolated | first step finite | saved activations ÷ E2E | "
            "step peak ÷ E2E |", "|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    for name, task, build, x, y, keywords in CASES:
        torch.manual_seed(0)
        start = time.perf_counter()
        r = check(build(), x, y, keywords)
        failed += not (r["equal"] and r["isolated"] and r["finite"] and r["saved"] < 1)
        mark = {True: "yes", False: "**no**"}
        rows.append(f"| {name} | {task} | {'×'.join(map(str, x.shape))} | {r['blocks']} | {mark[r['equal']]} | "
                    f"{mark[r['isolated']]} | {mark[r['finite']]} | {r['saved']:.2f} | {r['step']:.2f} |")
        print(rows[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    p = provenance()
    text = (f"# Models beyond image classification at K = 4\n\nMade by `{p['command']}` at commit {p['commit']} on "
            f"{p['machine']}. Recipe `linear` (each head the one the output calls for), random weights; "
            "`saved activations` is the plan's predicted peak of saved activations (exact on CPU), `step peak` "
            "its whole training step (weights, gradients, AdamW state, activations, transients).\n\n"
            "*eval equal*: the blocks run one after another and the converted module both `torch.equal` the model "
            "in eval mode; *isolated*: in the first step each loss reached exactly its blocks' and head's "
            "parameters (`GradientReach`).\n\n" + "\n".join(rows) + "\n")
    write_text(OUT, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
