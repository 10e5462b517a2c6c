"""What needs no second process: refusals before training, a rank's share of the tensors, stage
balance, the message header; and two ``torchrun`` launches of the command line (train, bench)."""
import itertools
import json
import os
import signal
import subprocess
import sys

import pytest
import timm
import torch
from dist_helpers import TwoPath, converted

import splitfx
from splitfx.api.timing import rebalance_stages
from splitfx.base.errors import ArgumentError, DistributedError, PlanError
from splitfx.base.memory import weight_bytes
from splitfx.cli import main
from splitfx.planner.stages import balance_stages, stage_costs
from splitfx.programs.distributed import train_distributed
from splitfx.programs.pipeline_bench import PipelineBench
from splitfx.programs.train import TrainConfig
from splitfx.runtime.grid import check_world
from splitfx.runtime.pipeline import Stage, check_pipeline
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
        whole = weight_bytes([*sm.parameters(), *sm.buffers()])
        keys = list(sm.state_dict())
        stage = Stage(sm, *sm.plan.stages.ranges[s])
        stage.place("cpu")
        kept = weight_bytes([*sm.parameters(), *sm.buffers()])
        assert 0 < kept < whole and kept == weight_bytes(stage.tensors())
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


def test_measured_times_balance_the_stages_where_flops_mispredict():
    model = timm.create_model("resnet18", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    plan = splitfx.plan(model, x, 6, stages=2)
    times = [6.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # block 0 far slower than its FLOPs say (a CPU's large feature maps)
    by_time = balance_stages(plan, 2, times=times)
    flops = [b.flops + b.aux_flops for b in plan.blocks]  # the stages by FLOPs: the brute-force least largest
    least = min(max(sum(flops[:c]), sum(flops[c:])) for c in range(1, 6))
    (a, c), (_, end) = plan.stages.ranges
    assert (a, end) == (0, 6) and max(sum(flops[:c]), sum(flops[c:])) == least and plan.stages.balanced_by == "flops"
    assert by_time.ranges == [(0, 1), (1, 6)] and by_time.seconds == [6.0, 5.0] and by_time.balanced_by == "time"
    assert by_time.shares == pytest.approx([6 / 11, 5 / 11]) and by_time.bubble() == pytest.approx(1 - 11 / 12)
    assert "balanced by measured block times" in by_time.table() and by_time.to_dict()["balanced_by"] == "time"
    assert splitfx.plan(model, x, 6, stages=2, stage_balance=times).stages.ranges == by_time.ranges
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # brute force agrees: the least largest stage time (within the 1 % memory tie-break)
        t = (torch.rand(6, generator=g) + 0.1).tolist()
        best = min(max(sum(t[a:b]) for a, b in itertools.pairwise((0, *cut, 6)))
                   for cut in itertools.combinations(range(1, 6), 2))
        assert max(balance_stages(plan, 3, times=t).seconds) <= best * 1.01
    budget = max(by_time.memory) - 1  # memory stays a constraint: the next best split that fits
    fitted = balance_stages(plan, 2, memory_budget=budget, times=times)
    assert fitted.ranges == [(0, 2), (2, 6)] and max(fitted.memory) <= budget
    with pytest.raises(PlanError, match="6 positive seconds"):
        balance_stages(plan, 2, times=times[:5])


def test_measured_block_times_leave_the_module_as_it_was():
    sm = converted(4, stages=2)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    before, rng = {k: v.clone() for k, v in sm.state_dict().items()}, torch.get_rng_state()
    times = splitfx.measure_block_times(sm, x, y)
    assert len(times) == 4 and all(t > 0 for t in times)
    assert all(torch.equal(before[k], v) for k, v in sm.state_dict().items()), "weights and BatchNorm statistics"
    assert all(p.grad is None for p in sm.parameters()) and torch.equal(rng, torch.get_rng_state())
    planned = sm.plan
    sm.plan = rebalance_stages(sm.plan, [1.0, 1.0, 1.0, 5.0])
    assert sm.plan.stages.ranges == [(0, 3), (3, 4)] and sm.plan.stages.seconds == [3.0, 5.0]
    assert planned.stages.seconds is None, "a new plan: the one rebalanced is left as it was"
    timed = converted(4, stages=2, stage_balance="time")
    assert timed.plan.stages.balanced_by == "time" and len(timed.plan.stages.seconds) == 2
    with pytest.raises(ArgumentError, match="measures the converted blocks"):
        splitfx.plan(TwoPath(), x, 4, stages=2, stage_balance="time")
    Stage(sm, 0, 3).place("cpu")
    with pytest.raises(ArgumentError, match="whole SplitModule"):
        splitfx.measure_block_times(sm, x, y)


def test_stage_balance_option(capsys):
    assert main(["bench", "resnet18", "--stages", "2", "--stage-balance", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "argument --stage-balance: invalid choice: 'fastest'" in err and "Traceback" not in err
    assert main(["train", "--stages", "2", "--stage-balance", "flops"]) == 2  # parsed; then: not under torchrun
    assert "launch with torchrun" in capsys.readouterr().err
    with pytest.raises(DistributedError, match="stage_balance must be one of flops, time"):
        train_distributed(TrainConfig(epochs=1, **FAST), 2, stage_balance="fastest")


def test_header_round_trip():
    tensors = [torch.zeros(2, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16)]
    step, specs = decode(encode(tensors, 7))
    assert step == 7 and specs == [(t.dtype, tuple(t.shape)) for t in tensors]
    with pytest.raises(DistributedError, match="complex64"):
        encode([torch.zeros(2, dtype=torch.complex64)], 0)


def _torchrun(args: list[str], tmp_path, timeout: float) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m splitfx ARGS`` in its own process group; a launch
    past ``timeout`` is killed with its ranks (``subprocess.run`` would kill only the agent and leave
    them running). TMPDIR: torchrun's agent leaves a log folder in the temporary directory."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "splitfx", *args]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_torchrun_command_line(tmp_path):
    out = tmp_path / "run"
    done = _torchrun(["train", "resnet18", "--stages", "2", "--blocks", "3", "--epochs", "1", "--batch", "64",
                      "--input-size", "16", "--max-batches", "2", "--out", str(out), "--timeout", "60"], tmp_path, 150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "expected bubble" in done.stdout and "epoch 1/1" in done.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.jsonl", "model.onnx", "plan.png", "tensorboard"]


def test_torchrun_pipeline_bench_records_each_ranks_share_with_its_provenance(tmp_path):
    """``bench --stages 2 --json``: the file says where it came from, the stages cover the blocks, and
    the pipeline's ranks hold between them exactly one process's parameters and AdamW state."""
    out = tmp_path / "bench.json"
    done = _torchrun(["bench", "resnet18", "--stages", "2", "--blocks", "4", "--input-size", "16", "--batch", "8",
                      "--steps", "1", "--warmup", "1", "--json", str(out), "--timeout", "60"], tmp_path, 240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"commit", "command", "machine", "code", "torch"} <= result.keys() and "--stages 2" in result["command"]
    assert result["ranges"][0][0] == 0 and result["ranges"][-1][1] == 4
    assert all(a[1] == b[0] for a, b in itertools.pairwise(result["ranges"]))
    one, wide, pipeline = result["modes"][:3]
    assert (one["ranks"], wide["ranks"], pipeline["ranks"]) == (1, 1, 2)
    assert "one process" in one["name"] and wide["name"] == "one process, 2 threads" and "pipeline" in pipeline["name"]
    assert wide["memory"] == one["memory"], "threads change no tensor"
    for kind in ("params", "optimizer"):
        assert sum(m[kind] for m in pipeline["memory"]) == one["memory"][0][kind] > 0
    assert all(m["saved"] > 0 for m in pipeline["memory"])
    assert max(m["saved"] for m in pipeline["memory"]) <= one["memory"][0]["saved"]
    assert PipelineBench.from_dict(result).table() in done.stdout, "the file gives back the printed table"


def test_pipeline_bench_refuses_micro_batches_of_one_sample_before_joining():
    from splitfx.programs.pipeline_bench import run

    with pytest.raises(DistributedError, match="give --batch 8 or more"):
        run("resnet18", 2, batch=4)
