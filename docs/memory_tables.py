"""The papers' memory tables, rebuilt from splitfx's plans (fake tensors: nothing is trained).

Every classification recipe × K = 2, 4, 8, 16 on the CIFAR ResNet-110 (batch 1024, 32²), and InfoPro (K = 2, 3, 4)
and MAN (K = 2) at ImageNet size on ResNet-101/152 (224², batch 64), each with the predicted peak
saved activations and the predicted peak of the whole training step (weights, gradients,
SGD-momentum state, activations, transient buffers and the batch: one step on fake tensors,
``SplitPlan.step_peak_bytes``) as ratios to E2E's, next to what the papers publish. Results go to
docs/memory-tables.jsonl (one line per plan, with commit, command and machine; rows already there
are kept), the table to docs/memory-tables.md.

    python docs/memory_tables.py            # plan what is missing, then write the table
    python docs/memory_tables.py --report   # the table from the results file alone
"""
import sys
import time
from pathlib import Path

import torch

import splitfx
from splitfx.base.jsonl import append_record, read_records
from splitfx.base.provenance import provenance
from splitfx.models import resnet110

HERE = Path(__file__).parent
RESULTS, TABLE = HERE / "memory-tables.jsonl", HERE / "memory-tables.md"
OPTIMIZER = "sgd_momentum"
CIFAR = [("resnet110", r, k, 1024, 32) for r in splitfx.list_recipes() if r not in ("e2e", "ffr")
         for k in (2, 4, 8, 16)]
IMAGENET = [("resnet101", "infopro", k, 64, 224) for k in (2, 3, 4)]
IMAGENET += [("resnet101", "man", 2, 64, 224), ("resnet152", "man", 2, 64, 224)]
# What the papers publish (total GPU memory, as a ratio to their E2E), where they publish it.
PAPERS = {
    ("resnet101", "infopro", 2): "5.38 / 9.40 GB = 0.57× (InfoPro*, Table 3)",
    ("resnet101", "infopro", 3): "4.22 / 9.40 GB = 0.45×",
    ("resnet101", "infopro", 4): "3.52 / 9.40 GB = 0.37×",
    ("resnet101", "man", 2): "“more than 45 % less” than E2E: < 0.55×",
    ("resnet152", "man", 2): "“more than 45 % less” than E2E: < 0.55×",
    ("resnet110", "hpff", 16): "“up to 50 %” less on CIFAR-10: ≥ 0.50× at best",
}


def build(name: str) -> torch.nn.Module:
    if name == "resnet110":
        return resnet110()
    import timm

    return timm.create_model(name)


def record(name: str, recipe: str, k: int, batch: int, size: int) -> dict:
    row = {"model": name, "recipe": recipe, "blocks": k, "batch": batch, "input": size, "optimizer": OPTIMIZER}
    model, start = build(name), time.perf_counter()
    try:
        plan = splitfx.plan(model, torch.randn(batch, 3, size, size), num_blocks=k, recipe=recipe,
                            optimizer=OPTIMIZER)
    except splitfx.PlanError as err:
        return {**row, "refused": str(err), **provenance()}
    return {**row, "saved": plan.local_peak_bytes, "e2e_saved": plan.e2e_saved_bytes,
            "total": plan.step_peak_bytes, "e2e_total": plan.e2e_step_peak_bytes,
            "smallest_block_params": min(b.params for b in plan.blocks), "notes": plan.notes,
            "plan_s": round(time.perf_counter() - start, 1), **provenance()}


def table(rows: list[dict]) -> str:
    lines = ["| model | input, batch | recipe | K | saved ×E2E | total ×E2E | papers |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["model"], r["recipe"], r["blocks"])
        if "refused" in r:
            cells = ["refused: " + r["refused"].split(";")[0].split(": ", 1)[-1], "–"]
        else:
            cells = [f"{r['saved'] / r['e2e_saved']:.3f}", f"{r['total'] / r['e2e_total']:.3f}"]
        lines.append(f"| {r['model']} | {r['input']}², {r['batch']} | {r['recipe']} | {r['blocks']} | "
                     f"{' | '.join(cells)} | {PAPERS.get(key, '')} |")
    commits = sorted({r["commit"] for r in rows})
    machines = sorted({r["machine"] for r in rows})
    lines += ["", f"Commit {', '.join(commits)}; {'; '.join(machines)}; optimizer {OPTIMIZER}. "
              "Regenerate with `python docs/memory_tables.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    done = {(r["model"], r["recipe"], r["blocks"], r["batch"], r["input"]) for r in read_records(RESULTS)}
    if "--report" not in sys.argv:
        for case in CIFAR + IMAGENET:
            if case not in done:
                row = record(*case)
                append_record(RESULTS, row)
                print(row["model"], row["recipe"], row["blocks"], row.get("saved", row.get("refused")), flush=True)
    order = {case: i for i, case in enumerate(CIFAR + IMAGENET)}
    rows = sorted((r for r in read_records(RESULTS)
                   if (r["model"], r["recipe"], r["blocks"], r["batch"], r["input"]) in order),
                  key=lambda r: order[(r["model"], r["recipe"], r["blocks"], r["batch"], r["input"])])
    TABLE.write_text(table(rows))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
