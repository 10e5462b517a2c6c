"""``SplitModule``: the trainable result of ``convert``.

``forward`` is the original model (the full traced graph over the user's own modules) and is the
inference path, except for a recipe whose heads predict (``RecipeTraits.infers``): its ``infer``.
``local_losses`` runs block by block: block k on the detached output of block k-1, its aux loss,
``yield`` so the caller can run ``backward`` (which frees block k's saved tensors), then block k+1.
Only one block's activations are alive at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..base.report import SplitPlan
from ..base.tensors import Inputs, as_tuple, check_dtypes
from ..passes.emit import without_input_detach
from ..passes.replay import one_draw_per_step
from ..recipes.base import LossFn, Recipe, SplitParts, handed
from ..recipes.deep_supervision import supervised_losses
from ..recipes.split import Split
from .step import run_step


class SplitModule(nn.Module):
    """K gradient-isolated blocks over the user's model, with one aux head per non-final block.

    Registered submodules are the user's ``model``, the recipe's ``heads`` and the RepL surrogates
    ``repl``; the block GraphModules hold no state of their own, so ``state_dict()`` is ``model.*``
    (the user's own keys) + ``heads.*`` + ``repl.*``."""

    def __init__(
        self,
        plan: SplitPlan,
        recipe: Recipe,
        traced: fx.GraphModule,
        blocks: Sequence[fx.GraphModule],
        heads: Sequence[nn.Module],
        merges: Sequence[nn.Module],
        loss_fn: LossFn,
        block_params: Sequence[Sequence[nn.Parameter]],
        attached_blocks: Sequence[fx.GraphModule] = (),
    ):
        super().__init__()
        self.model = traced.model
        self.heads = nn.ModuleList(heads)
        self.merges = nn.ModuleList(merges)  # parameter-free: joins a cut's tensors for its head
        self.repl = getattr(traced, "repl", nn.ModuleDict())  # RepL surrogates: fusion coefficients
        self.plan = plan
        self.recipe = recipe
        self.loss_fn = loss_fn
        # Not registered as submodules: they only reference ``self.model``, which already is one.
        object.__setattr__(self, "traced", traced)
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "attached_blocks", tuple(attached_blocks))  # no input detach
        names = {id(p): n for n, p in self.named_parameters()}
        self._block_param_names = [[names[id(p)] for p in params] for params in block_params]
        self.training = self.model.training  # the model's mode (its submodules keep their own)

    @classmethod
    def from_split(cls, split: Split, loss_fn: LossFn) -> SplitModule:
        """The trainable module of a planned :class:`Split`: its blocks, heads and merges as they are
        (no copies), ``loss_fn(output, target)`` for the last block."""
        return cls(split.plan, split.recipe, split.traced, split.blocks, split.heads, split.merges, loss_fn,
                   split.block_params, split.attached)

    @property
    def num_blocks(self) -> int:
        """Number of gradient-isolated blocks actually trained."""
        return len(self.blocks)

    def forward(self, *inputs: torch.Tensor):
        """The original model's outputs (bit-identical to it in eval mode); for a recipe whose heads
        take part in inference (``traits.infers``: FFR), what its ``infer`` returns instead."""
        if self.recipe.traits.infers:
            return self.recipe.infer(self.parts(), inputs)
        return self.traced(*inputs)

    def chained(self, *inputs: torch.Tensor) -> Any:
        """The blocks run one after another, each on what the one before it hands over, as training
        runs them: in eval mode this equals the model's own outputs bit for bit."""
        h = inputs
        for k, block in enumerate(self.blocks):
            out = block(*h)
            h = out if k == self.num_blocks - 1 else handed(out)
        return h

    def block_parameters(self, k: int) -> list[nn.Parameter]:
        """Backbone parameters (RepL coefficients included) trained by block ``k``'s loss; its aux
        head's are in ``heads[k]``."""
        return [self.get_parameter(name) for name in self._block_param_names[k]]

    def parts(self) -> SplitParts:
        """The view of this module a recipe's loop runs on."""
        return SplitParts(self.blocks, self.heads, self.loss_fn, self.model, self.merges, self.attached_blocks)

    def local_losses(self, inputs: Inputs, target: torch.Tensor, detach: bool = True) -> Iterator[torch.Tensor]:
        """Yield one loss per block, in order. Call ``backward`` on each before asking for the next
        to keep only one block's activations alive; summing them and calling ``backward`` once gives
        the same gradients. A train-only random call (sapiens2's rotary augmentation) draws once for
        all blocks, as in the model. Floating ``inputs`` in another dtype than the model's are refused
        by name (:func:`~splitfx.base.tensors.check_dtypes`). ``detach=False`` yields the one loss of
        the deep-supervision control instead (:mod:`~splitfx.recipes.deep_supervision`)."""
        inputs = as_tuple(inputs)
        check_dtypes(inputs, self.model, "inputs", convert="convert the model and its heads with SplitModule.to")
        if not detach and not self.attached_blocks:  # made once, from the blocks (a copy makes its own)
            object.__setattr__(self, "attached_blocks", tuple(without_input_detach(b) for b in self.blocks))
        with one_draw_per_step():
            if detach:
                yield from self.recipe.losses(self.parts(), inputs, target)
            else:
                yield from supervised_losses(self.recipe, self.parts(), inputs, target)

    def train_step(
        self,
        inputs: Inputs,
        target: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None = None,
        autocast_dtype: torch.dtype | None = None,
        step_each_block: bool = False,
        after_loss: Callable[[int], None] | None = None,
        detach: bool = True,
    ) -> list[float]:
        """One optimiser step over all blocks; returns the per-block losses.

        ``autocast_dtype`` runs each block's forward and loss under ``torch.autocast`` (backward
        outside it, as autocast recommends); pair float16 with a ``GradScaler``. ``step_each_block``
        steps ``optimizer`` as soon as the gradients so far are final (no later loss trains those
        parameters: after every block, except for ``hpff`` and ``mlaan``, whose loss k also trains
        block k+1) and frees them, so one block's gradients exist at a time instead of the whole
        model's. The weights come out the same, for an optimizer that skips parameters without a
        gradient (every ``torch.optim`` one does). Not with a ``scaler``, whose inf check and scale
        update cover one whole step. ``after_loss(k)`` is called after loss k's backward (and its
        per-block step): a per-block log, or :class:`~.isolation.GradientReach` observing isolation.
        ``detach=False`` trains the deep-supervision control instead (:mod:`~splitfx.recipes.deep_supervision`): the
        same heads, their losses summed with the model's into one backward through every block; it
        returns that one loss."""
        if step_each_block and scaler is not None:
            raise ValueError("train_step: step_each_block steps once per block, and a GradScaler's inf check and "
                             "update cover one whole step; pass one or the other")
        if step_each_block and not detach:
            raise ValueError("train_step: detach=False sums every loss into one backward, so there is no block whose "
                             "gradients are final early; drop step_each_block")
        inputs = as_tuple(inputs)
        final = self._final_after() if step_each_block else [False] * self.num_blocks

        def each(k: int) -> None:
            if final[k]:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if after_loss is not None:
                after_loss(k)

        losses = run_step(self.local_losses(inputs, target, detach), optimizer, inputs[0].device, scaler=scaler,
                          autocast_dtype=autocast_dtype, after_loss=each, step=not step_each_block)
        self.recipe.after_step(self.parts())
        return torch.stack(losses).tolist()

    def _final_after(self) -> list[bool]:
        """Per loss k: whether every gradient made since the last such point is final after loss k's
        backward, i.e. no later loss trains those blocks or aux parameters (the recipe's ``reaches``)."""
        n = self.num_blocks
        trains = [{("block", b) for b in self.recipe.reaches(k, n)}
                  | {("aux", id(p)) for m in self.recipe.aux_reaches(k, self.heads) for p in m.parameters()}
                  for k in range(n)]
        final, pending = [], set()
        for k in range(n):
            pending |= trains[k]
            final.append(not pending & set().union(*trains[k + 1:]))
            if final[-1]:
                pending = set()
        return final

    def materialize(self) -> nn.Module:
        """Write every RepL block's synthesised weights into its own parameters and make them
        trainable again: ``self.model`` is an ordinary model (for export and ``state_dict``)."""
        for surrogate in self.repl.values():
            surrogate.materialize()
            for p in self.model.get_submodule(surrogate.names[1]).parameters():
                p.requires_grad_(True)
        return self.model

    def extra_repr(self) -> str:
        return f"model={self.plan.model}, num_blocks={self.num_blocks}, recipe={self.recipe.name!r}"
