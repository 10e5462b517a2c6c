"""Why a model failed a stage, where its reason tells: the cause the coverage report names beside it.

Each :class:`Cause` matches a failed stage by its name and a pattern over ``"STATUS: REASON"``; the
first that matches is the cause. Its ``kind`` says where the fix lies: ``machine`` (memory or time
on the machine that ran the sweep), ``upstream`` (timm, torch.fx or an exporter, with the upstream
issue or the reproduction in ``tests/``), ``model`` (the model's own state), ``splitfx``. A failure
no rule matches is reported as not yet diagnosed, so the report shows what is left to look at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    label: str
    kind: str  # machine, upstream, model or splitfx
    detail: str  # what happens, and the upstream issue or the reproduction
    pattern: str  # re.search over "STATUS: REASON"
    stages: tuple[str, ...] = ()  # the stages it applies to; () for any

    def matches(self, stage: str, status: str, reason: str) -> bool:
        return (not self.stages or stage in self.stages) and re.search(self.pattern, f"{status}: {reason}") is not None


CAUSES = (
    Cause("memory", "machine",
          "the stage needs more memory than a sweep worker may use (14 GiB of address space each, two at a "
          "time, on a 23 GiB machine): rerun alone with `--params 500M: --jobs 1` and SPLITFX_WORKER_MEMORY=0 "
          "(onnxruntime maps the external weights file, which counts as address space too; aimv2_3b's 2.7B "
          "parameters pass so), or on a bigger machine; a model whose float32 weights alone come near the "
          "machine's memory cannot run at all (vit_7b_patch16_dinov3: 25 GiB; vit_5b_patch16_sapiens2: 19 GiB, "
          "and its step needs as much again for gradients; both run with a 21 GiB limit so that they fail "
          "with this error instead of the kernel's OOM killer)",
          r"can't allocate memory|bad_alloc|MemoryError|Cannot allocate memory|out of memory|killed by SIGKILL"),
    Cause("time", "machine", "the stage ran past --timeout on two CPU cores: rerun alone with a longer --timeout",
          r"^timeout: "),
    Cause("timm fx tracer", "upstream",
          "timm's own fx tracer (`timm.layers.get_graph_node_names`) fails on control flow in timm's forward; "
          "counted as timm's failure, splitfx's own stages run regardless (gemma4_vit: `if x.ndim != 4` in "
          "`_assert_raw_img_conformant`, timm/models/gemma4_vit.py:830; timm's fix: that check in a function "
          "registered with `timm.layers.register_notrace_function`; reproduction: "
          "`timm.layers.get_graph_node_names(timm.create_model('gemma4_vit_167m'))`)", r".", ("timm_fx",)),
    Cause("control flow on the input", "upstream",
          "the model's top-level forward branches on its input's data or batch size: torch.fx cannot trace "
          "control flow on a traced value (torch.fx docs, 'Limitations of Symbolic Tracing'; splitfx takes "
          "the example's branch only where shapes alone decide it), and the auto-leaf fallback cannot make "
          "the whole model a leaf", r"top-level forward of \w+ failed", ("trace",)),
    Cause("training-only branch at the top level", "splitfx",
          "the model's own forward computes something else in training, other than a call eval skips (those, "
          "like sapiens2's rotary coordinate augmentation, are gated on the training flag: passes/replay.py), "
          "and splitfx keeps one graph for both modes; two graphs switched by mode would lift it",
          r"itself branches on self\.training", ("trace",)),
    Cause("a parameter every block reads", "model",
          "a parameter used in several places keeps its uses in one block unless told otherwise (the gradient "
          "from every use is E2E's), so the block between its first and last use holds nearly the whole model: "
          "vit_*_rope_mixed*'s learnable `rope.freqs`, vit_srelpos_*'s `shared_rel_pos` MLP; `tied='detach'` "
          "(`--tied detach`) lets the first block train it and the later ones read it detached "
          "(vit_small_patch16_rope_mixed_224 at K=4: 0.95× → 0.29×, vit_srelpos_small_patch16_224: 0.95× → 0.27×; "
          "`splitfx plan MODEL --blocks 4 --batch 2 --tied detach`)",
          r"kept in one block, used by several", ("saves",)),
    Cause("ill-conditioned at random init", "model",
          "random-init weights in eval mode make PyTorch's own float32 logits differ from its float64 ones by "
          "more than the tolerance, so no float32 runtime can match them (the sweep re-estimates BatchNorm "
          "statistics on 8 samples after its step and verifies on the step's batch, which lifts this for "
          "most BatchNorm models; not for selecsls84, a deep conv-BN-ReLU chain without residual adds, "
          "where float32's relative error grows about 1.7× per block); reproduction: "
          "`test_an_ill_conditioned_model_is_named_as_such_and_nothing_is_written` in "
          "tests/test_export.py",
          r"ill-conditioned at these weights", ("onnx",)),
)


def cause_of(stage: str, status: str, reason: str) -> Cause | None:
    """The first cause that matches a failed stage, or None if none does."""
    return next((c for c in CAUSES if c.matches(stage, status, reason or "")), None)
