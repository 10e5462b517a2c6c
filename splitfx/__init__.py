"""splitfx: split any traceable model into memory-balanced, gradient-isolated blocks for local learning.

    plan = splitfx.plan(model, x, num_blocks=4)        # inspect: print(plan), plan.to_dict(), plan.plot()
    sm = splitfx.convert(model, x, num_blocks=4)       # train: for loss in sm.local_losses(x, y): loss.backward()
"""
from .api.conversion import convert
from .api.onnx_export import ExportReport, export_onnx
from .api.planning import max_batch, plan
from .api.timing import measure_block_times
from .base.errors import (
    ArgumentError,
    ArgumentTypeError,
    CheckpointError,
    DistributedError,
    PlanError,
    SplitFXError,
    TraceError,
)
from .base.report import BlockPlan, SplitPlan
from .base.version import __version__
from .passes.snn import spiking
from .recipes import Recipe, RecipeTraits, SplitParts, list_recipes, register_recipe
from .recipes import create_recipe as recipe
from .runtime.split_module import SplitModule

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BlockPlan",
    "CheckpointError",
    "DistributedError",
    "ExportReport",
    "PlanError",
    "Recipe",
    "RecipeTraits",
    "SplitFXError",
    "SplitModule",
    "SplitParts",
    "SplitPlan",
    "TraceError",
    "__version__",
    "convert",
    "export_onnx",
    "list_recipes",
    "max_batch",
    "measure_block_times",
    "plan",
    "recipe",
    "register_recipe",
    "spiking",
]
