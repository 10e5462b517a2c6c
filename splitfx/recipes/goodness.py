"""FFR's parameter-free heads: neuron groups' goodness as an ordinal distribution over target bins.

:class:`TargetScale` maps targets to [0, 1] linearly between their training range's ends (the 0 and 1
quantiles) and bin centres back to the target's units.
:class:`GoodnessHead` splits a cut's units into ``groups`` groups, scores each by its goodness (the
mean of its squared activities, over positions too on maps and sequences) and reads
``softmax(goodness / tau)`` as the probability of ``groups`` equal bins of [0, 1]; its loss is the
cross-entropy to a Gaussian soft target around the scaled target plus the squared distance of the
two cumulative distributions (:func:`ordinal_loss`). Everything is element-wise arithmetic, clamps
and sums, so the heads export to ONNX with the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import Layout, pool

SPAN = 3.0  # the default range: ±3 standard deviations (targets standardised on the training set)


class TargetScale(nn.Module):
    """Targets ↔ [0, 1], linearly between ``low`` and ``high``: the training targets' 0 and 1
    quantiles (their least and greatest value); a target outside them maps to 0 or 1. Until
    :meth:`fit` they are ±3 (targets standardised on the training set, as splitfx's data loaders give
    them); ``fitted`` says whether they were fitted. All three are buffers: in the ``state_dict`` and,
    as constants, in the ONNX graph."""

    def __init__(self):
        super().__init__()
        self.register_buffer("low", torch.tensor(-SPAN))
        self.register_buffer("high", torch.tensor(SPAN))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, targets: torch.Tensor) -> None:
        """Set the range to that of ``targets`` (all of a training set's, or one batch's)."""
        y = targets.detach().reshape(-1).float()
        y = y[torch.isfinite(y)]
        if y.numel() < 2:
            raise ValueError(f"ffr fits its target scale on at least 2 finite targets, got {y.numel()}")
        low, high = y.min(), y.max()
        self.low.copy_(low)
        self.high.copy_(torch.maximum(high, low + 1e-6 * low.abs().clamp_min(1)))
        self.fitted.fill_(True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (any shape) in [0, 1]."""
        return ((y - self.low) / (self.high - self.low)).clamp(0, 1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """The target whose scaled value is ``u`` (any shape, in [0, 1])."""
        return self.low + u * (self.high - self.low)


class GoodnessHead(nn.Module):
    """The ordinal head of one cut (no parameters): ``groups`` groups of the cut's ``width`` units,
    contiguous and as equal as they divide; ``forward`` gives the log-probabilities of the bins."""

    def __init__(self, layout: Layout, width: int, groups: int, tau: float, ladder: float = 0.0):
        super().__init__()
        self.layout, self.width, self.groups, self.tau, self.ladder = layout, width, min(groups, width), tau, ladder
        self.scale = TargetScale()
        # Running means over training batches of the squared error of its prediction and of its variance
        # (target units²): :meth:`predict` scales the variance by their ratio, so it is calibrated.
        self.register_buffer("error", torch.ones(()))
        self.register_buffer("spread", torch.ones(()))
        if width % self.groups:  # unequal groups: a fixed averaging matrix (not state: rebuilt from the shape)
            member = torch.arange(width) * self.groups // width
            mean = F.one_hot(member, self.groups).float()
            self.register_buffer("average", mean / mean.sum(0), persistent=False)
        else:
            self.average = None

    def goodness(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, groups]``: each group's mean squared activity."""
        energy = pool(x.square(), self.layout)
        if self.average is None:
            return energy.unflatten(1, (self.groups, -1)).mean(-1)
        return energy @ self.average.to(energy.dtype)

    def lift(self, prior: torch.Tensor) -> torch.Tensor:
        """The log of the previous head's bin probabilities ``prior`` ``[B, G']`` spread over this
        head's bins (by how much of each coarse bin each fine bin covers), mixed with the uniform
        distribution at weight 1 − ``ladder``."""
        coarse, fine = prior.shape[1], self.groups
        i = torch.arange(coarse, device=prior.device, dtype=prior.dtype).unsqueeze(1)
        j = torch.arange(fine, device=prior.device, dtype=prior.dtype)
        cover = (torch.minimum((i + 1) / coarse, (j + 1) / fine) - torch.maximum(i / coarse, j / fine)).clamp_min(0)
        return torch.log(self.ladder * (prior @ (cover * coarse)) + (1 - self.ladder) / fine)

    def logits(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, groups]``: goodness / tau, plus the lifted ``prior`` where there is one."""
        z = self.goodness(x).float() / self.tau
        return z if prior is None or not self.ladder else z + self.lift(prior.float())

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        return F.log_softmax(self.logits(x, prior), dim=1)

    def centres(self) -> torch.Tensor:
        """The bins' centres in [0, 1]: (k + 0.5) / groups."""
        return (torch.arange(self.groups, device=self.scale.low.device, dtype=torch.float32) + 0.5) / self.groups

    def moments(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance, ``[B]`` each in the target's units, of the bins' distribution ``p``, each
        bin spread evenly over its width (so a confident coarse head is not taken for a precise one)."""
        edges = self.scale.inverse(torch.arange(self.groups + 1, device=p.device, dtype=p.dtype) / self.groups)
        centre, width = (edges[1:] + edges[:-1]) / 2, edges[1:] - edges[:-1]
        mean = (p * centre).sum(1)
        return mean, (p * ((centre - mean.unsqueeze(1)) ** 2 + width * width / 12)).sum(1)

    @torch.no_grad()
    def track(self, p: torch.Tensor, target: torch.Tensor, momentum: float) -> None:
        """Fold one training batch (its bins' probabilities ``p``) into the running :attr:`error` and
        :attr:`spread`."""
        mean, variance = self.moments(p)
        error = (mean - target.detach().reshape(len(p), -1)[:, 0].float()).pow(2).mean()
        self.error.lerp_(error.to(self.error), 1 - momentum)
        self.spread.lerp_(variance.mean().to(self.spread), 1 - momentum)

    def predict(self, x: torch.Tensor, prior: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This cut's prediction and its variance, ``[B]`` each, in the target's units: the moments of
        its bins (:meth:`moments`), the variance scaled so that its training mean is the training
        mean squared error; and the bins' probabilities (the next head's prior)."""
        p = self(x, prior).exp()
        mean, variance = self.moments(p)
        return mean, variance * (self.error / self.spread.clamp_min(1e-12)), p

    def extra_repr(self) -> str:
        return f"{self.width} units in {self.groups} groups, tau={self.tau}, ladder={self.ladder}"


class _Ordinal(torch.autograd.Function):
    """The ordinal loss of logits ``z`` ``[B, G]`` against the soft target ``q``, its gradient computed
    with it: backward keeps one ``[B, G]`` tensor (autograd's own graph would keep four)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, q: torch.Tensor, penalty: float) -> torch.Tensor:
        log_p = F.log_softmax(z, dim=1)
        p = log_p.exp()
        gap = p.cumsum(1) - q.cumsum(1)  # the two cumulative distributions' difference
        loss = -(q * log_p).sum(1).mean() + penalty * (gap * gap).sum(1).mean()
        # d/dp of the penalty: 2λ Σ_{j ≥ k} gap_j; through the softmax, and the cross-entropy's p − q.
        dp = 2 * penalty * gap.flip(1).cumsum(1).flip(1)
        grad = (p - q + p * (dp - (p * dp).sum(1, keepdim=True))) / len(z)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None


def soft_target(head: GoodnessHead, target: torch.Tensor, batch: int) -> torch.Tensor:
    """``q_k ∝ exp(−(u − c_k)² / 2σ²)``: ``u`` the scaled target, ``c_k`` the bin centres, ``σ = 1 / G``."""
    u = head.scale(target.detach().reshape(batch, -1)[:, 0].float())
    sigma = 1.0 / head.groups
    return torch.softmax(-((u.unsqueeze(1) - head.centres()) ** 2) / (2 * sigma * sigma), dim=1)


def ordinal_loss(head: GoodnessHead, features: torch.Tensor, target: torch.Tensor, penalty: float,
                 prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the head's bins to the soft ordinal target (:func:`soft_target`) plus
    ``penalty`` × the squared distance between the two cumulative distributions, summed over bins;
    and the logits."""
    z = head.logits(features, prior)
    return _Ordinal.apply(z, soft_target(head, target, len(z)), float(penalty)), z
