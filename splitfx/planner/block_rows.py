"""The report's rows: one :class:`~splitfx.base.report.BlockPlan` per chosen block, and the model's name."""
from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx
from torch import nn

from ..base.report import BlockPlan
from ..passes.aux_cost import AuxCost
from ..passes.cuts import Cut
from ..passes.names import unprefix
from ..passes.node_cost import node_cost


def block_row(k: int, nodes: Sequence[fx.Node], G, start: int, end: int, params: int, saved: int, flops: int,
              aux: AuxCost | None, cut: Cut | None, step_peak: int = 0, own: int = 0, head: int = 0) -> BlockPlan:
    """Block ``k`` of the report: its modules, parameters, saved bytes (``own``: the block alone,
    ``head``: its aux head beyond that) and FLOPs, and its aux head."""
    return BlockPlan(
        index=k,
        modules=list(dict.fromkeys(
            unprefix(node_cost(G, nd.name).scope) for nd in nodes if node_cost(G, nd.name).scope and nd.op != "output"
        )),
        params=params,
        saved_bytes=saved,
        aux_saved_bytes=head if aux else 0,
        flops=flops,
        aux_flops=aux.flops if aux else 0,
        aux_params=aux.params if aux else 0,
        output_shapes=[list(s) for s in cut.shapes] if cut else None,
        handover_bytes=sum(node_cost(G, v).out_bytes for v in cut.nodes) if cut else 0,
        start=start,
        end=end,
        step_peak_bytes=step_peak,
        own_saved_bytes=own,
    )


def model_name(model: nn.Module) -> str:
    """timm's architecture name where there is one, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__
