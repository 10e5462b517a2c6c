"""``ffr``: Forward-Forward for Regression (Liu et al., 2026).

Published (the abstract; neither the paper's body nor code was available): neuron groups compete under
distance-aware ordinal supervision (no positive/negative pairs); a stratified ladder, shallow layers
discriminating coarse ordinal bins and deeper ones finer bins; the prediction and its uncertainty from
the multi-scale predictors. Forward-Forward (Hinton 2022): each layer trained by its own goodness, its
input length-normalised so that goodness cannot pass through.

What splitfx does (docs/design.md, "FFR"; "splitfx's reading" marks what the abstract leaves open, as
docs/METHODS.md proposes it):

* Blocks are what the planner or the user cuts: one layer each for an MLP of L layers at
  ``num_blocks=L`` (``splitfx.models.MLP``), or ``split_points``. Every block after the first reads
  what the previous one handed over detached and length-normalised per sample (:meth:`FFR.passed`), in
  training and in inference alike. splitfx's reading: to unit root-mean-square (length √n for n
  values), not unit length, so a layer keeps the scale it was initialised for; only the direction
  passes, as in FF.
* Each cut's head has no parameters (:class:`~.goodness.GoodnessHead`): goodness of G neuron groups,
  softmax at temperature ``tau``, cross-entropy to a Gaussian ordinal target of width 1/G plus
  ``penalty`` × the squared CDF distance (METHODS 2–4, splitfx's reading as proposed there). Ladder:
  G = ``groups[0]`` at the first cut, doubling per cut up to ``groups[1]`` (4, 8, 16, 32, 32, …).
  Targets reach [0, 1] linearly between their training range's ends, the 0 and 1 quantiles
  (:class:`~.goodness.TargetScale`; splitfx's reading: equal-population bins, the empirical
  distribution function, predicted worse, their outer bins too wide for the tails): buffers fitted on
  the first training batch, or on a whole training set by :meth:`FFR.fit_targets` (what ``splitfx
  train`` does); ±3 (standardised targets) before either.
* METHODS 5's "each layer also receives the previous layer's detached p_{l−1}" (splitfx's reading):
  a head's logits add the log of the previous head's detached distribution, spread over its finer
  bins and mixed with the uniform one (weight ``ladder``), so a deeper head refines the coarser one's
  answer. The layers themselves are the user's, and their inputs keep their width.
* The deepest layer's linear regression head: the last block (the last layer with the model's output
  layer) trains with Huber loss (``huber`` = δ; None: the task's loss) where the user gave no
  ``loss_fn``, as splitfx's last block trains with the task's loss (departure: the deepest layer has
  no goodness head; its layer is trained by the output layer's loss).
* Prediction (``SplitModule.forward``, in any mode, and the ONNX graph: ``traits.infers``): each head's
  bins read in the target's units give ``ŷ_l`` and ``v_l`` (each bin spread evenly over its width, so
  a confident coarse head is not a precise one), ``v_l`` scaled so that its running mean over training
  batches equals the head's running squared error (calibrated; splitfx's reading); the output layer
  gives ``ŷ_L`` with ``v_L`` the running mean of its squared training error (a buffer of the last head;
  ``momentum`` of these running means). Weights ``w_l ∝ 1 / (v_l + eps)``: prediction ``Σ w_l ŷ_l``,
  uncertainty ``Σ w_l v_l + Σ w_l (ŷ_l − ŷ)²``, each shaped like the model's output.
* One value per sample only (``[B]`` or ``[B, 1]`` outputs; other tasks are refused). Not pipelined
  across ranks.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from ..base.errors import PlanError
from .base import Boundary, GraphInfo, Recipe, RecipeTraits, SplitParts, handed
from .goodness import GoodnessHead, ordinal_loss
from .layout import channels
from .registry import register_recipe
from .task import TaskKind
from .values import count, weight


class LastGoodness(GoodnessHead):
    """The last cut's head, which also keeps what the output layer needs: ``final_error``, the running
    mean of its squared training error (its ``v_L``), and its Huber loss (``criterion``; None: the
    task's)."""

    def __init__(self, *args, huber: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("final_error", torch.ones(()))
        self.criterion = nn.HuberLoss(delta=huber) if huber is not None else None


@register_recipe("ffr")
class FFR(Recipe):
    paper = "Liu et al., 2026 (abstract only)"
    traits = RecipeTraits(pipelined=False, infers=True)

    def __init__(self, tau: float = 0.5, penalty: float = 1.0, groups=(4, 32), ladder: float = 0.9,
                 huber: float | None = 1.0, eps: float = 1e-4, momentum: float = 0.9):
        if not (isinstance(groups, (tuple, list)) and len(groups) == 2):
            raise ValueError(f"groups takes (first cut, most), such as (4, 32); got {groups!r}")
        self.groups = (count("groups[0]", groups[0], 2), count("groups[1]", groups[1], 2))
        self.tau, self.penalty, self.eps = weight("tau", tau), weight("penalty", penalty), weight("eps", eps)
        if not self.tau:
            raise ValueError("tau must be a number > 0, got 0")
        self.ladder, self.huber = weight("ladder", ladder), None if huber is None else weight("huber", huber)
        if self.ladder > 1:
            raise ValueError(f"ladder is the previous head's weight in a head's prior, in [0, 1]; got {ladder}")
        self.momentum = weight("momentum", momentum)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be below 1 (the output layer's error would never move), got {momentum}")

    def groups_at(self, boundary: Boundary) -> int:
        """The ladder: ``groups[0]`` at the first cut, twice as many at each next one, at most ``groups[1]``."""
        return min(self.groups[0] * 2 ** min(boundary.index, 30), max(self.groups))

    def head_key(self, boundary: Boundary, graph: GraphInfo) -> Hashable:
        last = boundary.index == boundary.num_blocks - 2
        return super().head_key(boundary, graph), self.groups_at(boundary), last

    def make_head(self, boundary: Boundary, graph: GraphInfo) -> nn.Module:
        task = boundary.task
        if task is None or task.kind != TaskKind.REGRESSION or task.outputs != 1:
            kind = None if task is None or task.kind == TaskKind.CLASSES else str(task.kind)
            what = "class scores" if kind is None else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} output"
            raise PlanError(f"ffr predicts one value per sample (a [B] or [B, 1] output with a float target), and "
                            f"this model gives {what}; pass example_target= with float targets of the output's "
                            "shape, or use another recipe")
        args = (boundary.layout, channels(boundary.shape, boundary.layout), self.groups_at(boundary), self.tau,
                self.ladder if boundary.index else 0.0)
        if boundary.index == boundary.num_blocks - 2:
            return LastGoodness(*args, huber=self.huber if task.loss_fn is None else None)
        return GoodnessHead(*args)

    def local_loss(self, head, features, target, inputs, prior=None):
        """The ordinal loss of ``head`` (``prior``: the previous head's detached bin probabilities)."""
        return self._ordinal(head, features, target, prior)[0]

    def _ordinal(self, head, features, target, prior):
        """The loss and the bins' detached probabilities (the next head's prior), which training also
        folds into the head's running errors."""
        loss, logits = ordinal_loss(head, features, target, self.penalty, prior)
        p = torch.softmax(logits.detach(), dim=1)
        if head.training:
            head.track(p, target, self.momentum)
        return loss, p

    @staticmethod
    def passed(outs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """What the next block reads: the floating tensors a block handed over, detached and divided
        by their joint root-mean-square per sample (the others detached as they are)."""
        outs = tuple(t.detach() for t in outs)
        floating = [t for t in outs if t.is_floating_point()]
        if not floating:
            return outs
        energy = sum(torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float32) ** 2 for t in floating)
        rms = (energy / sum(t[0].numel() for t in floating)).sqrt().clamp_min(1e-12)
        return tuple((t / rms.view(-1, *[1] * (t.dim() - 1)).to(t.dtype)) if t.is_floating_point() else t
                     for t in outs)

    def fit_targets(self, heads: Sequence[nn.Module], targets: torch.Tensor) -> None:
        """Fit every head's target scale to ``targets`` (a whole training set's: finer than one batch)."""
        for head in heads:
            head.scale.fit(targets)

    def losses(self, parts: SplitParts, inputs: tuple, target: torch.Tensor,
               h: tuple | None = None) -> Iterator[torch.Tensor]:
        if parts.heads and not is_fake(target) and not bool(parts.heads[0].scale.fitted):
            self.fit_targets(parts.heads, target)  # the first training batch, unless fit_targets came first
        h, prior = (inputs if h is None else h), None
        for k, block in enumerate(parts.blocks):
            out = block(*h)
            if parts.is_final(k):
                yield self._final_loss(parts, out, target)
            else:
                outs = handed(out)
                parts.handing_over(k, outs)
                loss, prior = self._ordinal(parts.heads[k], parts.merges[k](*outs), target, prior)
                yield loss
                h = self.passed(outs)
                del outs, loss
            del out

    def _final_loss(self, parts: SplitParts, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        last = parts.heads[-1] if parts.heads else None
        criterion = getattr(last, "criterion", None)
        loss = criterion(out, target) if criterion is not None else parts.loss_fn(out, target)
        if last is not None:  # the output layer's running squared error: its v_L
            error = (out.detach().float().reshape(-1) - target.detach().float().reshape(-1)).pow(2).mean()
            last.final_error.lerp_(error.to(last.final_error), 1 - self.momentum)
        return loss

    def infer(self, parts: SplitParts, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, uncertainty), each shaped like the model's output: the blocks run as in
        training (each reading the previous one's normalised output), every head and the output layer
        predict, and the predictions are weighed by the inverse of their variances."""
        h, means, variances, prior = inputs, [], [], None
        for k, block in enumerate(parts.blocks):
            out = block(*h)
            if k == len(parts.blocks) - 1:
                break
            outs = handed(out)
            mean, variance, prior = parts.heads[k].predict(parts.merges[k](*outs), prior)
            means.append(mean)
            variances.append(variance)
            h = self.passed(outs)
        last = out.float() if out.dim() == 1 else out.float().flatten(1)[:, 0]
        means.append(last)
        variances.append(parts.heads[-1].final_error.expand_as(last) if parts.heads else torch.zeros_like(last))
        mean, variance = torch.stack(means), torch.stack(variances)
        w = 1 / (variance + self.eps)
        w = w / w.sum(0)
        prediction = (w * mean).sum(0)
        uncertainty = (w * variance).sum(0) + (w * (mean - prediction) ** 2).sum(0)
        return prediction.reshape(out.shape).to(out.dtype), uncertainty.reshape(out.shape).to(out.dtype)
