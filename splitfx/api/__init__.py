"""API layer: ``plan``, ``convert``, ``export_onnx`` — thin entry points over the planner, recipes and runtime."""
