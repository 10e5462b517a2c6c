"""A model whose output differs by mode, as torchvision's Inception3 and GoogLeNet: in training it
also returns auxiliary logits from a branch only training computes, in eval the logits alone. One
graph serves both (``passes/modes.by_mode``): eval outputs equal the model's, the training output
carries the auxiliary logits into the loss, isolation holds and ONNX exports the eval output."""
from collections import namedtuple

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import splitfx

from checks import assert_eval_equal, assert_isolated

Outputs = namedtuple("Outputs", ["logits", "aux_logits"])


class AuxNet(nn.Module):
    """Four conv layers; after the second, an auxiliary classifier that only training runs."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(4))
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        aux = None
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i == 1 and self.training:
                aux = self.aux(x)
        logits = self.fc(x.mean((2, 3)))
        return Outputs(logits, aux) if self.training else logits


def _loss(out, y):
    return F.cross_entropy(out.logits, y) + 0.4 * F.cross_entropy(out.aux_logits, y)


def _converted():
    torch.manual_seed(0)
    model, x, y = AuxNet(), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    return model, x, y, splitfx.convert(model, x, 3, loss_fn=_loss)


def test_each_mode_returns_what_the_model_returns_and_the_loss_reads_the_auxiliary_logits():
    model, x, y, sm = _converted()
    assert_eval_equal(sm, model, x)
    sm.train()
    torch.manual_seed(1)
    out, reference = sm(x), model(x)
    assert type(out) is Outputs and all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))
    *_, last = (loss.detach() for loss in sm.local_losses(x, y))
    assert torch.equal(last, _loss(reference, y)), "the last block's loss reads the auxiliary logits too"
    reached = assert_isolated(sm, x, y)
    aux_block = next(k for k, got in enumerate(reached) if any(n.startswith("model.aux.") for n in got))
    if aux_block < sm.num_blocks - 1:  # the loss reads the auxiliary logits detached: the plan says so
        assert any(f"output['aux_logits'] in block {aux_block}" in note for note in sm.plan.notes), sm.plan.notes
    losses = sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_model_planned_in_eval_mode_reads_its_eval_output():
    """In eval mode the loss reads the eval output (the logits, computed in the last block): no early
    output to refuse, although training's auxiliary logits are computed earlier."""
    torch.manual_seed(0)
    plan = splitfx.plan(AuxNet().eval(), torch.randn(4, 3, 8, 8), 3)
    assert plan.num_blocks == 3 and not any("aux_logits" in note for note in plan.notes)


@torch.fx.wrap
def record(x):
    """A train-only call nothing reads (a statistic, a log)."""
    return x.mean()


class Recording(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(3))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
            if self.training:
                record(x)
        return self.fc(x.mean((2, 3)))


def test_a_train_only_call_nothing_reads_is_gated_not_refused():
    torch.manual_seed(0)
    model, x, y = Recording(), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    sm = splitfx.convert(model, x, 3)
    gated = [n for b in sm.blocks for n in b.graph.nodes if "train_only_record" in str(n.target)]
    assert len(gated) == 3
    assert_eval_equal(sm, model, x)
    assert_isolated(sm, x, y)


def test_onnx_exports_the_eval_output(tmp_path):
    model, x, _, sm = _converted()
    sm.eval()
    splitfx.export_onnx(sm, tmp_path / "m.onnx", x)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    [got] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), rtol=1e-5, atol=1e-5)
