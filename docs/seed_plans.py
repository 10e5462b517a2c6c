"""The seed methods' plans at the settings of their claims, from splitfx's plans (fake tensors).

Three tables, each row one ``splitfx.plan``:

1. **Savings**: every built-in aux recipe on the CIFAR ResNet-110 (32², batch 128) at K = 2, 4, 8,
   and resnet50 (224², batch 8) at K = 4 and resnet101 at K = 2 for the ImageNet claims: predicted
   peak saved activations ÷ E2E's, whether every block holds a whole layer, and the plan's notes.
2. **Heads within their blocks**: MAN, HPFF and InfoPro at K = 4 on resnet50, vit_small_patch16_224,
   convnext_tiny and regnety_016 (224², batch 8): per block, the aux head's saved bytes beyond the
   block (``BlockPlan.aux_saved_bytes``) against the block's own (``own_saved_bytes``).
3. **Patch feature fusion**: HPFF with its quadrant decoders recomputed one at a time (default) and
   run whole as in the public code (``recompute=False``), and InfoPro's single decoder for reference.

Results go to docs/seed-plans.jsonl (one line per plan, with commit, command and machine; rows
already there are kept, so delete the file to regenerate from scratch), the tables to
docs/seed-plans.md.

    python docs/seed_plans.py            # plan what is missing, then write the tables
    python docs/seed_plans.py --report   # the tables from the results file alone
"""
import sys
from pathlib import Path

import torch

import splitfx
from splitfx.base.jsonl import append_record, read_records
from splitfx.base.provenance import provenance
from splitfx.models import resnet110

HERE = Path(__file__).parent
RESULTS, TABLE = HERE / "seed-plans.jsonl", HERE / "seed-plans.md"
AUX = [r for r in splitfx.list_recipes() if r not in ("e2e", "tandem", "ffr", "glcan")]
SAVINGS = [("resnet110", 128, 32, r, k, {}) for r in AUX for k in (2, 4, 8)]
SAVINGS += [("resnet50", 8, 224, r, 4, {}) for r in ("infopro", "man", "hpff", "mlaan")]
SAVINGS += [("resnet101", 8, 224, "man", 2, {})]
HEADS = [(m, 8, 224, r, 4, {}) for m in ("resnet50", "vit_small_patch16_224", "convnext_tiny", "regnety_016")
         for r in ("man", "hpff", "infopro")]
FUSION = [(m, b, s, "hpff", k, {"recompute": rc}) for m, b, s, k in (("resnet50", 8, 224, 4), ("resnet110", 128, 32, 8))
          for rc in (True, False)]
FUSION += [("resnet50", 8, 224, "infopro", 4, {}), ("resnet110", 128, 32, "infopro", 8, {})]
# The Done-when bounds of issue #34 (saved activations ÷ E2E's).
BOUNDS = {("resnet110", 2): 0.80, ("resnet110", 4): 0.60, ("resnet110", 8): 0.35, ("resnet101", 2): 0.58}
RESNET50 = {"man": 0.50, "hpff": 0.65, "mlaan": 0.65}
MIB = 2**20


def build(name: str) -> torch.nn.Module:
    if name == "resnet110":
        return resnet110()
    import timm

    return timm.create_model(name)


def key(case: tuple) -> list:
    name, batch, size, recipe, k, options = case
    return [name, batch, size, recipe, k, [[o, v] for o, v in sorted(options.items())]]


def record(case: tuple) -> dict:
    name, batch, size, recipe, k, options = case
    row = {"case": key(case)}
    try:
        plan = splitfx.plan(build(name), torch.randn(batch, 3, size, size), num_blocks=k,
                            recipe=splitfx.recipe(recipe, **options))
    except splitfx.PlanError as err:
        return {**row, "refused": str(err), **provenance()}
    blocks = [{"span": b.span, "params": b.params, "saved": b.saved_bytes, "own": b.own_saved_bytes,
               "head": b.aux_saved_bytes} for b in plan.blocks]
    return {**row, "saved": plan.local_peak_bytes, "e2e_saved": plan.e2e_saved_bytes, "blocks": blocks,
            "notes": plan.notes, **provenance()}


def bound(case: list) -> float | None:
    name, _, _, recipe, k, _ = case
    return RESNET50.get(recipe) if name == "resnet50" else BOUNDS.get((name, k))


def savings(rows: list[dict]) -> list[str]:
    out = ["| model | input, batch | recipe | K | saved ×E2E | bound | a whole layer per block | notes |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name, batch, size, recipe, k, _ = r["case"]
        limit = bound(r["case"])
        if "refused" in r:
            why = r["refused"].split(";")[0].split(": ", 1)[-1]
            cells = [f"refused: {why}", "refused with the reason: met" if k == 2 else "MISSED", "–", ""]
        else:
            x = r["saved"] / r["e2e_saved"]
            mark = "" if limit is None else f"≤ {limit:.2f} {'met' if x <= limit else 'MISSED'}"
            whole = "no" if any("whole layer" in n for n in r["notes"]) else "yes"
            notes = "; ".join(n for n in r["notes"] if "whole layer" not in n)
            cells = [f"{x:.3f}", mark, whole, notes]
        out.append(f"| {name} | {size}², {batch} | {recipe} | {k} | {' | '.join(cells)} |")
    return out


def heads(rows: list[dict]) -> list[str]:
    out = ["| model | recipe | saved ×E2E | per block: head / own MiB | heaviest head ÷ its block |",
           "|---|---|---|---|---|"]
    for r in rows:
        name, _, _, recipe, _, _ = r["case"]
        pairs = [b for b in r["blocks"] if b["head"]]
        worst = max((b["head"] / b["own"] for b in pairs), default=0.0)
        cells = " · ".join(f"{b['head'] / MIB:.0f} / {b['own'] / MIB:.0f}" for b in r["blocks"])
        out.append(f"| {name} | {recipe} | {r['saved'] / r['e2e_saved']:.3f} | {cells} | {worst:.2f} |")
    return out


def fusion(rows: list[dict]) -> list[str]:
    out = ["| model | input, batch | recipe | K | decoders | heads MiB (sum over cuts) | saved ×E2E |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        name, batch, size, recipe, k, options = r["case"]
        how = "one per image (InfoPro)" if recipe == "infopro" else (
            "four quadrants, recomputed one at a time" if dict(options).get("recompute", True) else
            "four quadrants, run whole (public code)")
        total = sum(b["head"] for b in r["blocks"]) / MIB
        out.append(f"| {name} | {size}², {batch} | {recipe} | {k} | {how} | {total:.1f} | "
                   f"{r['saved'] / r['e2e_saved']:.3f} |")
    return out


def main() -> None:
    torch.set_num_threads(1)
    cases = SAVINGS + HEADS + FUSION
    done = {repr(r["case"]) for r in read_records(RESULTS, key="case")}
    if "--report" not in sys.argv:
        for case in cases:
            if repr(key(case)) not in done:
                row = record(case)
                append_record(RESULTS, row)
                done.add(repr(row["case"]))
                print(*row["case"][:5], row.get("saved", "refused"), flush=True)
    rows = {repr(r["case"]): r for r in read_records(RESULTS, key="case")}

    def pick(group: list[tuple]) -> list[dict]:
        return [rows[repr(key(c))] for c in group if repr(key(c)) in rows]

    commits = sorted({r["commit"] for r in rows.values()})
    machines = sorted({r["machine"] for r in rows.values()})
    text = ["## Savings at the claims' settings", "", *savings(pick(SAVINGS)), "",
            "## Heads within their blocks (K = 4, 224², batch 8)", "", *heads(pick(HEADS)), "",
            "## Patch feature fusion: HPFF's decoders with and without recomputation", "", *fusion(pick(FUSION)), "",
            f"Commit {', '.join(commits)}; {'; '.join(machines)}. Regenerate with `python docs/seed_plans.py`."]
    TABLE.write_text("\n".join(text) + "\n")
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
