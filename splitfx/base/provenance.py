"""Where a figure came from: the commit, the command and the machine, recorded beside it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import torch

from .version import __version__


def commit() -> str:
    """The checkout's commit (``+dirty`` when the package's own code has uncommitted changes; a
    results file being written beside it does not count), or the package version when splitfx does
    not run from a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", here.rsplit(os.sep, 1)[0])
    except (OSError, subprocess.SubprocessError):
        return f"splitfx {__version__} (no git checkout)"
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, core count, Python and torch versions: enough to tell two machines apart."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def provenance() -> dict[str, str]:
    """The fields every results line carries: commit, command and machine."""
    return {"commit": commit(), "command": " ".join(sys.argv), "machine": machine()}
