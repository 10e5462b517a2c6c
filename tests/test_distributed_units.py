"""What needs no second process: refusals before training, a rank's share of the tensors, stage
balance, the message header; and one ``torchrun`` launch of the command line."""
import itertools
import os
import subprocess
import sys

import pytest
import timm
import torch
from dist_helpers import TwoPath, converted

import splitfx
from splitfx.base.errors import DistributedError, PlanError
from splitfx.cli import main
from splitfx.planner.stages import balance_stages, stage_costs
from splitfx.programs.distributed import train_distributed
from splitfx.programs.train import TrainConfig
from splitfx.runtime.grid import check_world
from splitfx.runtime.pipeline import Stage, check_pipeline
from splitfx.runtime.placement import held_bytes
from splitfx.runtime.transport import decode, encode

FAST = dict(model="resnet18", recipe="linear", batch=64, input_size=16, blocks=3, max_batches=3)


def test_bad_configurations_fail_before_training(capsys, tmp_path):
    assert main(["train", "--stages", "2", "--out", str(tmp_path / "run")]) == 2
    assert "launch with torchrun" in capsys.readouterr().err and not (tmp_path / "run").exists()
    with pytest.raises(DistributedError, match="not a multiple of --stages 2"):
        check_world(3, 2)
    with pytest.raises(DistributedError, match="more than --blocks 3"):
        train_distributed(TrainConfig(epochs=1, **FAST), 4)
    with pytest.raises(DistributedError, match="launch with torchrun"):
        train_distributed(TrainConfig(epochs=1, **FAST), 2)
    with pytest.raises(DistributedError, match="at least as many blocks"):
        check_pipeline(converted(2, "linear"), [(0, 1), (1, 2), (2, 2)])


def test_recipes_that_reach_across_stages_are_refused_with_the_alternative():
    resnet = timm.create_model("resnet18", num_classes=5)
    for recipe, why in [("hpff", "cascade"), ("mlaan", "cascade"), ("man", "EMA copy")]:
        sm = splitfx.convert(resnet, torch.randn(2, 3, 32, 32), 4, recipe=recipe)
        check_pipeline(sm, [(0, 4)])  # one stage: data parallelism runs every recipe
        with pytest.raises(DistributedError, match=why) as err:
            check_pipeline(sm, [(0, 2), (2, 4)])
        assert "--stages 1" in str(err.value)


class WithSpare(TwoPath):
    """A layer the forward never calls: some rank must still hold it for the checkpoint."""

    def __init__(self):
        super().__init__()
        self.spare = torch.nn.Linear(2, 2)


def test_a_rank_keeps_only_its_share_and_every_tensor_has_a_rank():
    keys, held = None, []
    for s in range(2):
        sm = splitfx.convert(WithSpare(), torch.randn(8, 3, 8, 8), 3, stages=2)
        whole = held_bytes([*sm.parameters(), *sm.buffers()])
        keys = list(sm.state_dict())
        stage = Stage(sm, *sm.plan.stages.ranges[s])
        stage.place("cpu")
        kept = held_bytes([*sm.parameters(), *sm.buffers()])
        assert 0 < kept < whole and kept == held_bytes(stage.tensors())
        assert list(sm.state_dict()) == keys, "names are kept"
        held.append({k for k, t in sm.state_dict().items() if t.device.type != "meta"})
    assert held[0] | held[1] == set(keys) and "model.spare.weight" in held[0]


def test_stages_are_balanced_by_time_within_the_memory_budget():
    model = timm.create_model("resnet18", num_classes=10)
    plan = splitfx.plan(model, torch.randn(4, 3, 32, 32), 6, stages=3)
    flops, _, _ = stage_costs(plan)
    best = min(max(flops(a, b) for a, b in itertools.pairwise((0, *cut, 6)))
               for cut in itertools.combinations(range(1, 6), 2))
    assert max(plan.stages.flops) <= best * 1.05  # brute force agrees (within the memory tie-break's tolerance)
    assert plan.stages.ranges[0][0] == 0 and plan.stages.ranges[-1][1] == 6
    assert 0 <= plan.stages.bubble() < plan.stages.bubble(10) < 1
    assert "expected bubble" in plan.table() and len(plan.to_dict()["stages"]["shares"]) == 3
    budget = max(plan.stages.memory)
    assert max(balance_stages(plan, 3, memory_budget=budget).memory) <= budget
    with pytest.raises(PlanError, match="fits"):
        balance_stages(plan, 3, memory_budget=1000)
    with pytest.raises(PlanError, match="at least 7 blocks"):
        balance_stages(plan, 7)


def test_header_round_trip():
    tensors = [torch.zeros(2, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16)]
    step, specs = decode(encode(tensors, 7))
    assert step == 7 and specs == [(t.dtype, tuple(t.shape)) for t in tensors]
    with pytest.raises(DistributedError, match="complex64"):
        encode([torch.zeros(2, dtype=torch.complex64)], 0)


def test_torchrun_command_line(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "splitfx", "train", "resnet18", "--stages", "2", "--blocks", "3", "--epochs", "1", "--batch", "64",
               "--input-size", "16", "--max-batches", "2", "--out", str(out), "--timeout", "60"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "expected bubble" in done.stdout and "epoch 1/1" in done.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.jsonl", "model.onnx", "plan.png"]
