"""The bytes a convolution allocates outside torch's tensors on this machine (a backend's scratch),
measured and as the plan models it.

The plan's step peak counts every tensor a step creates (``base/live_bytes.LiveBytes``, exact against
the same tracker on a real step) plus a model of the buffers oneDNN's kernels allocate for themselves
(``base/workspace.onednn_scratch``), which only the allocator sees. For one forward and backward of
each convolution below (resnet50's shapes at batch 8, the gradient of the output given as a dense
tensor), the table prints the tracker's peak, the allocator's (the profiler's memory timeline, as
``splitfx bench`` reads it), their difference (the scratch), and the tracker's peak with the model.

    python docs/conv_scratch.py
"""
import torch
from torch import nn

from splitfx.base.live_bytes import LiveBytes
from splitfx.base.provenance import provenance
from splitfx.base.workspace import onednn_scratch
from splitfx.programs.measure import allocator_peak

# (in channels, out channels, kernel, stride, input side, input needs a gradient), resnet50 at 224²
CONVS = [(3, 64, 7, 2, 224, False), (64, 64, 3, 1, 56, True), (64, 256, 1, 1, 56, True),
         (256, 64, 1, 1, 56, True), (256, 128, 1, 1, 56, True), (256, 512, 1, 2, 56, True),
         (128, 128, 3, 2, 56, True), (512, 128, 1, 1, 28, True)]
MIB = 2**20


def scratch(cin: int, cout: int, k: int, s: int, hw: int, grad_input: bool) -> tuple[float, ...]:
    """Input and output MiB, and the tracker's, the allocator's and the modelled peak MiB of one forward
    and backward."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
    x = torch.randn(8, cin, hw, hw, requires_grad=grad_input)
    side = (hw + s - 1) // s
    g = torch.randn(8, cout, side, side)

    def step() -> None:
        conv(x).backward(g)
        conv.weight.grad = x.grad = None

    step()
    with LiveBytes(conv, x, g) as tracker:
        step()
    with LiveBytes(conv, x, g, workspace=onednn_scratch) as modelled:
        step()
    return (x.numel() * 4 / MIB, g.numel() * 4 / MIB, tracker.peak / MIB, allocator_peak(step, x.device) / MIB,
            modelled.peak / MIB)


def main() -> None:
    print(f"{torch.get_num_threads()} torch thread(s).\n")
    print("| conv (in → out, k, stride, input side) | input MiB | output MiB | tensors' peak MiB | "
          "allocator's peak MiB | scratch MiB | modelled peak MiB | modelled ÷ allocator |")
    print("|---|---|---|---|---|---|---|---|")
    for cin, cout, k, s, hw, grad_input in CONVS:
        i, o, tracked, allocated, modelled = scratch(cin, cout, k, s, hw, grad_input)
        print(f"| {cin} → {cout}, {k}×{k}, {s}, {hw}{'' if grad_input else ' (no input gradient)'} | {i:.1f} | "
              f"{o:.1f} | {tracked:.1f} | {allocated:.1f} | {allocated - tracked:.1f} | {modelled:.1f} | "
              f"{modelled / allocated:.3f} |")
    p = provenance()
    print(f"\nCommit {p['commit']}; {p['machine']}; `python docs/conv_scratch.py`.")


if __name__ == "__main__":
    main()
