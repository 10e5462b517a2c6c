"""Ctrl-C kept as Ctrl-C through code that catches ``Exception``.

A library may turn the KeyboardInterrupt raised inside it into another exception (its own error
type, with the interrupt as ``__cause__`` or ``__context__``), or catch and drop it. A caller that
falls back to another way on any exception (the ONNX export: dynamo, then TorchScript) would then go
on, and a run the user stopped would finish and exit 0.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a KeyboardInterrupt, or was raised because of or while handling one."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [err]
    while chain:
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        chain += [e.__cause__, e.__context__]
    return False


@contextlib.contextmanager
def kept_interrupts() -> Iterator[None]:
    """Within: a Ctrl-C ends as KeyboardInterrupt, even where the code run turned it into another
    exception, or dropped it and went on. A SIGINT is noted where Python's default handler is in
    place, in the main thread (a handler of the program's own is left to do what it does); elsewhere
    only the exception's chain tells."""
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    hooked = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        signal.default_int_handler(signum, frame)

    if hooked:
        signal.signal(signal.SIGINT, note)
    try:
        yield
    except Exception as err:
        if received or interrupted(err):
            raise KeyboardInterrupt from err
        raise
    finally:
        if hooked:
            signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
