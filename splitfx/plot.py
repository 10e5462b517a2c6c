"""The picture of a split plan: saved activations along the graph with the cuts, and per-block bars."""
from __future__ import annotations

import numpy as np

from .io import atomic_path


def _first_saves(plan) -> np.ndarray:
    """Bytes of storages first saved at each position of the ordered graph."""
    ctx = plan.context
    G = ctx.probe.graph
    storages = G.graph["storages"]
    seen: set[int] = set()
    out = np.zeros(len(ctx.sched.order))
    for p, name in enumerate(ctx.sched.order):
        for key in G.nodes[name]["saved"]:
            if key not in seen:
                seen.add(key)
                out[p] += storages[key]
    return out


def plot_plan(plan, path: str) -> None:
    """Two panels: E2E saved bytes growing along the forward (cuts marked), and per-block bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 2.0**20
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [3, 2]})
    cumulative = np.cumsum(_first_saves(plan)) / mib
    top.plot(np.arange(len(cumulative)), cumulative, color="tab:gray", label="E2E: saved activations so far")
    for b in plan.blocks:
        x = np.arange(b.start, b.end)
        top.fill_between(x, 0, cumulative[b.start:b.end], alpha=0.35, label=f"block {b.index}")
        if b.index:
            top.axvline(b.start - 0.5, color="black", lw=0.8, ls="--")
    top.set_xlabel("node position in topological order (dashed: cuts)")
    top.set_ylabel("MiB")
    top.set_title(f"{plan.model}: predicted saved activations, input {plan.input_shapes[0]}")
    top.legend(loc="upper left", fontsize=8)

    idx = np.arange(plan.num_blocks)
    body = np.array([b.saved_bytes - b.aux_saved_bytes for b in plan.blocks]) / mib
    aux = np.array([b.aux_saved_bytes for b in plan.blocks]) / mib
    bottom.bar(idx, body, label="block")
    bottom.bar(idx, aux, bottom=body, label="aux head")
    bottom.axhline(plan.e2e_saved_bytes / mib, color="tab:red", label=f"E2E peak {plan.e2e_saved_bytes / mib:.1f} MiB")
    bottom.axhline(plan.local_peak_bytes / mib, color="tab:green", ls="--",
                   label=f"local peak {plan.local_peak_bytes / mib:.1f} MiB ({plan.memory_ratio:.2f}×)")
    bottom.set_xticks(idx, [f"{b.index}\n{b.span}" for b in plan.blocks], fontsize=7)
    bottom.set_ylabel("MiB")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.rsplit(".", 1)[-1] if "." in path else "png")
    plt.close(fig)
