"""Gradient isolation observed, not trusted: which parameters each loss of a step actually reached.

:class:`GradientReach` hooks every trainable parameter's gradient accumulation during a real
training step and records, per loss, the names of the parameters that loss's backward gave a
gradient; :meth:`GradientReach.violations` compares that with what the recipe says loss k trains
(:func:`expected_reach`). The coverage sweep runs it on every model's one step, so "isolated" in its
report is an observation at no extra forward or backward.
"""
from __future__ import annotations

from typing import Any

from .split_module import SplitModule


def expected_reach(sm: SplitModule, k: int) -> set[str]:
    """Names of the trainable parameters loss ``k`` should give a gradient: those of the blocks
    ``recipe.reaches(k)`` and of the aux modules ``recipe.aux_reaches(k, heads)``."""
    names = {id(p): n for n, p in sm.named_parameters()}
    blocks = sm.recipe.reaches(k, sm.num_blocks)
    expected = {names[id(p)] for b in blocks for p in sm.block_parameters(b) if p.requires_grad}
    return expected | {names[id(p)] for m in sm.recipe.aux_reaches(k, sm.heads) for p in m.parameters()
                       if p.requires_grad}


class GradientReach:
    """Context manager recording, per loss of a step, the parameters its backward reached.

    Pass :meth:`after_loss` as ``train_step(..., after_loss=...)`` so the record moves on to the
    next loss after each backward::

        with GradientReach(sm) as reach:
            sm.train_step(x, y, optimizer, after_loss=reach.after_loss)
        assert not reach.violations()
    """

    def __init__(self, sm: SplitModule):
        self.sm = sm
        self.per_loss: list[set[str]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> GradientReach:
        self.per_loss = [set()]
        for name, p in self.sm.named_parameters():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(
                    lambda _, name=name: self.per_loss[-1].add(name)))
        return self

    def after_loss(self, k: int) -> None:
        """Loss ``k``'s backward is over: what accumulates from now on belongs to loss k+1."""
        self.per_loss.append(set())

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.per_loss and not self.per_loss[-1]:
            self.per_loss.pop()  # opened after the last loss

    def violations(self) -> list[str]:
        """One line per loss that reached a parameter it should not have, or missed one it should
        have; then one for parameters of a block or head that no loss reached (a parameter the forward
        never reads belongs to no block and is trained by nothing, as in E2E). Empty when isolation
        held."""
        sm, lines = self.sm, []
        if len(self.per_loss) != sm.num_blocks:
            return [f"{len(self.per_loss)} losses were observed for {sm.num_blocks} blocks"]
        for k, got in enumerate(self.per_loss):
            expected = expected_reach(sm, k)
            unexpected, missing = sorted(got - expected), sorted(expected - got)
            if unexpected or missing:
                lines.append(f"loss {k} reached {len(unexpected)} parameter(s) outside its blocks "
                             f"{unexpected[:3]} and missed {len(missing)} {missing[:3]}")
        # Parameters some block or head owns: one the forward never reads is trained by nothing, E2E included.
        owned = set().union(*(expected_reach(sm, k) for k in range(sm.num_blocks)))
        unreached = sorted(owned - set().union(*self.per_loss))
        if unreached:
            lines.append(f"no loss trains {len(unreached)} parameter(s) {unreached[:3]}")
        return lines
