"""``ffr`` (Forward-Forward for Regression): isolation, what the next block reads, the heads' target
scale and ordinal loss, the heads' prediction and uncertainty as the model's inference (PyTorch and
ONNX), memory, and regression end to end on the command line."""
from __future__ import annotations

import pytest
import torch
from sklearn.datasets import make_friedman1
from torch import nn

import splitfx
from splitfx.base.jsonl import append_record, read_records
from splitfx.base.meter import SavedTensorMeter, state_keys
from splitfx.cli import main
from splitfx.models import MLP
from splitfx.recipes.goodness import GoodnessHead, TargetScale, _Ordinal, soft_target
from splitfx.recipes.layout import Layout

from checks import assert_interleaved_equals_summed, assert_isolated


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only waits for a core another process holds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_regressor(features: int = 10, num_classes: int = 1) -> MLP:
    """A 3-layer regressor for the command line (``test_ffr:tiny_regressor``)."""
    return MLP(features, 16, 3, num_classes)


def _ffr(depth: int = 3, width: int = 16, batch: int = 8, features: int = 6, **options):
    model = MLP(features, width, depth)
    x, y = torch.randn(batch, features), torch.randn(batch)
    return model, x, y, splitfx.convert(model, x, depth, recipe=splitfx.recipe("ffr", **options), example_target=y)


def test_a_block_per_layer_parameter_free_heads_and_a_ladder_of_bins():
    _, _, _, sm = _ffr(depth=5, width=64)
    assert sm.num_blocks == 5 and sm.recipe.traits.infers and not sm.recipe.traits.pipelined
    assert [b.modules[-1] for b in sm.plan.blocks] == [f"layers.{i}.act" for i in range(4)] + ["out"]
    assert [h.groups for h in sm.heads] == [4, 8, 16, 32]
    assert [h.ladder for h in sm.heads] == [0.0, 0.9, 0.9, 0.9]  # the first head has no previous one
    assert not any(p for h in sm.heads for p in h.parameters())
    assert type(sm.heads[-1]).__name__ == "LastGoodness" and isinstance(sm.heads[-1].criterion, nn.HuberLoss)


def test_loss_k_reaches_block_k_alone_and_interleaved_backward_equals_the_summed_one():
    _, x, y, sm = _ffr()
    reached = assert_isolated(sm, x, y)
    assert all(all(n.startswith(f"model.layers.{k}.") for n in got) for k, got in enumerate(reached[:-1]))
    assert_interleaved_equals_summed(sm, x, y)


def test_stepping_each_block_gives_the_weights_of_one_step():
    import copy

    _, x, y, sm = _ffr()
    twin = copy.deepcopy(sm)
    for module, each in ((sm, False), (twin, True)):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
        for _ in range(2):
            module.train_step(x, y, opt, step_each_block=each)
    for (name, a), b in zip(sm.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_training_and_inference_hand_the_next_block_the_same_normalised_input():
    _, x, y, sm = _ffr()
    seen = {"train": [], "eval": []}
    hook = sm.model.layers[1].fc.register_forward_pre_hook(lambda m, args: seen[mode].append(args[0].detach().clone()))
    mode = "train"
    for loss in sm.local_losses(x, y):
        loss.backward()
    mode = "eval"
    sm.eval()
    with torch.no_grad():
        sm(x)
    hook.remove()
    (trained,), (inferred,) = seen["train"], seen["eval"]
    assert torch.allclose(trained, inferred)
    rms = trained.pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-5)  # unit root-mean-square per sample
    assert not torch.allclose(sm.model.layers[0](x), trained)


def test_the_target_scale_is_the_training_range_in_the_state_dict():
    scale = TargetScale()
    assert not scale.fitted and float(scale(torch.zeros(1))) == 0.5  # ±3: standardised targets
    y = torch.randn(500) * 3 + 7
    scale.fit(y)
    assert scale.fitted and float(scale(y).min()) == 0 and float(scale(y).max()) == 1
    assert float(scale(y.max() + 1)) == 1 and torch.allclose(scale.inverse(scale(y)), y, atol=1e-5)
    _, x, y, sm = _ffr()
    keys = sm.state_dict().keys()
    for k in range(2):
        assert {f"heads.{k}.scale.low", f"heads.{k}.scale.high", f"heads.{k}.scale.fitted", f"heads.{k}.error",
                f"heads.{k}.spread"} <= keys
    assert "heads.1.final_error" in keys
    target = y * 10 + 3
    list(sm.local_losses(x, target))  # unfitted: the first training batch fits every head's scale
    assert all(h.scale.fitted and float(h.scale.low) == float(target.min()) for h in sm.heads)
    sm.recipe.fit_targets(sm.heads, torch.arange(100.0))
    assert (float(sm.heads[0].scale.low), float(sm.heads[1].scale.high)) == (0.0, 99.0)


def test_the_ordinal_loss_and_its_hand_written_gradient():
    head = GoodnessHead(Layout.NC, 32, 8, 0.5)
    z = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5)
    q = soft_target(head, target, 5).double()
    assert torch.allclose(q.sum(1), torch.ones(5, dtype=torch.float64))
    # The Gaussian peaks at the bin holding the scaled target.
    assert torch.equal(q.argmax(1), (head.scale(target) * 8).floor().clamp(0, 7).long())

    def reference(z):
        log_p = torch.log_softmax(z, 1)
        return -(q * log_p).sum(1).mean() + ((log_p.exp().cumsum(1) - q.cumsum(1)) ** 2).sum(1).mean()

    assert torch.allclose(_Ordinal.apply(z, q, 1.0), reference(z))
    assert torch.autograd.gradcheck(lambda z: _Ordinal.apply(z, q, 1.0), (z,))


def test_forward_is_the_heads_prediction_and_uncertainty_in_every_mode():
    model, x, y, sm = _ffr()
    opt = torch.optim.AdamW(sm.parameters(), lr=1e-2)
    for _ in range(3):
        sm.train_step(x, y, opt)
    sm.eval()
    with torch.no_grad():
        prediction, uncertainty = sm(x)
        assert prediction.shape == uncertainty.shape == model(x).shape and torch.all(uncertainty > 0)
        assert torch.equal(prediction, sm.recipe.infer(sm.parts(), (x,))[0])
        assert not torch.equal(prediction, model(x))  # not the model's own output: the heads take part


def test_export_returns_prediction_and_uncertainty_equal_to_pytorch(tmp_path):
    import onnxruntime as ort

    _, x, y, sm = _ffr()
    opt = torch.optim.AdamW(sm.parameters(), lr=1e-2)
    for _ in range(3):
        sm.train_step(x, y, opt)
    report = splitfx.export_onnx(sm, tmp_path / "ffr.onnx", x[:4])
    assert report.exporter == "dynamo" and report.within(1e-4) and sm.training  # its mode is left as it was
    session = ort.InferenceSession(str(tmp_path / "ffr.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:5].numpy()})
    sm.eval()
    with torch.no_grad():
        want = sm(x[:5])
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(torch.from_numpy(g), w, atol=1e-5)


def test_uncertainty_grows_away_from_the_training_data():
    """Friedman #1 with the top of the first feature's range held out: the model is less sure there."""
    x, y = make_friedman1(n_samples=3000, n_features=5, noise=0.5, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    x, y = (x - 0.5) * 3.5, (y - y.mean()) / y.std()
    held = x[:, 0] > 0.1 * 3.5  # raw x0 > 0.6
    train_x, train_y = x[~held], y[~held]
    torch.manual_seed(0)
    sm = splitfx.convert(MLP(5, 64, 4), train_x[:64], 4, recipe="ffr", example_target=train_y[:64])
    sm.recipe.fit_targets(sm.heads, train_y)
    opt = torch.optim.AdamW(sm.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(train_x), generator=order).split(64):
            sm.train_step(train_x[idx], train_y[idx], opt)
    sm.eval()
    with torch.no_grad():
        near = float(sm(train_x[:300])[1].mean())
        far = float(sm(x[held & (x[:, 0] > 0.35 * 3.5)])[1].mean())  # raw x0 > 0.85
    assert far > 1.2 * near


def test_memory_is_one_layer_and_the_prediction_is_exact():
    _, x, y, sm = _ffr(depth=8, width=256)
    plan = sm.plan
    assert plan.local_peak_bytes < 0.3 * plan.e2e_saved_bytes
    with SavedTensorMeter(state_keys([sm])) as meter:
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=1e-3))
        assert meter.live == 0
    assert meter.peak == plan.local_peak_bytes


def test_other_tasks_and_options_are_refused():
    with pytest.raises(splitfx.PlanError, match="one value per sample"):
        splitfx.convert(MLP(6, 16, 3, outputs=4), torch.randn(8, 6), 3, recipe="ffr")  # class scores
    for bad in (dict(groups=(1, 4)), dict(ladder=2.0), dict(tau=0), dict(momentum=1.0)):
        with pytest.raises(ValueError):
            splitfx.recipe("ffr", **bad)


def test_regression_end_to_end_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "test_ffr:tiny_regressor", "--recipe", "ffr", "--task", "regression", "--data", "diabetes",
            "--blocks", "3", "--epochs", "1", "--validation", "0.15", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "300 train / 54 val samples of 10 features" in text
    assert "val RMSE" in text and "MAE" in text and "test errors of the final model" in text
    assert (out / "model.onnx").exists()
    assert main(["train", "--task", "regression", "--data", "digits", "--out", str(tmp_path / "no")]) == 2
    assert "digits is classification data" in capsys.readouterr().err


def test_the_reproduction_resumes_from_its_file_and_tabulates_it(tmp_path):
    from splitfx.programs import ffr_results

    table = ffr_results.protocol(quick=True)
    errors = table["errors"]
    pre = ffr_results.config("friedman", "ffr_pre", 1e-3, 0, errors)
    assert (pre.recipe, pre.blocks, len(pre.cuts)) == ("ffr", 8, 7) and ffr_results.config(
        "diabetes", "e2e", 1e-3, 0, errors).blocks == 1
    results = tmp_path / "ffr.jsonl"
    for recipe, rmse in (("e2e", 1.0), ("ffr", 1.1), ("ffr_pre", 0.9)):
        for lr in errors["lrs"]:
            append_record(results, ffr_results._line("search", errors, data="friedman", recipe=recipe, lr=lr,
                                                     val_rmse=rmse + lr))
        append_record(results, ffr_results._line("test", errors, data="friedman", recipe=recipe, lr=1e-3, seed=0,
                                                 rmse=rmse, mae=rmse / 2, val_rmse=rmse))
    # a line of another protocol (the whole table, as lines were written before the parts) is ignored
    append_record(results, ffr_results._line("test", table, data="friedman", recipe="ffr", lr=1e-3, seed=0,
                                             rmse=5.0, mae=1.0, val_rmse=5.0))
    text = ffr_results.report(table, str(results))
    assert "| friedman | cuts after each ReLU | 1 ± 0 | 1.1 ± 0 | 1.100 |" in text
    assert "| friedman | cuts before each ReLU | 1 ± 0 | 0.9 ± 0 | 0.900 |" in text and "Recorded at commit" in text
    # the random train/test splits of diabetes: the ratio paired by split, with its t-interval
    part = table["splits"]
    for split, (e2e, ffr) in enumerate([(50.0, 52.0), (60.0, 60.0)]):
        for recipe, rmse in (("e2e", e2e), ("ffr", ffr)):
            append_record(results, ffr_results._line("split", part, data="diabetes", recipe=recipe, lr=1e-3,
                                                     split=split, rmse=rmse, mae=rmse / 2))
    ratio = ffr_results.t_interval([52 / 50, 1.0])
    text = ffr_results.report(table, str(results))
    assert f"| diabetes | cuts after each ReLU | 2 | 55.00 ± 63.53 | 56.00 ± 50.82 | {ratio.shown()} |" in text, text
    assert "cuts before each ReLU | 2 |" not in text, "ffr_pre has no split run"
    assert ffr_results.config("diabetes", "ffr", 1e-3, 3, errors, split=3).data == "diabetes@3"
    # the benchmark, with its no-heads floor timed in the same run; resuming runs nothing again
    for _ in range(2):
        ffr_results.memory_and_time(table, str(results), lambda _: None)
    (bench,) = [r for r in read_records(str(results), key="kind") if r["kind"] == "bench"]
    assert bench["saved_ratio"] < 1 and bench["floor_ratio"] == bench["floor_ms"] / bench["e2e_ms"]
    assert f"| {bench['time_ratio']:.2f} | {bench['floor_ratio']:.2f} |" in ffr_results.report(table, str(results))


def test_diabetes_and_digits_have_other_random_train_test_splits_and_nothing_else_does():
    from splitfx.base.errors import SplitFXError
    from splitfx.programs.data import load, split_of

    first, same, other = load("diabetes", 10), load("diabetes@0", 10), load("diabetes@3", 10)
    assert all(torch.equal(a, b) for a, b in zip(first.test.tensors, same.test.tensors, strict=True))
    assert (len(other.train), len(other.test)) == (len(first.train), len(first.test)) == (354, 88)
    assert not torch.equal(first.test.tensors[1], other.test.tensors[1])
    first, other = load("digits", 8), load("digits@2", 8)
    assert (len(other.train), len(other.test)) == (len(first.train), len(first.test)) == (1437, 360)
    assert torch.equal(first.test.tensors[1].bincount(), other.test.tensors[1].bincount()), "stratified alike"
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])
    assert split_of("imagefolder:/data/me@host/set") == ("imagefolder:/data/me@host/set", 0), "a path's @ stays"
    for bad, says in (("friedman@1", "only diabetes and digits have other train/test splits"),
                      ("diabetes@x", "diabetes@S")):
        with pytest.raises(SplitFXError, match=says):
            load(bad, 10)
