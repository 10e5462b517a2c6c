"""export_onnx of float16 and bfloat16 models (#37, item 10): a float16 file is verified with a real
comparison held to float16's rounding, and a wrong one is rejected; bfloat16, which onnxruntime's CPU
provider cannot run, is refused before anything is exported unless verify=False."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import splitfx
from splitfx.api import onnx_verify

from tinynets import Branchy


class _LargeMeanBatchNorm(nn.Module):
    """A convolution whose outputs (~1000) sit on the BatchNorm running mean: PyTorch's float16
    ``conv(x) − mean`` keeps a few bits, while onnxruntime folds the BatchNorm into the convolution."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.bias.fill_(1000.0)
            self.bn.running_mean.fill_(1000.0)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def _half(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    return model.eval().half(), torch.randn(2, 3, 8, 8).half()


def test_float16_model_is_exported_and_verified(tmp_path):
    model, x = _half(Branchy())
    report = splitfx.export_onnx(model, tmp_path / "h.onnx", x)
    assert report.verified and report.batch_sizes == (2, 3) and report.reference == "PyTorch"
    assert report.max_abs_output > 0 and report.within(onnx_verify.FLOAT16_ATOL)
    graph = onnx.load(tmp_path / "h.onnx").graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_a_wrong_float16_file_is_rejected(tmp_path):
    model, x = _half(Branchy())
    splitfx.export_onnx(model, tmp_path / "h.onnx", x)
    proto = onnx.load(tmp_path / "h.onnx")
    bias = next(t for t in proto.graph.initializer if t.name == "fc.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float16(1.0), bias.name))
    onnx.save(proto, tmp_path / "wrong.onnx")
    path = str(tmp_path / "wrong.onnx")
    with pytest.raises(splitfx.SplitFXError, match=r"ONNX verification failed for Branchy \(float16\): max abs diff"):
        onnx_verify.verify_export(model, path, (x,), True, 1e-4, path)
    good = str(tmp_path / "h.onnx")
    assert onnx_verify.verify_export(model, good, (x,), True, 1e-4, good).within(onnx_verify.FLOAT16_ATOL)


def test_float16_is_checked_against_float32_where_pytorch_float16_loses_the_answer(tmp_path):
    model, x = _half(_LargeMeanBatchNorm())
    report = splitfx.export_onnx(model, tmp_path / "bn.onnx", x)
    assert report.reference == "PyTorch float32" and report.within(onnx_verify.FLOAT16_ATOL)


def test_bfloat16_is_refused_before_export_unless_unverified(tmp_path):
    model, x = Branchy().eval().bfloat16(), torch.randn(2, 3, 8, 8).bfloat16()
    with pytest.raises(splitfx.ArgumentError, match=r"bfloat16 weights.*\.float\(\).*verify=False"):
        splitfx.export_onnx(model, tmp_path / "b.onnx", x)
    assert not list(tmp_path.iterdir())
    report = splitfx.export_onnx(model, tmp_path / "b.onnx", x, verify=False)
    assert not report.verified and "not verified" in str(report) and (tmp_path / "b.onnx").exists()


def test_top1_near_ties_count_as_the_same_only_within_the_margin():
    reference = [[np.array([[1.0, 0.999, 0.0]])]]
    reordered = [[np.array([[0.999, 1.0, 0.0]])]]
    assert not onnx_verify._compare(reference, reordered, "p", (1,)).top1_equal
    assert onnx_verify._compare(reference, reordered, "p", (1,), ties=1e-2).top1_equal
    assert not onnx_verify._compare(reference, reordered, "p", (1,), ties=1e-4).top1_equal


def test_nan_or_infinity_on_one_side_is_an_infinite_difference():
    reference = [[np.array([[1.0, np.nan, np.inf]])]]
    assert onnx_verify._compare(reference, [[np.array([[1.0, np.nan, np.inf]])]], "p", (1,)).max_abs_diff == 0.0
    assert onnx_verify._compare(reference, [[np.array([[1.0, 2.0, np.inf]])]], "p", (1,)).max_abs_diff == np.inf
    overflowed = onnx_verify._compare(reference, [[np.array([[5.0, np.nan, np.inf]])]], "p", (1,))
    assert overflowed.max_abs_output == 1.0 and not overflowed.within(1e-2)  # an infinite output widens nothing
