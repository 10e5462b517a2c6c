"""Stage times of a 2-stage pipeline of resnet18 (splitfx train's defaults: digits at 32², batch 64,
K=4, one thread): the four memory-balanced blocks grouped by FLOPs, and stages and blocks chosen
together (convert(..., stage_balance="time")). Each block's training step is timed with
splitfx.measure_block_times on the converted module and summed per stage; the ratio of all the
blocks' time to the slowest stage's bounds a 2-rank pipeline's speed-up over one process.

    python docs/stage_placement.py
"""
import torch

import splitfx
from splitfx.programs.config import TrainConfig
from splitfx.programs.epochs import build_model, start

torch.set_num_threads(1)
config = TrainConfig()
begin = start(config)
for label, balance in (("grouped by FLOPs", "flops"), ("chosen together", "time")):
    torch.manual_seed(0)
    model = build_model(config.model, begin.splits.num_classes, config.input_size)
    sm = splitfx.convert(model, begin.example, config.blocks, stages=2, stage_balance=balance)
    seconds = splitfx.measure_block_times(sm, begin.example, begin.labels, repeats=5)
    stages = [sum(seconds[a:b]) for a, b in sm.plan.stages.ranges]
    print(f"{label}: blocks {[b.span for b in sm.plan.blocks]}, stages {sm.plan.stages.ranges}, "
          f"stage s/step {[round(s, 3) for s in stages]}, bound {sum(seconds) / max(stages):.2f}× one process")
