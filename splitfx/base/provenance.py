"""Where a figure came from: the commit, the command and the machine, recorded beside it."""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import ArgumentError
from .version import __version__


@functools.cache
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


@functools.cache
def code_digest() -> str:
    """SHA-256 of the package's Python sources (paths and contents): two results lines with the same
    digest were made by the same code, whatever commits they name (a docs-only commit changes none).
    Read once per process, like :func:`commit`: a file edited while a long job runs does not relabel
    its later lines as another version's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()


def provenance() -> dict[str, str]:
    """The fields every results line carries: commit, command, machine, the code's digest and the
    versions of torch and timm."""
    import timm

    return {"commit": commit(), "command": " ".join(sys.argv), "machine": machine(), "code": code_digest(),
            "torch": torch.__version__, "timm": timm.__version__}


UNRECORDED = "unrecorded"


def one_code(provenances: Iterable[Mapping[str, Any]]) -> str:
    """The code digest every line's provenance (``code``, ``commit``) shares; ValueError naming each
    digest with its commits and line counts when they hold several (an :class:`ArgumentError`, so the
    command line says it in one line): one table, one version of the code."""
    commits: dict[str, Counter[str]] = {}
    for p in provenances:
        commits.setdefault(p.get("code") or UNRECORDED, Counter())[p.get("commit") or UNRECORDED] += 1
    if len(commits) > 1:
        found = "; ".join(f"code {code}: {sum(c.values())} line(s), commit(s) "
                          + ", ".join(f"{commit} ({n})" for commit, n in c.items()) for code, c in commits.items())
        raise ArgumentError(f"the lines were made by {len(commits)} versions of the splitfx sources ({found}); a "
                            "table mixes lines of one version only: regenerate the stale cells or split the file")
    return next(iter(commits), UNRECORDED)
