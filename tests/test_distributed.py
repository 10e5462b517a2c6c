"""Pipeline and data parallelism over gloo on CPU, in two multi-process sessions.

Process start-up (importing torch, timm, scikit-learn) is most of the cost, so each session starts
its ranks once (forked from a server that imported them) and runs every scenario in them: the
2-rank session trains pipelines and data-parallel replicas, balances stages by the block times rank
0 measured, checks that mismatched plans are refused, then runs ``train --stages 2`` (stages by
measured time) and kills rank 1 in its second epoch; the 4-rank session trains a 4-stage pipeline
and a 2 × 2 grid, balances by time too, then resumes the killed run's checkpoint on 4 stages.
The parent compares everything with one process (one thread, like every rank). Every wait has a
timeout, so a hang fails instead of stalling.
"""
import os
import shutil
import signal
import time

import pytest
import torch
from dist_helpers import (
    batches,
    converted,
    held,
    mismatches,
    one_thread,
    optimizer,
    reference,
    report,
    run_ranks,
    scheduled,
)

from splitfx.base.errors import DistributedError
from splitfx.programs.checkpoint import Checkpoint
from splitfx.programs.distributed import balance_by_time, train_distributed
from splitfx.programs.train import TrainConfig, train
from splitfx.runtime import grid as grids
from splitfx.runtime.pipeline import Stage, check_pipeline
from splitfx.runtime.rank import Rank
from splitfx.runtime.schedules import MicroBatches, Streaming

STEPS = 3
CKPT = "checkpoint.pt"
FAST = dict(model="resnet18", recipe="linear", batch=32, input_size=16, blocks=4, max_batches=2)
QUIET = dict(progress=False, log=lambda _: None)
TWO = {
    "pipeline, a two-tensor cut between the ranks": (2, 2, "linear", dict(split_points=["a"])),
    "pipeline infopro (inputs handed on)": (2, 3, "infopro", dict(ranges=[(0, 1), (1, 3)])),
    "data parallel, averaged gradients": (1, 3, "linear", {}),
    "data parallel hpff (cascade)": (1, 4, "hpff", {}),
    "pipeline, 2 micro-batches per step": (2, 3, "linear", dict(microbatches=2)),
}
FOUR = {
    "pipeline of 4 stages": (4, 4, "dgl", {}),
    "2 stages x 2 replicas, a two-tensor cut": (2, 3, "linear", dict(split_points=["a", "head"])),
}


def _train(stages: int, blocks: int, recipe: str, replicas: int, ranges=None, microbatches: int | None = None,
           **options) -> dict:
    """This rank's share of a pipeline × data-parallel run (the plan's stages unless ``ranges``;
    the micro-batch schedule with ``microbatches``)."""
    grid = grids.start(stages, "cpu", timeout=30)
    sm = converted(blocks, recipe, stages=stages, **options)
    ranges = ranges or sm.plan.stages.ranges
    check_pipeline(sm, ranges)
    stage = Stage(sm, *ranges[grid.stage])
    stage.place(grid.device)
    schedule = MicroBatches(microbatches) if microbatches else Streaming()
    me = Rank(grid, stage, optimizer([p for _, p in stage.named_parameters()]), schedule=schedule)
    for t, (x, y) in enumerate(batches(STEPS)):
        shard = (x.chunk(replicas)[grid.replica], y.chunk(replicas)[grid.replica])
        me.train_step(t, shard if grid.stage == 0 else None)
    me.close()
    return held(sm)


def _measured() -> dict:
    """The 2-stage plan this rank gets when the stages are balanced by measured block times."""
    grid = grids.start(2, "cpu", timeout=30)
    sm = converted(4, stages=2)
    balance_by_time(grid, sm, batches(1)[0])
    return sm.plan.stages.to_dict()


def _program(rank: int, stages: int, out: str, resume: str | None, kill: tuple | None) -> dict:
    def on_step(epoch: int, step: int) -> None:
        if kill is not None and (rank, epoch, step) == kill:
            with open(out + ".killed", "w") as f:
                f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        train_distributed(TrainConfig(epochs=2, **FAST), stages, out=out, resume=resume, timeout=30,
                          on_step=on_step, **QUIET)
    except DistributedError as err:
        return {"failed": str(err), "at": time.time()}
    return {}


def _session(rank: int, world: int, scenarios: dict, program: dict) -> dict:
    """Every scenario, the plan check, then the training program (which may kill this rank)."""
    began = time.monotonic()
    results = {name: _train(stages, blocks, recipe, world // stages, **extra)
               for name, (stages, blocks, recipe, extra) in scenarios.items()}
    results["measured"] = _measured()
    try:
        grid = grids.Grid(rank, world, 1, torch.device("cpu"), 30)
        grids.agree(grid, grids.digest("plan", rank == world - 1), "the plan")
    except DistributedError as err:
        results["mismatch"] = str(err)
    results["seconds"] = {"scenarios": time.monotonic() - began}
    report(results)
    began = time.monotonic()
    results["program"] = _program(rank, **program)
    results["seconds"]["program"] = time.monotonic() - began
    return results


def _same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.epoch == b.epoch and a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for i, s in a.optimizer["state"].items():
        for name, value in s.items():
            assert torch.equal(value, b.optimizer["state"][i][name]), (i, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both sessions, and one process's checkpoints after epoch 1 and epoch 2 of the same run."""
    root = tmp_path_factory.mktemp("distributed")
    run = str(root / "run")
    two = run_ranks(2, _session, (TWO, dict(stages=2, out=run, resume=None, kill=(1, 1, 0))), str(root), 120)
    killed = str(root / "killed")
    if os.path.isdir(run):
        shutil.copytree(run, killed)
    four = run_ranks(4, _session, (FOUR, dict(stages=4, out=run, resume=os.path.join(killed, CKPT), kill=None)),
                     str(root), 150)
    # One process trains the blocks the 2-stage run placed its stages by (its checkpoint keeps the cuts).
    cuts = Checkpoint.load(os.path.join(killed, CKPT)).config["cuts"] if os.path.isdir(killed) else None
    with one_thread():
        train(TrainConfig(epochs=1, cuts=cuts, **FAST), out=str(root / "e1"), **QUIET)
        train(TrainConfig(epochs=2, cuts=cuts, **FAST), out=str(root / "e2"), **QUIET)
        refs = {name: (scheduled(blocks, recipe, batches(STEPS), MicroBatches(extra["microbatches"]))
                       if "microbatches" in extra else
                       reference(blocks, recipe, batches(STEPS), shards=world // stages,
                                 **{k: v for k, v in extra.items() if k != "ranges"}))
                for world, scenarios in ((2, TWO), (4, FOUR))
                for name, (stages, blocks, recipe, extra) in scenarios.items()}
    return dict(root=root, two=two, four=four, refs=refs, killed=killed, run=run)


def _ranks(results: list, died: int | None = None) -> list[dict]:
    for rank, result in enumerate(results):
        if rank == died:
            continue
        assert result is not None, f"rank {rank} died"
        assert "error" not in result, result.get("trace")
    return results


@pytest.mark.parametrize("session, world", [("two", 2), ("four", 4)])
def test_ranks_equal_one_process(runs, session, world):
    results = _ranks(runs[session], died=1 if session == "two" else None)
    for name in TWO if session == "two" else FOUR:
        shares = [r[name] for r in results if r is not None and name in r]
        assert len(shares) == world
        assert mismatches(shares, runs["refs"][name]) == [], name


def test_every_rank_gets_the_stages_rank_0_measured(runs):
    for session in ("two", "four"):
        assert all(r is not None and "measured" in r for r in runs[session]), f"{session}: a rank died"
        plans = [r["measured"] for r in runs[session]]
        assert plans[0]["balanced_by"] == "time" and len(plans[0]["seconds"]) == 2
        assert all(p == plans[0] for p in plans), "the same times (measured once) and stages on every rank"


def test_mismatched_plans_are_refused(runs):
    for result in _ranks(runs["two"], died=1)[:1] + _ranks(runs["four"]):
        assert "the plan differs between rank 0 and rank(s) " in result["mismatch"]


def test_a_killed_rank_ends_the_others_with_its_name_and_the_checkpoint_resumes_anywhere(runs):
    survivor = _ranks(runs["two"], died=1)[0]["program"]
    assert "program" not in runs["two"][1], "rank 1 was killed in its program"
    assert "rank 0: lost rank 1" in survivor["failed"] and "stopped" in survivor["failed"]
    with open(runs["run"] + ".killed") as f:
        assert survivor["at"] - float(f.read()) < 60, "the survivor stopped within a bounded time"
    assert sorted(os.listdir(runs["killed"])) == [CKPT, "metrics.jsonl", "tensorboard"], "no temp file left"
    root = runs["root"]
    after_one, after_two = (Checkpoint.load(str(root / e / CKPT)) for e in ("e1", "e2"))
    cuts = Checkpoint.load(os.path.join(runs["killed"], CKPT)).config["cuts"]
    assert cuts is not None and len(cuts) == FAST["blocks"] - 1, "the stages were placed by time, the cuts kept"
    _same(Checkpoint.load(os.path.join(runs["killed"], CKPT)), after_one)  # 2 ranks' epoch 1 = one process's

    assert all("failed" not in r["program"] for r in _ranks(runs["four"]))
    _same(Checkpoint.load(os.path.join(runs["run"], CKPT)), after_two)  # saved on 2 ranks, resumed on 4

    single = str(root / "single")
    shutil.copytree(runs["killed"], single)
    with one_thread():
        train(TrainConfig(epochs=2, **FAST), out=single, resume=os.path.join(single, CKPT), **QUIET)
    _same(Checkpoint.load(os.path.join(single, CKPT)), after_two)  # saved on 2 ranks, resumed on 1
