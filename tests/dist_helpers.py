"""Helpers for the multi-process tests: spawn N ranks on loopback gloo, tiny models, references.

Every rank runs in a fresh ``spawn`` process with one thread; the parent joins each with a timeout
and kills what is left, so a hang fails the test instead of stalling the run.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import traceback

import torch
from torch import nn

import splitfx
from splitfx.runtime.grid import Grid
from splitfx.runtime.pipeline import Stage
from splitfx.runtime.rank import Rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(result) -> None:
    """Leave this rank's result so far for the parent (a rank about to be killed keeps what it did)."""
    torch.save(result, os.path.join(os.environ["DIST_TEST_OUT"], f"rank{os.environ['RANK']}.pt"))


def _main(rank: int, world: int, port: int, target, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo", DIST_TEST_OUT=out)
    torch.set_num_threads(1)
    try:
        result = target(rank, world, *args)
    except BaseException as err:  # reported to the parent, which fails the test with it
        result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    report(result)


PRELOAD = ["torch", "timm", "sklearn.datasets", "splitfx.programs.distributed", "dist_helpers"]


def run_ranks(world: int, target, args: tuple, out: str, timeout: float = 60.0) -> list:
    """``target(rank, world, *args)`` on ``world`` fresh ranks; each rank's return value (or a dict
    with ``error`` when it raised, or None when it died). Ranks fork from one server process that has
    imported torch, timm and splitfx once and run nothing else (no threads, no process group)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, target.__module__])
    port = free_port()
    procs = [ctx.Process(target=_main, args=(r, world, port, target, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    results = []
    for r in range(world):
        path = os.path.join(out, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
        if os.path.exists(path):
            os.remove(path)
    return results


class TwoPath(nn.Module):
    """conv-BN stem, a residual block (a cut inside it hands over two tensors), conv, pool, fc."""

    def __init__(self, c: int = 6, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b(torch.relu(self.bn(self.a(x)))))
        return self.fc(self.head(x).mean((2, 3)))


def converted(blocks: int, recipe: str = "linear", stages: int | None = None, **options):
    torch.manual_seed(0)
    model = TwoPath()
    return splitfx.convert(model, torch.randn(8, 3, 8, 8), blocks, recipe=recipe, stages=stages, **options)


def batches(n: int, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(n)]


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)


def reference(blocks: int, recipe: str, data, shards: int = 1, **options):
    """One process: ``train_step`` over ``data``; with ``shards`` > 1, each batch is split and the
    per-shard gradients averaged (what data parallelism computes), buffers from the first shard."""
    sm = converted(blocks, recipe, **options)
    opt = optimizer(sm.parameters())
    copies = [converted(blocks, recipe, **options) for _ in range(shards - 1)]
    for x, y in data:
        if shards == 1:
            sm.train_step(x, y, opt)
            continue
        grads = []
        for i, (xs, ys) in enumerate(zip(x.chunk(shards), y.chunk(shards), strict=True)):
            model = sm if i == 0 else copies[i - 1]
            if i:
                model.load_state_dict(sm.state_dict())
            model.zero_grad(set_to_none=True)
            for loss in model.local_losses(xs, ys):
                loss.backward()
            grads.append([p.grad for p in model.parameters()])
        for p, *gs in zip(sm.parameters(), *grads, strict=True):
            if gs[0] is not None:
                total = gs[0].clone()
                for g in gs[1:]:
                    total += g
                p.grad = total / shards
        opt.step()
        sm.recipe.after_step(sm.parts())
    return sm


def scheduled(blocks: int, recipe: str, data, schedule, **options):
    """One process training every block as one pipeline rank with ``schedule`` (no process group:
    a single stage neither sends nor receives)."""
    sm = converted(blocks, recipe, **options)
    me = Rank(Grid(0, 1, 1, torch.device("cpu"), 30), Stage(sm, 0, sm.num_blocks), optimizer(sm.parameters()),
              schedule=schedule)
    for t, batch in enumerate(data):
        me.train_step(t, batch)
    return sm


def held(sm) -> dict[str, torch.Tensor]:
    """The real (not meta) tensors of a rank's SplitModule, by state-dict name."""
    return {n: t.detach().clone() for n, t in sm.state_dict().items() if t.device.type != "meta"}


def mismatches(shares: list[dict[str, torch.Tensor]], reference_sm) -> list[str]:
    """Names of the tensors the ranks hold that differ from ``reference_sm``'s, or that no rank holds."""
    ref = reference_sm.state_dict()
    wrong = [n for share in shares for n, t in share.items() if not torch.equal(t, ref[n])]
    return wrong + sorted(set(ref) - {n for share in shares for n in share})


@contextlib.contextmanager
def one_thread():
    """One intra-op thread, as every rank runs (a conv's weight gradient may sum in another order
    with more threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
