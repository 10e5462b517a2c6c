"""Files are written whole or not at all: a temp file in the target folder, then an atomic rename.

Temp files are named ``.splitfx-<pid>-<random><suffix>``; a file that comes with companions (an ONNX
model and its external weights) is written into a temp folder named the same way, whose files are
moved into place companions first, the main file last. A process killed mid-write (``kill -9``)
cannot remove its own, so every write first removes the temp files and folders in its folder whose
writer is no longer running; a live writer's are never touched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

PREFIX = ".splitfx-"
_TEMP = re.compile(re.escape(PREFIX) + r"(\d+)-")


def unwritable(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written (None: it can; missing folders would be made): a name longer
    than its file system takes, a file where a folder must be, a folder we may not write in. Checked
    before work, so a long name is not first met on a temp path after minutes of exporting."""
    full = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no such query on this platform
        limit = os.pathconf(parent if os.path.isdir(parent) else os.path.dirname(parent), "PC_NAME_MAX")
        long = next((p for p in full.split(os.sep) if len(os.fsencode(p)) > limit), None)
        if long is not None:
            return (f"the name {long[:24]}… is {len(os.fsencode(long))} bytes long, and this file system takes at "
                    f"most {limit}; choose a shorter name")
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write in {parent} (permission denied); choose another path"
    return None


def running(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Remove the temp files and folders in ``folder`` left by writers that are no longer running;
    returns their names."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            match = _TEMP.match(name)
            if match and int(match.group(1)) != os.getpid() and not running(int(match.group(1))):
                with contextlib.suppress(OSError):
                    _remove(os.path.join(folder, name))
                    removed.append(name)
    return removed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def reason(err: OSError) -> str:
    """What the system said, with its errno's name: ``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(err.errno or 0)
    text = err.strerror or str(err) or type(err).__name__
    return f"{text} ({name})" if name else text


def _name(err: BaseException, path: str) -> None:
    """Let an ``OSError`` that names no file (a write to a full disk) name ``path``, the file being written."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        err.filename = path


def _folder_of(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = os.fspath(path)
    folder = _folder_of(path)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result should not be
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        _name(err, path)
        raise


@contextlib.contextmanager
def atomic_files(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp folder next to ``path`` to write ``path``'s file (same name) and its companions in.

    On success every file in it replaces the one of its name beside ``path``, companions first and
    ``path``'s own last, so a reader who finds the new ``path`` finds its companions; on error
    nothing is moved (or what was moved is removed again) and the temp folder is removed."""
    path = os.path.abspath(os.fspath(path))
    folder = _folder_of(path)
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=folder)
    moved: list[str] = []
    try:
        yield tmp
        main = os.path.basename(path)
        for name in sorted(os.listdir(tmp), key=lambda n: n == main):
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
            moved.append(os.path.join(folder, name))
    except BaseException as err:
        for done in moved:
            with contextlib.suppress(FileNotFoundError):
                os.remove(done)
        _name(err, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def file_stem(text: str) -> str:
    """``text`` as a file name: every run of characters outside ``[A-Za-z0-9_.-]`` becomes one ``_``
    (a model named ``package.module:factory``), leading and trailing dots and underscores dropped."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
