"""The API boundary: bad arguments are refused where they are passed, naming the argument; models of
any floating dtype train; convert keeps the model's mode; export changes nothing it is given."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import splitfx
from splitfx.api.validation import check_plan_arguments
from splitfx.base.meter import SavedTensorMeter, state_keys
from splitfx.programs.epochs import build_model
from splitfx.recipes.simple import Linear as LinearRecipe


class Tiny(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = x + self.act2(self.conv2(x))
        return self.fc(self.conv3(x).mean((2, 3)))


class DictOut(Tiny):
    def forward(self, x):
        return {"logits": super().forward(x)}


X = torch.randn(4, 3, 8, 8)
Y = torch.randint(0, 5, (4,))


def _instance_forward() -> nn.Module:
    """A model whose ``forward`` was replaced on the instance: the class's would be traced instead."""
    model = Tiny()
    model.forward = lambda x: model.fc(x.mean((2, 3)).repeat(1, 6)[:, :16])
    return model


# (what is changed in a call to plan/convert, error types, words of the message)
BAD = [
    (dict(split_points="conv2"), TypeError, "split_points=['conv2']"),
    (dict(replace="conv2"), TypeError, "replace=['conv2']"),
    (dict(leaf_modules="act1"), TypeError, "leaf_modules=['act1']"),
    (dict(leaf_modules=[3]), TypeError, "leaf_modules[0]"),
    (dict(split_points=[]), ValueError, "split_points=[]"),
    (dict(num_blocks=True), TypeError, "num_blocks must be an int"),
    (dict(num_blocks=2.0), TypeError, "num_blocks must be an int"),
    (dict(num_blocks="2"), TypeError, "num_blocks must be an int"),
    (dict(num_blocks=0), ValueError, "num_blocks must be at least 1"),
    (dict(num_classes=0), ValueError, "num_classes must be at least 2"),
    (dict(num_classes=True), TypeError, "num_classes must be an int"),
    (dict(replace=1), ValueError, "replace must be at least 2"),
    (dict(replace=True), TypeError, "replace must be an int"),
    (dict(method="fastest"), ValueError, "unknown method 'fastest'"),
    (dict(replace_mode="row"), ValueError, "unknown replace_mode 'row'"),
    (dict(recipe="nope"), ValueError, "unknown recipe 'nope'"),
    (dict(recipe=LinearRecipe), TypeError, "recipe=Linear is a class"),
    (dict(example_inputs=X.numpy()), TypeError, "torch.from_numpy"),
    (dict(example_inputs=X.tolist()), TypeError, "example_inputs[0] is list"),
    (dict(example_inputs=list(X)), ValueError, "torch.stack"),
    (dict(example_inputs=X[:0]), ValueError, "batch of at least one sample"),
    (dict(example_inputs=torch.tensor(1.0)), ValueError, "batch of at least one sample"),
    (dict(example_inputs=()), TypeError, "non-empty"),
    (dict(example_inputs={"x": X}), TypeError, "got dict"),
    (dict(model=nn.DataParallel(Tiny())), TypeError, "pass model.module"),
    (dict(model=torch.compile(Tiny())), TypeError, "model._orig_mod"),
    (dict(model=lambda x: x), TypeError, "must be a torch.nn.Module"),
    (dict(model=_instance_forward()), TypeError, "model.forward was replaced on the instance"),
    (dict(stage_balance="time"), ValueError, "give stages=S too"),
    (dict(stages=2, stage_balance="fastest"), ValueError, "unknown stage_balance 'fastest'"),
    (dict(stages=2, stage_balance=[1.0, -1.0]), ValueError, "stage_balance[1] is -1.0"),
    (dict(stages=2, stage_balance=3.0), TypeError, "a list of seconds per block"),
]


def _call(entry, change: dict):
    args = dict(model=Tiny(), example_inputs=X, num_blocks=2) | change
    return entry(args.pop("model"), args.pop("example_inputs"), args.pop("num_blocks"), **args)


@pytest.mark.parametrize("entry", [splitfx.plan, splitfx.convert], ids=["plan", "convert"])
@pytest.mark.parametrize("change,kind,words", BAD, ids=[next(iter(c)) + f"-{i}" for i, (c, _, _) in enumerate(BAD)])
def test_bad_arguments_are_refused_by_name(entry, change, kind, words):
    with pytest.raises(splitfx.SplitFXError) as err:
        _call(entry, change)
    assert isinstance(err.value, kind) and isinstance(err.value, splitfx.ArgumentError | splitfx.ArgumentTypeError)
    assert words in str(err.value)


def test_validation_lets_keywords_it_does_not_know_through():
    """An unknown keyword passes, and validation still checks the ones it knows beside it."""
    assert check_plan_arguments(Tiny(), X, num_blocks=2, recipe="linear", a_future_option=object()) is None
    with pytest.raises(splitfx.ArgumentError, match="num_blocks"):
        check_plan_arguments(Tiny(), X, num_blocks=0, recipe="linear", a_future_option=object())


def test_an_example_in_another_floating_dtype_than_the_model_is_refused_by_name():
    with pytest.raises(splitfx.ArgumentError, match=r"example_inputs is torch.float64 .* pass x.to\(torch.float32\)"):
        splitfx.plan(Tiny(), X.double(), 2)
    with pytest.raises(splitfx.ArgumentError, match="example_target has shape"):
        splitfx.plan(Tiny(), X, 2, example_target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(splitfx.ArgumentTypeError, match=r"example_target must be a torch\.Tensor"):
        splitfx.plan(Tiny(), X, 2, example_target=[0, 1, 2, 3])
    assert splitfx.plan(Tiny().double(), X.double(), 2).num_blocks == 2



def test_an_example_in_another_floating_dtype_is_refused_by_convert_and_export_too(tmp_path):
    words = r"^example_inputs is torch.float64 and Tiny's parameters are torch.float32: pass x.to\(torch.float32\) "
    with pytest.raises(splitfx.ArgumentError, match=words + r"\(or convert the model with model.to\(torch.float64\)\)"):
        splitfx.convert(Tiny(), X.double(), 2)
    with pytest.raises(splitfx.ArgumentError, match=words):
        splitfx.export_onnx(Tiny(), tmp_path / "m.onnx", X.double())
    assert os.listdir(tmp_path) == []


def test_a_train_step_on_inputs_in_another_floating_dtype_is_refused_by_name_before_any_work():
    sm = splitfx.convert(Tiny(), X, 2)
    optimizer = torch.optim.SGD(sm.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in sm.state_dict().items()}
    words = r"^inputs is torch.float64 and Tiny's parameters are torch.float32: pass x.to\(torch.float32\) "
    with pytest.raises(splitfx.ArgumentError, match=words + r".*SplitModule.to\(torch.float64\)"):
        sm.train_step(X.double(), Y, optimizer)
    assert all(torch.equal(before[k], v) for k, v in sm.state_dict().items()), "not even BatchNorm's statistics moved"
    with pytest.raises(splitfx.ArgumentError, match=r"inputs is torch\.float64"):  # autocast never casts float64
        sm.train_step(X.double(), Y, optimizer, autocast_dtype=torch.bfloat16)
    losses = sm.train_step(X.bfloat16(), Y, optimizer, autocast_dtype=torch.bfloat16)  # autocast casts the rest
    assert len(losses) == 2 and all(np.isfinite(losses))

def test_convert_refuses_what_would_fail_at_the_first_step():
    model = Tiny()
    with pytest.raises(splitfx.ArgumentTypeError, match="loss_fn must be a callable"):
        splitfx.convert(model, X, 2, loss_fn="cross_entropy")
    with pytest.raises(splitfx.ArgumentTypeError, match="plan must be a SplitPlan"):
        splitfx.convert(model, X, 2, plan={"blocks": 2})
    with pytest.raises(splitfx.ArgumentTypeError, match="drop"):
        splitfx.convert(model, X, plan=splitfx.plan(model, X, 2), method="flops")
    with pytest.raises(splitfx.ArgumentError, match="another model object"):
        splitfx.convert(Tiny(), X, plan=splitfx.plan(model, X, 2))
    with pytest.raises(splitfx.ArgumentError, match="no trainable parameters"):
        splitfx.convert(Tiny().requires_grad_(False), X, 2)
    with pytest.raises(splitfx.ArgumentError, match=r"returns a dict.*loss_fn="):
        splitfx.convert(DictOut(), X, 2, num_classes=5)


def test_dict_output_trains_with_its_own_loss():
    def loss_fn(out, y):
        return nn.functional.cross_entropy(out["logits"], y)

    sm = splitfx.convert(DictOut(), X, 2, num_classes=5, loss_fn=loss_fn)
    losses = sm.train_step(X, Y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert sm.plan.simulation_error is None


class Encoder(nn.Module):
    """No classifier: returns its tokens (B, N, D), as timm's ``*_enc`` models do."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(2).transpose(1, 2))))


def test_an_encoder_plans_with_num_classes_and_trains_on_its_own_loss():
    """Cross-entropy cannot be costed on tokens: the plan leaves the last loss to loss_fn."""
    x = torch.randn(2, 4, 3, 3)
    sm = splitfx.convert(Encoder(), x, 2, num_classes=5, loss_fn=lambda out, y: out.pow(2).mean())
    losses = sm.train_step(x, Y[:2], torch.optim.SGD(sm.parameters(), lr=0.1))
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The step is still simulated, with a last loss that saves nothing: exact for a loss_fn that saves nothing.
    summed = splitfx.convert(Encoder(), x, 2, num_classes=5, loss_fn=lambda out, y: out.sum())
    assert summed.plan.simulation_error is None
    peaks = []
    with SavedTensorMeter(state_keys([summed])) as meter:
        for loss in summed.local_losses(x, Y[:2].clone()):  # a target of its own storage, as the plan's
            peaks.append(meter.peak)
            loss.backward()
            meter.mark()
    assert peaks == [b.saved_bytes for b in summed.plan.blocks]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("recipe", ["linear", "dgl", "auglocal"])
def test_models_of_any_floating_dtype_train(dtype, recipe):
    model, x = Tiny().to(dtype), X.to(dtype)
    sm = splitfx.convert(model, x, 3, recipe=recipe)
    assert {p.dtype for p in sm.parameters()} == {dtype}
    before = model.conv1.weight.detach().clone()
    for _ in range(2):
        losses = sm.train_step(x, Y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert all(np.isfinite(losses)) and not torch.equal(model.conv1.weight, before)
    sm.eval()
    with torch.no_grad():
        assert torch.equal(sm(x), model(x))


def test_infopro_plans_and_trains_a_float64_model():
    sm = splitfx.convert(Tiny().double(), X.double(), 3, recipe="infopro")
    assert all(p.dtype == torch.float64 for p in sm.heads.parameters())
    assert all(torch.isfinite(torch.tensor(sm.train_step(X.double(), Y, torch.optim.SGD(sm.parameters(), lr=0.1)))))


def test_heads_follow_the_model_mode_and_the_split_module_says_so():
    model = Tiny().eval()
    model.bn1.train()  # mixed modes are the user's business and are kept
    flags = [m.training for m in model.modules()]
    sm = splitfx.convert(model, X, 3)
    assert sm.training is False and not any(h.training for h in sm.heads)
    assert [m.training for m in model.modules()] == flags
    sm.train()
    assert model.training and all(m.training for m in sm.modules())
    assert splitfx.convert(Tiny().train(), X, 3).training is True


def test_export_of_a_repl_split_module_changes_nothing_it_was_given(tmp_path):
    model = build_model("test_vit", 10, 32)
    x = torch.randn(2, 3, 32, 32)
    sm = splitfx.convert(model, x, 3, replace=2)
    assert sm.plan.replaced
    sm.train_step(x, torch.randint(0, 10, (2,)), torch.optim.SGD(sm.parameters(), lr=0.1))  # a ≠ b ≠ ½
    state = {k: v.clone() for k, v in sm.state_dict().items()}
    grad_flags = {n: p.requires_grad for n, p in sm.named_parameters()}
    modes = [m.training for m in sm.modules()]
    report = splitfx.export_onnx(sm, tmp_path / "m.onnx", x)
    assert all(torch.equal(state[k], v) for k, v in sm.state_dict().items())
    assert {n: p.requires_grad for n, p in sm.named_parameters()} == grad_flags
    assert not any(grad_flags[f"model.{r}.{n}"] for r in sm.plan.replaced
                   for n, _ in model.get_submodule(r).named_parameters()), "replaced blocks stay frozen"
    assert [m.training for m in sm.modules()] == modes
    sm.eval()
    with torch.no_grad():
        expected = sm(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, report.max_abs_output)


@pytest.mark.parametrize("change,kind,words", [
    (dict(model_or_split=nn.DataParallel(Tiny())), TypeError, "model_or_split.module"),
    (dict(path="FOLDER"), ValueError, "is a folder"),
    (dict(path=3), TypeError, "path must be a str"),
    (dict(example_inputs=X.numpy()), TypeError, "torch.from_numpy"),
    (dict(example_inputs=X[:0]), ValueError, "batch of at least one"),
    (dict(atol=-1.0), ValueError, "atol"),
    (dict(verify="yes"), TypeError, "verify must be True or False"),
    (dict(external_data="auto"), TypeError, "external_data must be True, False or None"),
    (dict(external_data=1), TypeError, "external_data must be True, False or None"),
])
def test_export_refuses_bad_arguments_before_writing(tmp_path, change, kind, words):
    args = dict(model_or_split=Tiny(), path=tmp_path / "m.onnx", example_inputs=X) | change
    if args["path"] == "FOLDER":
        args["path"] = tmp_path
    with pytest.raises(splitfx.SplitFXError) as err:
        splitfx.export_onnx(args.pop("model_or_split"), args.pop("path"), args.pop("example_inputs"), **args)
    assert isinstance(err.value, kind) and words in str(err.value)
    assert os.listdir(tmp_path) == []


def test_export_refuses_one_file_for_weights_over_the_protobuf_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(splitfx.api.onnx_export, "ONE_FILE_LIMIT", 1000)  # Tiny's weights are 8 kB
    with pytest.raises(splitfx.ArgumentError, match=r"external_data=False, but the weights are .* at most 2 GiB"):
        splitfx.export_onnx(Tiny(), tmp_path / "m.onnx", X, external_data=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change,kind,words", [
    (dict(example_inputs=X.numpy()), TypeError, "torch.from_numpy"),
    (dict(num_blocks="2"), TypeError, "num_blocks must be an int"),
    (dict(memory_budget="-1GiB"), ValueError, "memory_budget"),
    (dict(memory_budget=None), ValueError, "needs memory_budget="),
    (dict(optimizer="lion"), ValueError, "unknown optimizer 'lion'"),
    (dict(method="fastest"), ValueError, "unknown method 'fastest'"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_max_batch_refuses_bad_arguments_by_name(change, kind, words):
    """max_batch validates what plan validates, before any tracing (#37, item 11)."""
    args = dict(model=Tiny(), example_inputs=X, num_blocks=2, memory_budget="1GiB") | change
    with pytest.raises(splitfx.SplitFXError) as err:
        splitfx.max_batch(args.pop("model"), args.pop("example_inputs"), args.pop("num_blocks"), **args)
    assert isinstance(err.value, kind) and words in str(err.value), str(err.value)


def test_parameters_the_forward_never_uses_are_not_counted_as_trainable():
    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(100, 100)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = Spare()
    plan = splitfx.plan(model, torch.randn(3, 4), 2)
    used = sum(p.numel() for m in (model.a, model.b) for p in m.parameters())
    assert (plan.trainable_params, plan.total_params) == (used, sum(p.numel() for p in model.parameters()))


def test_a_model_with_uninitialised_lazy_parameters_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(splitfx.ArgumentError, match=r"lazy parameters not initialised yet \(2\.weight, 2\.bias\)"):
        splitfx.plan(model, X, 2)
    model(X)  # initialised: it plans
    assert splitfx.plan(model, X, 2).num_blocks == 2


@pytest.mark.parametrize("recipe,frozen", [("tandem", 1), ("linear", 2)])
def test_a_block_frozen_after_convert_is_named_at_the_step(recipe, frozen):
    """Loss ``frozen`` then reaches nothing trainable (tandem's heads have no parameters; the last
    block's loss has no head): torch's bare "does not require grad" becomes a message saying what to do."""
    model, y = Tiny(), torch.randint(0, 3, (4,))
    sm = splitfx.convert(model, X, 3, recipe=recipe)
    for p in sm.block_parameters(frozen):
        p.requires_grad_(False)
    with pytest.raises(splitfx.SplitFXError, match=rf"loss {frozen} reaches no trainable parameter.*freeze before"):
        sm.train_step(X, y, torch.optim.SGD(sm.parameters(), lr=0.1))


def test_an_export_path_with_a_name_too_long_is_refused_before_exporting(tmp_path):
    with pytest.raises(splitfx.ArgumentError, match=r"bytes long, and this file system takes at most \d+"):
        splitfx.export_onnx(Tiny(), tmp_path / ("x" * 300 + ".onnx"), X)
    assert list(tmp_path.iterdir()) == []
