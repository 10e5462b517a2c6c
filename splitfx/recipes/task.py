"""What the model is trained for, as its aux heads are told: the output's and the target's shapes
and dtypes, and the loss the user trains with.

A head predicts what the task's loss reads (a tensor shaped like the model's output, or the same
structure of tensors) and is scored with that loss, so a head never needs to know whether the task
is segmentation or regression: only which shapes to produce. The kind (:class:`TaskKind`) names
the built-in head each output gets and, where the user passes no ``loss_fn``, the default loss.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from ..base.choices import Choice
from ..base.errors import PlanError
from ..base.tensors import TensorSpec

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


class TaskKind(Choice):
    """How an output is predicted. ``CLASSES``: ``[B, C]`` scores for a ``[B]`` class target (the
    default, cross-entropy); ``REGRESSION``: ``[B]`` or ``[B, D]`` values; ``TOKENS``: ``[B, T, V]``,
    one prediction per position, never pooled across positions; ``DENSE``: ``[B, C, H, W]`` maps
    (segmentation, depth, heatmaps); ``IMAGE``: ``[B, c, sH, sW]`` images with the input's channels
    at its size or larger (super-resolution, restoration); ``STRUCTURED``: a dict, tuple or list of
    those, predicted leaf by leaf."""

    CLASSES = "classes"
    REGRESSION = "regression"
    TOKENS = "tokens"
    DENSE = "dense"
    IMAGE = "image"
    STRUCTURED = "structured"


def leaf_kind(out: TensorSpec, input_shape: tuple[int, ...]) -> TaskKind:
    """The built-in head for one output tensor, from its shape: vectors, sequences, maps; a 4-D map
    with the input's channels at the input's size or larger is an image."""
    rank = len(out.shape)
    if rank <= 2:
        return TaskKind.REGRESSION
    if rank == 3:
        return TaskKind.TOKENS
    if rank == 4:
        image = len(input_shape) == 4 and out.shape[1] == input_shape[1] and out.shape[2] >= input_shape[2] \
            and out.shape[3] >= input_shape[3]
        return TaskKind.IMAGE if image else TaskKind.DENSE
    raise PlanError(f"no built-in aux head predicts a {rank}-D output {list(out.shape)}: heads know vectors [B, D], "
                    "token sequences [B, T, V] and maps [B, C, H, W]; write a recipe whose make_head produces it "
                    "(docs/design.md, 'A recipe for a new task')")


@dataclass(frozen=True, eq=False)
class Task:
    """What every aux head is told: ``output`` (a :class:`TensorSpec`, or a dict/tuple/list of them:
    the model's output), ``target`` (the target's spec), ``loss_fn`` (the user's ``loss_fn(output,
    target)``; None: the kind's default, :meth:`loss`), ``classes`` (set for classification: heads
    predict that many scores) and the model's ``input_shape``."""

    output: Any
    target: TensorSpec
    loss_fn: LossFn | None = None
    classes: int | None = None
    input_shape: tuple[int, ...] = ()

    @property
    def kind(self) -> TaskKind:
        if self.classes is not None:
            return TaskKind.CLASSES
        if not isinstance(self.output, TensorSpec):
            return TaskKind.STRUCTURED
        return leaf_kind(self.output, self.input_shape)

    @property
    def outputs(self) -> int:
        """How many values a vector head predicts: the classes, or D of a ``[B, D]`` output (1 of ``[B]``)."""
        if self.classes is not None:
            return self.classes
        if isinstance(self.output, TensorSpec) and len(self.output.shape) <= 2:
            return self.output.shape[-1] if len(self.output.shape) == 2 else 1
        return 0

    @property
    def pools(self) -> bool:
        """Whether heads predict vectors (classes, values), so a recipe may pool a cut's tensors
        before its head (:class:`~.merge.MergeKind`); maps, images and tokens keep their positions."""
        return self.kind in (TaskKind.CLASSES, TaskKind.REGRESSION)

    @property
    def scores(self) -> bool:
        """Whether the model outputs one ``[B, C]`` tensor (class scores or values)."""
        return isinstance(self.output, TensorSpec) and len(self.output.shape) == 2

    @property
    def head_loss(self) -> LossFn | None:
        """The loss aux predictions are scored with; None: cross-entropy on classes, the default, and
        what heads classifying for ``num_classes=`` use whatever the user's loss reads."""
        if self.kind == TaskKind.CLASSES and (self.loss_fn is None or not self.scores):
            return None
        return self.loss

    @property
    def loss(self) -> LossFn:
        """The loss aux heads and the last block train with: the user's, else the kind's default."""
        return self.loss_fn if self.loss_fn is not None else default_loss(self)


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of ``[B, T, V]`` scores against ``[B, T]`` token ids, averaged over tokens."""

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(scores.flatten(0, -2), target.flatten())


def default_loss(task: Task) -> nn.Module:
    """The loss used where the user passes none: cross-entropy for class targets (per position for
    maps, per token for sequences), L1 for images (EDSR's and Local-SR's), MSE for other values. A
    structured output has no default: the user's loss says which leaves it reads."""
    kind, target = task.kind, task.target
    if kind == TaskKind.STRUCTURED:
        raise PlanError("the model returns a structure of tensors: pass loss_fn=f with f(output, target) -> loss, "
                        "the loss its aux heads and last block train with")
    if kind == TaskKind.CLASSES or (not target.floating and kind == TaskKind.DENSE):
        return nn.CrossEntropyLoss()
    if not target.floating and kind == TaskKind.TOKENS:
        return TokenCrossEntropy()
    if not target.floating:
        raise PlanError(f"no default loss scores a {list(task.output.shape)} output against an integer target "
                        f"{list(target.shape)}: pass loss_fn=f with f(output, target) -> loss")
    return nn.L1Loss() if kind == TaskKind.IMAGE else nn.MSELoss()


def specs(output: Any) -> Any:
    """The model's output as :class:`TensorSpec` leaves in the same structure."""
    return tree_map(lambda t: TensorSpec.of(t) if isinstance(t, torch.Tensor) else t, output)


def infer_task(output: Any, target: torch.Tensor | None, input_shape: tuple[int, ...], loss_fn: LossFn | None,
               num_classes: int | None) -> Task:
    """The task from the model's (fake) ``output``, an example ``target`` (None: a ``[B]`` class
    target for class scores, else a target shaped like the output) and ``num_classes`` (given:
    classification heads whatever the output, as an encoder trained by its own ``loss_fn``)."""
    out = specs(output)
    batch = input_shape[0] if input_shape else 1
    scores = isinstance(out, TensorSpec) and len(out.shape) == 2
    if target is not None:
        tgt = TensorSpec.of(target)
    elif num_classes is not None or scores:
        tgt = TensorSpec((batch,), torch.long)
    elif isinstance(out, TensorSpec):
        tgt = out
    else:
        leaves = [s for s in tree_flatten(out)[0] if isinstance(s, TensorSpec)]
        tgt = leaves[0] if leaves else TensorSpec((batch,), torch.long)
    if num_classes is None and scores and not tgt.floating and len(tgt.shape) == 1:
        num_classes = out.shape[-1]
    return Task(out, tgt, loss_fn, num_classes, tuple(input_shape))


def scoring(head: nn.Module) -> LossFn:
    """The loss ``head``'s predictions are scored with: the task's, carried by the module
    :func:`~.predict.predict` made (and by the whole head: :func:`carry_criterion`), else
    cross-entropy (classification by default, and heads a recipe built without it). One lookup:
    it runs at every local loss of every step."""
    return head.__dict__.get("criterion", F.cross_entropy)


def carry_criterion(head: nn.Module) -> nn.Module:
    """``head``, carrying the task's loss of the :func:`~.predict.predict` module inside it (a
    recipe's ``Sequential`` of copied layers ending in one), so :func:`scoring` finds it on the head
    itself; found once, when the head is built."""
    if "criterion" not in head.__dict__:
        found = next((m.__dict__["criterion"] for m in head.modules() if "criterion" in m.__dict__), None)
        if found is not None:
            head.__dict__["criterion"] = found
    return head
