"""Results files of long, resumable runs (the coverage sweep, the accuracy table): one JSON object per
line, appended as each unit of work finishes, so a killed run loses only the work in flight."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from .errors import SplitFXError

Record = dict[str, Any]


def read_records(path: str | os.PathLike, key: str = "model") -> Iterator[Record]:
    """Every complete JSON object line of a results file that has ``key`` (a missing file has none);
    torn lines are skipped. A file none of whose lines is JSON text is not a results file: refused."""
    if not os.path.exists(path):
        return
    read = torn = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                torn += 1
                continue
            read += 1
            if isinstance(record, dict) and key in record:
                yield record
    if torn and not read:
        raise SplitFXError(f"{path} is not a results file (no line of it is JSON); give the JSON-lines file that "
                           "splitfx coverage, accuracy or tasks wrote")


def append_record(path: str | os.PathLike, record: Record) -> None:
    """Append ``record`` as one line: a single write in append mode, then fsync, so several writers
    (shards) may share one file."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            data = b"\n" + data  # a line torn by a crash stays alone, unreadable, not glued to this one
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
