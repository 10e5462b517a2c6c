"""ONNX export: parity with onnxruntime, the user's model untouched, checkpoints export directly."""
import os

import onnx
import pytest
import timm
import torch

import splitfx
from splitfx.cli import main


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vit_tiny_patch16_224", 224), ("convnext_atto", 64)])
def test_export_parity_and_model_left_as_it_was(tmp_path, name, size):
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    next(model.children()).eval()  # a model whose modules are in mixed modes
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, size, size)
    sm = splitfx.convert(model, x, num_blocks=3)
    path = tmp_path / "m.onnx"
    report = splitfx.export_onnx(sm, path, x)
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output)
    assert report.top1_equal and report.batch_sizes == (2, 3)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch dimension is dynamic"
    assert not any("detach" in n.op_type.lower() for n in graph.node)
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_failed_verification_writes_nothing(tmp_path):
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(splitfx.SplitFXError, match="nothing written"):
        splitfx.export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 32, 32), atol=0.0)
    assert os.listdir(tmp_path) == []


def test_checkpoint_exports_and_loads_into_fresh_timm_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "resnet18", "--recipe", "linear", "--epochs", "1", "--batch", "128",
                 "--input-size", "16", "--blocks", "2", "--out", str(run)]) == 0
    out = tmp_path / "r.onnx"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out and out.exists()
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    fresh = timm.create_model("resnet18", num_classes=10)
    fresh.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, strict=True)


class _ZeroPadThenMaxPool(torch.nn.Module):
    """BiT ResNet-V2's stem in miniature: the zero padding wins wherever a window is all negative."""

    def __init__(self):
        super().__init__()
        self.pad, self.pool = torch.nn.ConstantPad2d(1, 0.0), torch.nn.MaxPool2d(3, 2)

    def forward(self, x):
        return self.pool(self.pad(x - 1.0))


def test_zero_padding_before_max_pool_survives_onnxruntime_pad_fusion(tmp_path):
    """onnxruntime's Pad_Fusion folds Pad(0) into MaxPool, whose padding is -inf: exported as is, the
    border of this model's output would be the negative window maxima instead of 0."""
    report = splitfx.export_onnx(_ZeroPadThenMaxPool(), tmp_path / "p.onnx", torch.rand(2, 3, 8, 8) * 0.5)
    assert report.max_abs_diff == 0.0


def test_bit_resnetv2_exports_within_tolerance(tmp_path):
    model = timm.create_model("resnetv2_50x1_bit", num_classes=10)
    report = splitfx.export_onnx(model, tmp_path / "bit.onnx", torch.randn(2, 3, 64, 64))
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output)
    assert all(p.requires_grad for p in model.parameters()), "the model itself was not rewritten"
