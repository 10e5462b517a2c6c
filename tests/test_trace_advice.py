"""A trace that fails says where (file:line of the model's code) and what helps: leaf_modules= for a
submodule, a subclass or wrapper for the model's own forward, the whole list at the auto-leaf cap."""
import os
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

import splitfx
from splitfx.passes import trace as trace_pass
from splitfx.passes.trace_advice import HF_WRAPPER

README = Path(__file__).parents[1] / "README.md"


class TrainsOtherwise(nn.Module):
    """Scores with another head in training, in its own forward (as the InfoPro authors' ResNet does)."""

    def __init__(self):
        super().__init__()
        self.body, self.head, self.train_head = nn.Linear(6, 6), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        x = self.body(x)
        if self.training:
            return self.train_head(x)
        return self.head(x)


class DecidesOnData(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python in the model's own forward
            return self.body(x)
        return self.body(-x)


class Output(dict):
    """A Hugging Face style output object."""


class FakeHFModel(DecidesOnData):
    """Stands for a Hugging Face model (its class lives in ``transformers``)."""

    def forward(self, x):
        return Output(logits=super().forward(x))


FakeHFModel.__module__ = "transformers.models.fake.modeling_fake"


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class ManyGates(nn.Module):
    """17 untraceable submodules: one more than auto_leaf keeps whole."""

    def __init__(self, n: int = 17):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), Gate()) for _ in range(n)])

    def forward(self, x):
        return self.blocks(x)


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if text in line)


def _trace_error(model: nn.Module, x: torch.Tensor, **kwargs) -> str:
    with pytest.raises(splitfx.TraceError) as info:
        splitfx.plan(model, x, num_blocks=2, **kwargs)
    return str(info.value)


def test_a_top_level_branch_on_training_names_its_line_and_what_helps():
    message = _trace_error(TrainsOtherwise(), torch.randn(2, 6))
    assert "The forward of TrainsOtherwise itself branches on self.training" in message
    assert f"(`if self.training:` at {__file__}:{_line_of('        if self.training:')})" in message
    assert "leaf_modules= cannot help" in message and "subclass of TrainsOtherwise" in message


def test_a_top_level_failure_gets_its_source_line_and_no_leaf_modules_advice():
    message = _trace_error(DecidesOnData(), torch.randn(2, 6))
    assert "the top-level forward of DecidesOnData failed" in message and "(in train mode)" in message
    assert f"{__file__}:{_line_of('data-dependent Python in the model')}" in message
    assert "leaf_modules= cannot help" in message and "wrapper nn.Module" in message
    assert "Pass leaf_modules=" not in message


def test_a_top_level_failure_after_auto_leaves_names_them():
    class GatedThenDecides(DecidesOnData):
        def __init__(self):
            super().__init__()
            self.gate = Gate()

        def forward(self, x):
            return super().forward(self.gate(x))

    message = _trace_error(GatedThenDecides(), torch.randn(2, 6))
    assert "the top-level forward of GatedThenDecides failed" in message
    assert "(auto_leaf had kept these modules whole before: gate.)" in message


def test_a_hugging_face_model_gets_the_readme_wrapper():
    message = _trace_error(FakeHFModel(), torch.randn(2, 6))
    assert HF_WRAPPER in message and "Models outside timm" in message
    assert HF_WRAPPER in README.read_text(), "the README shows the wrapper the error gives"


def test_a_failure_inside_a_submodule_still_points_to_leaf_modules():
    class WithGate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.gate, self.b = nn.Linear(4, 4), Gate(), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.gate(self.a(x)))

    message = _trace_error(WithGate(), torch.randn(2, 4), auto_leaf=False)
    assert "Pass leaf_modules=['gate'] (or the class Gate)" in message
    assert f"{__file__}:{_line_of('return x * 2 if x.sum() > 0 else x')}" in message


def test_the_auto_leaf_cap_is_said_with_the_modules_and_the_leaf_modules_to_pass():
    x = torch.randn(2, 4)
    message = _trace_error(ManyGates(), x)
    assert "auto_leaf kept 16 modules of ManyGates whole (blocks.0.1, blocks.1.1, blocks.2.1, ...), its cap" in message
    assert "'blocks.16.1' (Gate) cannot be traced either" in message
    names = [f"blocks.{i}.1" for i in range(17)]
    assert f"leaf_modules=[Gate] (their classes) or leaf_modules={names!r}" in message
    plan = splitfx.plan(ManyGates(), x, num_blocks=2, num_classes=4, leaf_modules=[Gate])
    assert plan.num_blocks == 2 and not plan.auto_leaves


def test_the_source_frame_is_the_models_even_in_a_package_named_like_torch():
    torch_dir, own_dir = trace_pass._TORCH_DIR, trace_pass._OWN_DIR
    frames = traceback.StackSummary.from_list([
        (own_dir + "passes/trace.py", 150, "trace", None),
        (torch_dir.rstrip(os.sep) + "vision/models/optical_flow/raft.py", 377, "forward", None),
        (torch_dir + "fx/proxy.py", 705, "__iter__", None),
    ])
    assert trace_pass._model_frame(frames).lineno == 377


def test_raft_names_the_line_in_torchvision():
    from torchvision.models.optical_flow import raft_small

    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(splitfx.TraceError) as info:
        splitfx.plan(raft_small(), (x, x), num_blocks=2)
    assert "optical_flow/raft.py:" in str(info.value) and "leaf_modules= cannot help" in str(info.value)
