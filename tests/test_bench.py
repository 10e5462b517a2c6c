"""The benchmark's modes compute what they claim, and its memory figures match the plan."""
import timm
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import splitfx
from splitfx.api.conversion import segments
from splitfx.cli import main
from splitfx.programs import bench

from tinynets import Stack


def test_checkpoint_segments_give_exact_e2e_gradients():
    model = timm.create_model("resnet18", num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))
    plan = splitfx.plan(model, x, num_blocks=4)
    F.cross_entropy(model(x), y).backward()
    e2e = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    parts = segments(plan, detach=False)
    h = (x,)
    for part in parts[:-1]:  # a cut may hand over several tensors: a tuple
        out = checkpoint(part, *h, use_reentrant=False)
        h = out if isinstance(out, tuple) else (out,)
    F.cross_entropy(parts[-1](*h), y).backward()
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, e2e[name]), name


def test_bench_reports_all_modes_with_exact_predictions(capsys):
    result = bench.run(lambda: timm.create_model("resnet18", num_classes=10), "resnet18", num_blocks=3, batch=4,
                       input_size=(3, 64, 64), steps=2, warmup=1)
    e2e, ckpt, local = result.modes
    assert [m.mode for m in result.modes] == ["e2e", "checkpoint", "local"]
    assert e2e.peak_saved_bytes == e2e.predicted_saved_bytes
    assert local.peak_saved_bytes == local.predicted_saved_bytes
    assert local.peak_saved_bytes < e2e.peak_saved_bytes and ckpt.peak_saved_bytes < e2e.peak_saved_bytes
    assert all(m.step_ms > 0 for m in result.modes) and 0 < result.aux_flops_share < 0.01
    assert "×E2E" in result.table()


def test_cli_bench_with_repl_reports_parameters_and_optimizer_state(capsys, tmp_path):
    assert main(["bench", "resnet50", "--input-size", "3", "32", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
                 "--replace", "2", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "local+RepL" in out
    import json

    written = json.loads((tmp_path / "b.json").read_text())
    assert {"commit", "command", "machine"} <= written.keys(), "the figures say where they came from"
    (result,) = written["results"]
    local, repl = result["modes"][2], result["modes"][3]
    assert all(m["step_peak_bytes"] > 0 for m in result["modes"])
    assert local["predicted_step_peak_bytes"] > 0
    assert repl["trainable_params"] < local["trainable_params"]
    assert repl["optimizer_state_bytes"] < local["optimizer_state_bytes"]


def test_bench_counts_as_trainable_only_what_a_loss_trains():
    def with_spare() -> torch.nn.Module:
        model = Stack()
        model.spare = torch.nn.Linear(100, 100)  # never used by forward
        return model

    spare, plain = (bench.run(f, "stack", 2, input_size=(6,), batch=4, steps=1, warmup=0, replace=2)
                    for f in (with_spare, Stack))
    counted = [(m.mode, m.trainable_params, m.optimizer_state_bytes) for m in spare.modes]
    assert counted == [(m.mode, m.trainable_params, m.optimizer_state_bytes) for m in plain.modes]
    assert [n for _, n, _ in counted if n is not None], "local and local+RepL report their counts"


def test_floor_trains_the_same_blocks_with_no_heads():
    """``floor``: one backward per block and nothing else saved, so it keeps no more than the recipe's
    local step (whose heads save their inputs too) and less than E2E."""
    result = bench.run(Stack, "stack", 3, input_size=(6,), batch=4, steps=1, warmup=0, floor=True)
    assert [m.mode for m in result.modes] == ["e2e", "checkpoint", "local", "floor"]
    e2e, _, local, floor = result.modes
    assert 0 < floor.peak_saved_bytes <= local.peak_saved_bytes < e2e.peak_saved_bytes
