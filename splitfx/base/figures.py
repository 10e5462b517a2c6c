"""Pictures written to disk: matplotlib without a display, saved atomically in the format the file
name's extension names (PNG when it names none)."""
from __future__ import annotations

import os
from typing import Any

from .files import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` (whole or not at all) and close it."""
    ext = os.path.splitext(os.path.basename(path))[1].lstrip(".").lower()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=ext or "png")
    pyplot().close(fig)
