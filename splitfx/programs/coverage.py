"""One timm model through every stage, in this process: what ``splitfx coverage`` runs per model.

Stages, in order: ``create`` (random weights), ``timm_fx`` (timm's own fx tracer), ``trace``, ``plan``
(K=4 and K=8, or the largest K the model allows when fewer), ``saves`` (the K=4 plan keeps at most
:data:`SAVES` of end-to-end training's saved activations), ``convert`` (the K=4 plan), ``step`` (one
local training step, each block stepped once its gradients are final, finite losses; a model without
a classifier, such as a ``*_enc`` encoder, is trained on :func:`feature_loss`; then BatchNorm
statistics are re-estimated on the batch and seeded noise, 8 samples), ``isolation`` (in that step,
each loss's backward reached exactly the parameters its recipe says it trains, observed by gradient
hooks: :class:`~splitfx.runtime.isolation.GradientReach`), ``chain`` (in eval mode, the blocks run one
after another and the converted module's forward both ``torch.equal`` the original), ``onnx`` (export +
onnxruntime parity). A stage runs when the stage it needs (:data:`NEEDS`) passed; ``timm_fx``,
``saves`` and ``isolation`` are observations nothing else needs, so a model timm cannot fx-trace, or
one that saves too little, still runs splitfx's other stages. The sweep over many models is
:mod:`.sweep`.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..base.errors import first_line

STAGES = ("create", "timm_fx", "trace", "plan", "saves", "convert", "step", "isolation", "chain", "onnx")
NEEDS = {"timm_fx": "create", "trace": "create", "plan": "trace", "saves": "plan", "convert": "plan",
         "step": "convert", "isolation": "step", "chain": "convert", "onnx": "step"}  # onnx: on settled statistics
SPLITFX_STAGES = tuple(s for s in STAGES if s != "timm_fx")  # every stage but timm's own tracer
# A pass keeps at most this fraction of E2E's saved activations at K=4: it saves at least a quarter. Not a
# balance target (that is 0.25): a CNN's stem, which no cut may split from its first residual block, holds
# most of a 224² image's activations (resnet18 at batch 2: 0.57×), while the models this stage is for keep
# 0.95-0.98× (a parameter every block reads, such as a shared rotary table, holds them in one block).
SAVES = 0.75
BLOCKS = (4, 8)
SETTLE_SAMPLES = 8  # BatchNorm statistics are re-estimated on this many samples after the step
CLASSES = 10  # every model is created with this many; an encoder (no classifier) trains on feature_loss

StageHook = Callable[[str, "dict[str, Any] | None"], None]  # (stage, None) on start, (stage, result) on end


@dataclass
class Outcome:
    model: str
    family: str
    status: str  # pass | fail (the sweep adds timeout | crash)
    stage: str | None = None  # the first failing stage
    reason: str = ""
    seconds: float = 0.0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage → status, seconds[, reason]
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # "4"/"8" → k and memory figures


def family(name: str) -> str:
    """timm's module for the model (``resnet``, ``vision_transformer``, ...)."""
    import timm.models._registry as registry

    return registry._model_to_module.get(name.split(".")[0], "?")


def with_prerequisites(stages: Iterable[str]) -> tuple[str, ...]:
    """``stages`` plus every stage they need, in run order (``["plan"]`` → create, trace, plan)."""
    wanted = set(stages)
    unknown = wanted - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    needed = set(wanted)
    for stage in wanted:
        while stage in NEEDS:
            stage = NEEDS[stage]
            needed.add(stage)
    return tuple(s for s in STAGES if s in needed)


def plan_figures(plan, asked: int) -> dict[str, Any]:
    """K used for a request of ``asked`` blocks and how evenly it splits the saved activations."""
    e2e = max(plan.e2e_saved_bytes, 1)
    return {"asked": asked, "k": plan.num_blocks, "local_peak_bytes": plan.local_peak_bytes,
            "e2e_saved_bytes": plan.e2e_saved_bytes, "local_over_e2e": plan.local_peak_bytes / e2e,
            "floor_ratio": plan.local_peak_bytes * plan.num_blocks / e2e}


def _create(c: SimpleNamespace) -> None:
    import timm
    import torch

    from .models import default_input_size

    torch.manual_seed(0)
    c.model = timm.create_model(c.name, pretrained=False, num_classes=CLASSES)
    c.x = torch.randn(2, *default_input_size(c.model))
    c.y = torch.randint(0, CLASSES, (2,))


def _timm_fx(c: SimpleNamespace) -> None:
    import timm

    try:
        timm.layers.get_graph_node_names(c.model)
    except Exception as err:
        raise RuntimeError(f"timm cannot fx-trace it: {first_line(err)}") from err


def _trace(c: SimpleNamespace) -> None:
    from ..passes.trace import trace

    trace(c.model, (c.x,))


def _plan(c: SimpleNamespace) -> None:
    from ..api.planning import plan as make_plan
    from ..base.errors import PlanError

    made: dict[int, Any] = {}

    def at(k: int):
        if k not in made:
            made[k] = make_plan(c.model, c.x, k, num_classes=CLASSES)  # an encoder's output has none
        return made[k]

    cap = None
    for k in c.blocks:
        want = k if cap is None else min(k, cap)
        try:
            try:
                c.plans[str(k)] = at(want)
            except PlanError as err:
                if err.max_blocks is None:
                    raise
                cap = err.max_blocks
                c.plans[str(k)] = at(cap)
        except Exception as err:
            if k == c.blocks[0]:
                raise
            raise RuntimeError(f"K={k}: {first_line(err)}") from err
    c.plan = c.plans[str(c.blocks[0])]


def _saves(c: SimpleNamespace) -> None:
    figures = plan_figures(c.plan, c.blocks[0])
    if figures["local_over_e2e"] > SAVES:
        shared = getattr(c.plan, "shared_parameters", None)
        why = f"; kept in one block, used by several: {', '.join(shared)}" if shared else ""
        raise AssertionError(f"the K={figures['k']} plan keeps {figures['local_over_e2e']:.2f}× of E2E's saved "
                             f"activations (a pass keeps at most {SAVES:.2f}×){why}")


def feature_loss(output: Any, target: Any) -> Any:
    """The last block's loss for a model without a classifier (an encoder's tokens): the mean square of
    its floating outputs, so the sweep trains encoders too."""
    from torch.utils._pytree import tree_leaves

    floating = [t for t in tree_leaves(output) if getattr(t, "is_floating_point", bool)()]
    if not floating:
        raise ValueError("the model has no floating output to train on")
    return sum(t.float().pow(2).mean() for t in floating)


def _convert(c: SimpleNamespace) -> None:
    from ..api.conversion import convert
    from ..api.planning import split_of
    from ..base.tensors import class_scores

    scores = class_scores(split_of(c.plan).outputs)
    c.sm = convert(c.model, c.x, plan=c.plan, loss_fn=None if scores else feature_loss)


def _step(c: SimpleNamespace) -> None:
    import torch

    from ..runtime.isolation import GradientReach

    # One block's gradients at a time, each freed once stepped: the whole model's would be another
    # copy of the weights (aimv2_3b: 11 GB), kept through export.
    with GradientReach(c.sm) as c.reach:
        losses = c.sm.train_step(c.x, c.y, torch.optim.SGD(c.sm.parameters(), lr=1e-3), step_each_block=True,
                                 after_loss=c.reach.after_loss)
    if not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"non-finite local losses {losses}")
    settle_batchnorm(c.model, c.x)


def _isolation(c: SimpleNamespace) -> None:
    violations = c.reach.violations()
    if violations:
        raise AssertionError("; ".join(violations))


def settle_batchnorm(model: Any, x: Any, samples: int = SETTLE_SAMPLES) -> None:
    """Re-estimate every BatchNorm's running statistics on one batch of ``samples``: ``x`` and seeded
    noise of its shape after it, as a trained model has them.

    After one step they are still nearly their initial mean 0, variance 1, which does not describe
    the activations, so eval mode scales them up layer after layer: efficientnetv2_m's logits reach
    1e6 and PyTorch's own float32 differs from float64 by as much, maxvit_*_512's by 5e-4. The eval
    and ONNX stages would then measure that conditioning, not splitfx or the exporter. ``x`` alone
    (two samples) is too few where a BatchNorm sees one value per sample: RexNet's squeeze-excite
    BatchNorm, on pooled features, gets variances down to 1e-7 from two values, and scaling by
    1/sqrt of that amplifies float32 rounding until rexnetr_100's logits miss float64 by 4× the
    tolerance (8 samples: 0.06×). Statistics from a batch describe that batch best (random-init
    RepVGG-D2se, settled on ``x`` alone, gives eval outputs of 0.06 on it and 8e4 on fresh noise), so
    the ONNX stage verifies on ``x``. Under ``no_grad``: torch's ``update_bn`` would otherwise keep the
    whole model's graph alive."""
    import torch
    from torch.optim.swa_utils import update_bn

    with torch.no_grad():
        update_bn([settling_batch(x, samples)], model)


def settling_batch(x: Any, samples: int = SETTLE_SAMPLES) -> Any:
    """``x`` followed by seeded Gaussian noise of its shape, ``samples`` in all (at least ``x``)."""
    import torch

    noise = torch.randn((max(samples - x.shape[0], 0), *x.shape[1:]),
                        generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    return torch.cat([x, noise])


def _chain(c: SimpleNamespace) -> None:
    import torch

    from ..base.tensors import equal_outputs

    c.sm.eval()
    with torch.no_grad():
        reference = c.model(c.x)
        if not equal_outputs(c.sm.chained(c.x), reference):
            raise AssertionError("the blocks run one after another differ from the original model in eval mode")
        if not equal_outputs(c.sm(c.x), reference):
            raise AssertionError("the converted module's eval outputs differ from the original model")


def _onnx(c: SimpleNamespace) -> None:
    import tempfile

    from ..api.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(dir=c.onnx_dir) as tmp:
        # On the batch the BatchNorm statistics were estimated on: noise of the same shape takes
        # random-init RepVGG-D2se where float32 rounding is amplified to its output (see settle_batchnorm).
        export_onnx(c.sm, os.path.join(tmp, "m.onnx"), c.x, verify_on="example")


RUN = {"create": _create, "timm_fx": _timm_fx, "trace": _trace, "plan": _plan, "saves": _saves,
       "convert": _convert, "step": _step, "isolation": _isolation, "chain": _chain, "onnx": _onnx}


def check(name: str, stages: Iterable[str] = STAGES, *, blocks: tuple[int, ...] = BLOCKS,
          onnx_dir: str | None = None, on_stage: StageHook | None = None) -> Outcome:
    """Run ``stages`` (and the stages they need) on timm model ``name``; a stage runs only when the
    one it needs passed (a skipped stage has no entry). ``on_stage`` hears each stage start and end (the sweep's
    worker reports them, so a timeout or crash names the stage in flight)."""
    outcome = Outcome(name, family(name), "pass")
    c = SimpleNamespace(name=name, blocks=blocks, onnx_dir=onnx_dir, plans={})
    began = time.perf_counter()
    for stage in with_prerequisites(stages):
        if stage in NEEDS and outcome.stages.get(NEEDS[stage], {}).get("status") != "pass":
            continue
        if on_stage:
            on_stage(stage, None)
        start = time.perf_counter()
        result: dict[str, Any] = {"status": "pass"}
        try:
            RUN[stage](c)
        except Exception as err:
            result = {"status": "fail", "reason": first_line(err)}
        result["seconds"] = round(time.perf_counter() - start, 3)
        outcome.stages[stage] = result
        if on_stage:
            on_stage(stage, result)
        if result["status"] != "pass" and outcome.status == "pass":
            outcome.status, outcome.stage, outcome.reason = "fail", stage, result["reason"]
    outcome.plans = {k: plan_figures(p, int(k)) for k, p in c.plans.items()}
    outcome.seconds = round(time.perf_counter() - began, 3)
    return outcome
