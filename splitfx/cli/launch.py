"""``--stages``: the commands as one rank of a ``torchrun`` launch (pipeline × data parallelism).

    torchrun --nproc-per-node 2 -m splitfx train resnet50 --stages 2       # one machine, 2 ranks
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m splitfx train resnet50 --stages 4                                 # 2 machines: 4 stages × 4

Every rank parses the same command line; only rank 0 prints the run and writes the run folder.
"""
from __future__ import annotations

import argparse
import contextlib
import os

from ..api.validation import STAGE_BALANCES
from ..base.errors import SplitFXError
from ..runtime.schedules import SCHEDULES, schedule_named
from .options import positive_float, positive_int


def add_stages(p: argparse.ArgumentParser, what: str) -> None:
    """``--stages S``, ``--stage-balance`` and ``--timeout SECONDS``."""
    p.add_argument("--stages", type=positive_int, metavar="S",
                   help=f"{what}: run as one of S×R ranks under torchrun (S pipeline stages × R data-parallel "
                        "replicas; S=1 is data parallelism alone)")
    p.add_argument("--stage-balance", choices=STAGE_BALANCES, default="time",
                   help="with --stages: group the blocks into stages by their training times, measured on rank 0 "
                        "and sent to every rank (time), or by predicted FLOPs (flops) (default %(default)s)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="stream",
                   help="with --stages: the order a rank runs a step's work in: the whole batch at once (stream), "
                        "or --microbatches parts sent on one by one (microbatch; gradients accumulated, one "
                        "optimizer step) (default %(default)s)")
    p.add_argument("--microbatches", type=positive_int, default=2, metavar="M",
                   help="with --schedule microbatch: parts per batch (default %(default)s)")
    p.add_argument("--timeout", dest="rank_timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="with --stages: longest wait for another rank before the run stops with an error naming "
                        "it (default %(default)s)")


def train(args: argparse.Namespace) -> int:
    """``splitfx train --stages S`` on this rank."""
    from ..programs.distributed import train_distributed
    from ..programs.run_folder import reserved
    from ..runtime.grid import launched
    from .preflight import train_run

    rank, _ = launched(args.stages)
    config, state, out = train_run(args)
    # Rank 0 holds the run folder and writes it; the others only take part in gathering each
    # checkpoint to rank 0 (a non-None folder says they do).
    held = reserved(out, config, args.resume, args.overwrite) if rank == 0 else contextlib.nullcontext(out or "")
    with held as out:
        if rank == 0:
            print(f"run folder: {out}{os.sep}", flush=True)
        result = train_distributed(config, args.stages, out=out, resume=state, timeout=args.rank_timeout,
                                   stage_balance=args.stage_balance,
                                   schedule=schedule_named(args.schedule, args.microbatches))
        _finish(result, out)
    return 0


def _finish(result, out: str) -> None:
    """Rank 0: the plan picture and the verified ONNX export of the trained model, in the run folder."""
    from ..programs.run_folder import CHECKPOINT
    from ..programs.train import load_checkpoint_model

    if result is not None:
        from ..api.onnx_export import export_onnx
        from ..programs.run_folder import ONNX, PLOT

        result.module.plan.plot(os.path.join(out, PLOT))
        model, _ = load_checkpoint_model(os.path.join(out, CHECKPOINT))
        report = export_onnx(model, os.path.join(out, ONNX), result.example[:2].cpu())
        print(f"run folder {out}{os.sep}: {CHECKPOINT} (resume with --resume, on any number of ranks), "
              f"{PLOT}, {ONNX} (onnxruntime max abs diff {report.max_abs_diff:.1e})")


def bench(args: argparse.Namespace) -> int:
    """``splitfx bench MODEL --stages S`` on this rank."""
    import json

    from ..base.files import write_text
    from ..base.provenance import provenance
    from ..programs.pipeline_bench import run
    from .preflight import model_and_size, recipe_from

    if len(args.blocks or ()) > 1 or args.replace or args.amp or args.channels_last:
        raise SplitFXError("bench --stages compares one K in float32 on CPU (--device is not used): give one "
                           "--blocks and no --replace, --amp or --channels-last")
    _, size = model_and_size(args)  # --input-size checked against the model, as plain bench checks it
    result = run(args.model, args.stages, blocks=args.blocks[0] if args.blocks else None, recipe=recipe_from(args),
                 batch=args.batch, input_size=size, steps=args.steps, warmup=args.warmup, timeout=args.rank_timeout,
                 stage_balance=args.stage_balance, schedule=schedule_named(args.schedule, args.microbatches))
    if result is not None:
        print(result.table(), flush=True)
        if args.json:  # with the commit, command and machine, as every recorded figure
            write_text(args.json, json.dumps({**provenance(), **result.to_dict()}, indent=2))
    return 0
