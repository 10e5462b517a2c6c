"""Files are written whole or not at all: a temp file in the target folder, then an atomic rename.

Temp files are named ``.splitfx-<pid>-<random><suffix>``. A process killed mid-write (``kill -9``)
cannot remove its own, so every write first removes those in its folder whose writer is no longer
running; a live writer's temp file is never touched.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

PREFIX = ".splitfx-"
_TEMP = re.compile(re.escape(PREFIX) + r"(\d+)-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Remove the temp files in ``folder`` left by writers that are no longer running; returns their names."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            match = _TEMP.match(name)
            if match and int(match.group(1)) != os.getpid() and not _running(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
                    removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result should not be
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
