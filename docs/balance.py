"""How close each block gets to the floor E2E / K: `splitfx plan MODEL --blocks K --json` for ten
models at K = 4, 8, 16 (batch 8, each model's default input size, recipe `linear`), run in one
process; a cell is local_peak_bytes · K / e2e_saved_bytes, in brackets how many of the K−1 cuts hand
over more than one tensor. `--one-tensor`: the same measure with one tensor per cut
(`--max-cut-tensors 1`), for the five models where that changes most. Prints the table with commit
and machine (fake tensors: nothing is trained; each about two minutes on 2 cores).

    python docs/balance.py
    python docs/balance.py --one-tensor
"""
import contextlib
import io
import json
import sys

from splitfx.base.provenance import provenance
from splitfx.cli import main

MODELS = ["resnet50", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "densenet121", "hrnet_w18_small",
          "efficientnet_b0", "convnext_tiny", "pvt_v2_b0", "cspresnet50", "xception41"]
SINGLE = ["resnet50", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "densenet121", "hrnet_w18_small"]
KS = (4, 8, 16)


def cell(model: str, k: int, *extra: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["plan", model, "--blocks", str(k), "--json", *extra])
    if status:
        return "refused"
    plan = json.loads(out.getvalue())
    multi = sum(len(b["output_shapes"]) > 1 for b in plan["blocks"][:-1])
    return f"{plan['local_peak_bytes'] * k / plan['e2e_saved_bytes']:.2f}× ({multi})"


def table(models: list[str], *extra: str) -> str:
    lines = ["| model | " + " | ".join(f"K={k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(cell(model, k, *extra) for k in KS) + " |")
        print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


if __name__ == "__main__":
    one = "--one-tensor" in sys.argv[1:]
    print(table(SINGLE, "--max-cut-tensors", "1") if one else table(MODELS))
    where = provenance()
    print(f"\nCommit {where['commit']}; {where['machine']}. "
          f"Regenerate with `python docs/balance.py{' --one-tensor' if one else ''}`.")
