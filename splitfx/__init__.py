"""splitfx: split any traceable model into memory-balanced, gradient-isolated blocks for local learning.

    plan = splitfx.plan(model, x, num_blocks=4)        # inspect: print(plan), plan.to_dict(), plan.plot()
    sm = splitfx.convert(model, x, num_blocks=4)       # train: for loss in sm.local_losses(x, y): loss.backward()
"""
from .convert import convert
from .errors import PlanError, SplitFXError, TraceError
from .export import ExportReport, export_onnx
from .plan import SplitPlan
from .plan import make_plan as plan
from .recipes import RECIPES, Recipe
from .runtime import SplitModule

__version__ = "0.1.0"

__all__ = ["convert", "plan", "export_onnx", "ExportReport", "SplitPlan", "SplitModule", "Recipe", "RECIPES", "SplitFXError", "TraceError", "PlanError"]
