"""Predicted against measured time per block: ResNet-50 at 224², batch 8, one thread, CPU. K=4 blocks
balanced by FLOPs: each block's share of the forward FLOPs and of the measured training step
(`splitfx.measure_block_times`: forward, local loss, backward and AdamW's step; median of 3 after one
warm-up) and its rate (3 × forward FLOPs over the measured step). Then K=8 blocks by FLOPs in 2
stages, regrouped by the measured times: the table a `--stage-balance time` run prints. Ends with
commit and machine. About a minute of one core; the times are only as steady as the machine.

    python docs/block_times.py
"""
import timm
import torch

import splitfx
from splitfx.api.timing import rebalance_stages
from splitfx.base.provenance import provenance

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

sm = splitfx.convert(timm.create_model("resnet50"), x, 4, method="flops")
seconds = splitfx.measure_block_times(sm, x, y)
flops = [b.flops for b in sm.plan.blocks]
for block, f, s in zip(sm.plan.blocks, flops, seconds, strict=True):
    print(f"block {block.index} ({block.span}): {100 * f / sum(flops):.0f} % of the FLOPs, "
          f"{100 * s / sum(seconds):.0f} % of the time, {3 * f / s / 1e9:.0f} GFLOP/s")

sm = splitfx.convert(timm.create_model("resnet50"), x, 8, method="flops", stages=2)
flops_shares = sm.plan.stages.shares
timed = rebalance_stages(sm.plan, splitfx.measure_block_times(sm, x, y)).stages
print(f"K=8 by FLOPs, 2 stages by FLOPs: {sm.plan.stages.ranges}, "
      f"{' / '.join(f'{100 * s:.1f} %' for s in flops_shares)} of the FLOPs")
print(timed.table())
where = provenance()
print(f"commit {where['commit']}; {where['machine']}; `python docs/block_times.py`")
