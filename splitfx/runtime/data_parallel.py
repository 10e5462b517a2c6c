"""Data parallelism with local losses: each block's gradients are averaged as soon as its backward ends.

``local_losses`` runs one backward per block and never calls a wrapped module's forward, so one
DDP around the SplitModule would average nothing. Instead every trainable parameter gets a
``register_post_accumulate_grad_hook``; when the last loss that reaches it (one, or two in a
cascade) has accumulated its gradient, it is ready. Parameters are laid out in buckets in a fixed
order (block by block, the aux head first, each in backward order; a bucket never spans two blocks),
and a bucket's asynchronous ``all_reduce`` starts once all of it and every bucket before it are
ready, so every rank launches the same collectives in the same order while block k+1 already runs.
:meth:`GradAverager.wait` waits for all of them (each with a timeout) and divides by the group size
before the optimizer steps. Buffers (BatchNorm statistics) follow the group's first rank after each
step, as DDP's ``broadcast_buffers`` does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..base.errors import DistributedError
from .transport import wait

BUCKET_BYTES = 4 << 20


def buckets(blocks: Sequence[Sequence[nn.Parameter]], cap: int = BUCKET_BYTES) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one block and one dtype, up to ``cap`` bytes each."""
    out: list[list[nn.Parameter]] = []
    for params in blocks:
        current: list[nn.Parameter] = []
        size = 0
        for p in params:
            if current and (size + p.numel() * p.element_size() > cap or p.dtype != current[0].dtype):
                out.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            out.append(current)
    return out


class GradAverager:
    """Averages gradients over ``group`` (``size`` ranks) bucket by bucket during backward."""

    def __init__(self, blocks: Sequence[Sequence[nn.Parameter]], counts: dict[int, int], group, size: int,
                 timeout: float, what: str):
        self.buckets = buckets([[p for p in ps if p.requires_grad] for ps in blocks])
        self.where = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self.counts, self.group, self.size, self.timeout, self.what = counts, group, size, timeout, what
        self._handles = [p.register_post_accumulate_grad_hook(self._ready) for b in self.buckets for p in b]
        self._reset()

    def _reset(self) -> None:
        self._seen: dict[int, int] = {}
        self._left = [len(b) for b in self.buckets]
        self._next = 0
        self._works: list[tuple[list[torch.Tensor], torch.Tensor, dist.Work]] = []

    def _ready(self, p: nn.Parameter) -> None:
        n = self._seen[id(p)] = self._seen.get(id(p), 0) + 1
        if n > self.counts.get(id(p), 1):
            raise DistributedError(f"a parameter of shape {tuple(p.shape)} got gradients from more losses than the "
                                   "recipe's reaches()/aux_reaches() say; its average was already sent")
        if n == self.counts.get(id(p), 1):
            self._left[self.where[id(p)]] -= 1
            while self._next < len(self.buckets) and self._left[self._next] == 0:
                self._launch(self._next)

    def _launch(self, i: int) -> None:
        self._next = i + 1
        grads = [p.grad for p in self.buckets[i] if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            self._works.append((grads, flat, dist.all_reduce(flat, group=self.group, async_op=True)))

    def wait(self) -> None:
        """Launch what is left (parameters no loss reached), wait for every all-reduce, divide by the
        group size and write the averages back into ``.grad``."""
        while self._next < len(self.buckets):
            self._launch(self._next)
        for grads, flat, work in self._works:
            wait(work, self.timeout, self.what)
            _scatter(flat.div_(self.size), grads)
        self._reset()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def broadcast_buffers(buffers: Sequence[torch.Tensor], src: int, group, timeout: float, what: str) -> None:
    """Copy the buffers of global rank ``src`` onto every rank of ``group`` (one message per dtype)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in buffers:
        by_dtype.setdefault(b.dtype, []).append(b)
    for same in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in same])
        wait(dist.broadcast(flat, src, group=group, async_op=True), timeout, what)
        _scatter(flat, same)


def _scatter(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy consecutive stretches of ``flat`` back into ``tensors`` (the inverse of concatenating them)."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
