"""Training on the embedded digits: it learns, checkpoints atomically, and resumes bit-exactly."""
import json
import os

import pytest
import torch

import splitfx
from splitfx.cli import main
from splitfx.programs.data import digits, load
from splitfx.programs.epochs import build_model
from splitfx.programs.run_folder import read_metrics
from splitfx.programs.train import TrainConfig, train

FAST = dict(model="resnet18", recipe="linear", batch=128, input_size=16, blocks=3, max_batches=3)


def _state(path):
    return torch.load(path, weights_only=False)


def test_digits_is_real_embedded_data():
    train_set, test_set, classes = digits(16)
    assert classes == 10 and len(train_set) + len(test_set) == 1797
    assert train_set.tensors[0].shape[1:] == (3, 16, 16)
    assert set(test_set.tensors[1].tolist()) == set(range(10))


def test_resume_continues_bit_exactly(tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(TrainConfig(epochs=2, **FAST), out=straight, progress=False, log=lambda _: None)
    train(TrainConfig(epochs=1, **FAST), out=split, progress=False, log=lambda _: None)
    train(TrainConfig(epochs=2, **FAST), out=split, resume=os.path.join(split, "checkpoint.pt"),
          progress=False, log=lambda _: None)
    a, b = _state(os.path.join(straight, "checkpoint.pt")), _state(os.path.join(split, "checkpoint.pt"))
    assert a["epoch"] == b["epoch"] == 1
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["test_accuracy"] for h in a["history"]] == [h["test_accuracy"] for h in b["history"]]
    assert sorted(os.listdir(split)) == ["checkpoint.pt", "metrics.jsonl", "tensorboard"], "no temp files left"


def test_cli_train_learns_and_reports_memory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "resnet18", "--recipe", "linear", "--blocks", "3", "--epochs", "3",
                 "--batch", "128", "--input-size", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "E2E" in printed
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracies = [h["test_accuracy"] for h in history]
    assert accuracies[-1] > 0.5  # ten classes: chance is 0.1
    assert all(0 < h["peak_saved_bytes"] < h["e2e_saved_bytes"] for h in history)


def test_validation_split_is_carved_from_training_images_and_logged(tmp_path):
    """With --validation the epochs are evaluated on held-out training images, never on test; the
    per-epoch numbers in metrics.jsonl and TensorBoard agree."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    splits = load("digits", 16, 0.15)
    assert len(splits.train) + len(splits.val) == 1437 and len(splits.test) == 360
    seen = {tuple(x.flatten().tolist()) for x in splits.train.tensors[0]}
    assert not any(tuple(x.flatten().tolist()) in seen for x in splits.val.tensors[0])
    assert torch.equal(load("digits", 16, 0.15).val.tensors[0], splits.val.tensors[0]), "the same images every run"

    out = str(tmp_path / "run")
    train(TrainConfig(epochs=2, validation=0.15, **FAST), out=out, progress=False, log=lambda _: None)
    history = read_metrics(out)
    assert all(h["test_accuracy"] is None and 0 <= h["val_accuracy"] <= 1 for h in history)
    events = EventAccumulator(os.path.join(out, "tensorboard"))
    events.Reload()
    # One event file per epoch; files written in the same second load in name order, whose last
    # field is a per-process counter compared as text ("10" < "9"), so compare by step.
    logged = sorted((e.step, e.value) for e in events.Scalars("val_accuracy"))
    assert logged == [(h["epoch"], pytest.approx(h["val_accuracy"])) for h in history]
    assert len(events.Scalars("block_loss/2")) == 2


def test_max_cut_tensors_one_keeps_every_cut_at_one_tensor_and_is_recorded(tmp_path):
    """resnet18 at K=9 (more blocks than its 8 residual blocks: some cut inside one) hands two
    tensors over when balanced freely; a run with max_cut_tensors=1 cuts only where one tensor is
    live and records the choice in its checkpoint."""
    x = torch.randn(64, 3, 32, 32)
    free = splitfx.plan(build_model("resnet18", 10, 32), x, 9, recipe="linear")
    assert max(len(b.output_shapes or []) for b in free.blocks) > 1
    out = str(tmp_path / "run")
    result = train(TrainConfig(blocks=9, epochs=1, max_batches=1, max_cut_tensors=1), out=out, progress=False,
                   log=lambda _: None)
    assert [len(b.output_shapes or []) for b in result.module.plan.blocks] == [1] * 8 + [0]
    assert _state(os.path.join(out, "checkpoint.pt"))["config"]["max_cut_tensors"] == 1


def test_a_last_batch_of_one_sample_is_left_out_and_the_epoch_trains(tmp_path):
    """BatchNorm cannot train on one sample: a batch size leaving one at the end of an epoch used to
    train the whole epoch, then fail on it with no checkpoint."""
    from splitfx.programs.epochs import epoch_order

    config = TrainConfig(batch=4, max_batches=None)
    assert [len(b) for b in epoch_order(config, 0, 9)] == [4, 4]
    assert [len(b) for b in epoch_order(config, 0, 10)] == [4, 4, 2]
    assert [len(b) for b in epoch_order(config, 0, 1)] == [1]
    size = len(load("digits", 16).train)
    batch = next(b for b in range(200, size) if size % b == 1)
    out = str(tmp_path / "run")
    result = train(TrainConfig(**{**FAST, "batch": batch, "max_batches": None, "epochs": 1}), out=out, progress=False,
                   log=lambda _: None)
    assert len(result.history) == 1 and os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_a_last_batch_is_left_out_when_one_of_its_parts_would_hold_one_sample():
    """Across 2 replicas × 2 micro-batches a batch is trained in 4 parts: a last batch of fewer than 8
    samples would give one of them a single sample."""
    from splitfx.programs.epochs import epoch_order

    config = TrainConfig(batch=8, max_batches=None)
    assert [len(b) for b in epoch_order(config, 0, 23, pieces=4)] == [8, 8]
    assert [len(b) for b in epoch_order(config, 0, 24, pieces=4)] == [8, 8, 8]
    assert [len(b) for b in epoch_order(config, 0, 23)] == [8, 8, 7]


def test_channels_last_trains_the_same_model_in_nhwc_and_resumes_either_way(tmp_path):
    """--channels-last feeds the convolutions NHWC batches and weights; it trains the same model as
    the default format up to floating-point rounding (other kernels, so not bit for bit), the
    checkpoint records the choice, and a run resumes in either format. A pipeline refuses it."""
    from splitfx.base.errors import DistributedError
    from splitfx.programs.distributed import train_distributed

    quiet = dict(progress=False, log=lambda _: None)
    plain = train(TrainConfig(epochs=1, **FAST), **quiet)
    seen = []

    def record(module, args):  # the placed model's training convolutions (planning probes the model as
        # given; a contiguous 1×1 kernel is channels-last too, so those say nothing)
        if isinstance(module, torch.nn.Conv2d) and module.training and module.kernel_size != (1, 1) and \
                module.weight.is_contiguous(memory_format=torch.channels_last):
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last) or args[0].shape[-2:] == (1, 1))

    out = str(tmp_path / "nhwc")
    with torch.nn.modules.module.register_module_forward_pre_hook(record):
        nhwc = train(TrainConfig(epochs=1, channels_last=True, **FAST), out=out, **quiet)
    assert len(seen) > 3 * 17 and all(seen)  # 3 steps, 17 3×3 or 7×7 convolutions each
    assert nhwc.module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(torch.tensor(plain.history[0].block_losses), torch.tensor(nhwc.history[0].block_losses),
                          rtol=1e-4)
    assert _state(os.path.join(out, "checkpoint.pt"))["config"]["channels_last"] is True
    resumed = train(TrainConfig(epochs=2, **FAST), out=out, resume=os.path.join(out, "checkpoint.pt"), **quiet)
    assert resumed.history[0] == nhwc.history[0] and len(resumed.history) == 2
    assert not resumed.module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    other = str(tmp_path / "nchw")
    train(TrainConfig(epochs=1, **FAST), out=other, **quiet)
    into = train(TrainConfig(epochs=2, channels_last=True, **FAST), out=other,
                 resume=os.path.join(other, "checkpoint.pt"), **quiet)
    assert into.module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DistributedError, match="--no-channels-last"):
        train_distributed(TrainConfig(epochs=1, channels_last=True, **FAST), 2)


def test_channels_last_leaves_what_is_not_4d_and_resuming_can_turn_it_off():
    """torch's channels-last is for 4-D tensors: a module's 5-D weights stay as they are (Module.to
    would raise); --no-channels-last resumes a channels-last checkpoint in the default format."""
    from splitfx.cli.parser import build_parser
    from splitfx.cli.preflight import train_config
    from splitfx.programs.epochs import on_device

    mixed = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3), torch.nn.Conv2d(3, 4, 3))
    on_device(TrainConfig(channels_last=True), mixed)
    assert mixed[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert not mixed[1].weight.is_contiguous() and mixed[0].weight.is_contiguous()
    assert on_device(TrainConfig(channels_last=True), torch.zeros(2, 3, 4, 5, 6)).is_contiguous()
    saved = TrainConfig(channels_last=True, amp=True)
    parse = build_parser().parse_args
    assert train_config(parse(["train"]), saved).channels_last is True
    off = train_config(parse(["train", "--no-channels-last", "--no-amp"]), saved)
    assert off.channels_last is False and off.amp is False


def test_the_summary_says_whether_local_training_kept_less_more_or_the_same_memory():
    from splitfx.programs.train import EpochResult, TrainResult

    def said(local: int, e2e: int) -> str:
        epoch = EpochResult(1, 0.5, [0.5], 0.9, 1.0, local)
        return TrainResult(TrainConfig(), 4, e2e, [epoch]).summary()

    assert "(less memory)" in said(1, 2) and "(MORE memory)" in said(3, 2) and "(the same memory)" in said(2, 2)
