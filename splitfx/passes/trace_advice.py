"""What to do when a trace fails where ``leaf_modules=`` cannot help, or auto_leaf gives up.

``leaf_modules=`` keeps submodules opaque, so it answers a failure inside one. A failure in the
model's own ``forward`` (data-dependent Python there, a branch on ``self.training``, a Hugging Face
model's output object) needs a model whose forward traces: a subclass overriding it, or a wrapper
module; for a Hugging Face model, the three-line wrapper returning ``.logits`` (README, "Models
outside timm"). When auto_leaf reaches its cap, the error names the modules it kept whole and the
``leaf_modules=`` that keeps them all.
"""
from __future__ import annotations

import inspect

from torch import nn

HF_WRAPPER = """class Logits(nn.Module):
    def __init__(self, model): super().__init__(); self.model = model
    def forward(self, x): return self.model(x).logits"""


def _hugging_face(model: nn.Module) -> bool:
    return type(model).__module__.split(".")[0] == "transformers"


def top_level(model: nn.Module) -> str:
    """Advice for a failure in ``model``'s own forward (or code it calls directly, not as a submodule)."""
    name = type(model).__name__
    head = (f"leaf_modules= cannot help: it keeps submodules opaque, and this failure is in {name}'s own forward "
            "(or code it calls directly, not as a submodule).")
    if _hugging_face(model):
        return (f"{head} A Hugging Face model traces behind a wrapper whose forward returns a tensor "
                f"(README, \"Models outside timm\"):\n{HF_WRAPPER}")
    return (f"{head} Give splitfx a model whose forward traces: a subclass of {name} whose forward leaves out the "
            "failing code, or a wrapper nn.Module whose forward calls the parts that trace.")


def _training_line(model: nn.Module) -> str:
    """`` (`if self.training:` at FILE:LINE)``: the first read of the flag in the model's own forward."""
    forward = type(model).forward
    try:
        lines, start = inspect.getsourcelines(forward)
        path = inspect.getsourcefile(forward)
    except (OSError, TypeError):
        return ""
    found = next((i for i, line in enumerate(lines) if "self.training" in line), None)
    return "" if found is None else f" (`{lines[found].strip()}` at {path}:{start + found})"


def mode_branch(model: nn.Module) -> str:
    """The error for a model whose own forward traces differently in train and eval mode."""
    name = type(model).__name__
    return (f"The forward of {name} itself branches on self.training{_training_line(model)}, so one graph cannot "
            f"serve both modes. leaf_modules= cannot help: it keeps submodules opaque, never {name}'s own forward. "
            f"Move the branch into a submodule (splitfx keeps that one whole), or give splitfx a subclass of {name} "
            "(or a wrapper nn.Module) whose forward runs the same code in both modes.")


def cap_reached(model: nn.Module, auto: dict[str, str], failing: str, reason: str) -> str:
    """The error when auto_leaf has kept its most modules whole (``auto``) and ``failing`` fails too."""
    names = [*auto, failing]
    classes = sorted({type(model.get_submodule(n)).__name__ for n in names})
    shown = ", ".join(names[:3]) + (", ..." if len(auto) > 3 else "")
    return (f"auto_leaf kept {len(auto)} modules of {type(model).__name__} whole ({shown}), its cap, and "
            f"{failing!r} ({type(model.get_submodule(failing)).__name__}) cannot be traced either: {reason}\n"
            f"Name the modules to keep whole yourself: leaf_modules=[{', '.join(classes)}] (their classes) or "
            f"leaf_modules={names!r}.")
