"""Planner layer: trace → cost → cuts → aux cost → partition, producing a :class:`~splitfx.base.report.SplitPlan`."""
