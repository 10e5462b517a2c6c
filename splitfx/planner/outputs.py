"""Model outputs computed before the last block: the last block's loss reads them detached.

A cut hands an early output over like any other tensor, detached, so the final loss's gradient
stops there: an auxiliary classifier's logits computed half-way, or a feature level of a backbone
that returns every stage. The plan says which outputs and where; where the loss could read no
output with a gradient path (every floating output early), it refuses, instead of torch's bare
"element 0 of tensors does not require grad" at the first step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_leaves

from ..base.errors import NoGradientError, PlanError
from ..passes.modes import by_mode


def early_outputs(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]]) -> list[tuple[str, int]]:
    """(output path, block) for every output tensor computed before the last block."""
    last = set(nodes[-1])
    found = []
    training = getattr(gm, "model", gm).training
    for path, leaf in tree_flatten_with_path(_loss_output(gm.graph.output_node().args[0], training))[0]:
        if isinstance(leaf, fx.Node) and leaf not in last and leaf.op != "placeholder":
            found.append((keystr(path) or "the output", next(k for k, block in enumerate(nodes) if leaf in block)))
    return found


def _loss_output(output: Any, training: bool) -> Any:
    """The output structure the loss reads: that of the model's mode where the output is picked by
    mode, and a named tuple built in the graph (torchvision's ``InceptionOutputs``) as the tuple of
    its fields."""
    if isinstance(output, fx.Node) and output.target is by_mode:
        output = output.args[1 if training else 2]
    target = output.target if isinstance(output, fx.Node) and output.op == "call_function" else None
    if isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields"):
        return dict(zip(target._fields, (*output.args, *(output.kwargs[f] for f in target._fields[len(output.args):])),
                        strict=True))
    return output


def _where(early: list[tuple[str, int]]) -> str:
    return ", ".join(f"output{path} in block {k}" for path, k in early)


def output_notes(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]], outputs: Any, model_name: str
                 ) -> list[str]:
    """A note naming the early outputs; a :class:`PlanError` where every floating tensor of the
    model's ``outputs`` is early."""
    early = early_outputs(gm, nodes)
    if not early:
        return []
    if len(early) >= sum(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_leaves(outputs)):
        raise PlanError(f"every output of {model_name} is computed before its last block ({_where(early)}), so the "
                        "last block's loss would read them detached and train nothing: use fewer blocks, or "
                        "split_points= before the layers that compute them")
    return [f"the last block's loss reads {_where(early)} detached: its gradient stops at the cut (the block is "
            "trained by its aux head; cut after that layer with split_points= to train it with the loss)"]


def loss_without_gradient(gm: fx.GraphModule, nodes: Sequence[Sequence[fx.Node]], err: RuntimeError,
                          model_name: str) -> PlanError | None:
    """The error to raise instead of torch's when the last loss reads only early outputs (``err``
    from the simulated step), or None where that is not the cause."""
    early = early_outputs(gm, nodes)
    if not early or not (isinstance(err, NoGradientError) or "does not require grad" in str(err)):
        return None
    return PlanError(f"{model_name}'s loss_fn reads no output its last block computes (it reads {_where(early)}, "
                     "handed over detached), so the last block would train nothing: use fewer blocks, or "
                     "split_points= before the layers that compute those outputs")
