"""Point-to-point messages between pipeline ranks over a ``torch.distributed`` process group.

A message is a fixed-size int64 header — the step it belongs to, the number of tensors, then each
tensor's dtype code, rank and shape — followed by the tensors themselves. The receiver must allocate
exactly what is sent (gloo aborts the process on a too-small buffer, half-fills a larger one and
reinterprets a wrong dtype), so the header comes first, and the step tag catches ranks out of step.
Sends are ``isend``: the tensors stay referenced until their ``wait`` returns, and at most
``in_flight`` messages wait at once. Every wait has a timeout; a peer that stopped or hangs becomes a
:class:`DistributedError` naming it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from ..base.errors import DistributedError

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8)
HEADER_WORDS = 256  # step, count, then (dtype, ndim, *shape) per tensor


def reason(err: BaseException, timeout: float) -> str:
    """Why a wait failed, for people: the peer stopped, or it did not answer in time."""
    text = str(err)
    if "Timed out" in text or "timeout" in text.lower():
        return f"no answer within {timeout:g} s (the rank hangs or is far slower; raise --timeout if it is slow)"
    if "closed" in text.lower() or "reset" in text.lower() or "broken pipe" in text.lower():
        return "connection closed: that rank stopped"
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)[:200]


def wait(work: dist.Work, timeout: float, what: str) -> None:
    """``work.wait`` bounded by ``timeout`` seconds; a failure is a :class:`DistributedError` saying ``what``."""
    try:
        work.wait(timeout=timedelta(seconds=timeout))
    except RuntimeError as err:  # DistBackendError and gloo's timeouts are RuntimeErrors
        raise DistributedError(f"{what}: {reason(err, timeout)}") from err


def encode(tensors: Sequence[torch.Tensor], step: int) -> torch.Tensor:
    """The header announcing ``tensors`` for ``step``."""
    words = [step, len(tensors)]
    for t in tensors:
        if t.dtype not in DTYPES:
            raise DistributedError(f"cannot send a {t.dtype} tensor between pipeline ranks; supported: "
                                   f"{', '.join(str(d).removeprefix('torch.') for d in DTYPES)}")
        words += [DTYPES.index(t.dtype), t.dim(), *t.shape]
    if len(words) > HEADER_WORDS:
        raise DistributedError(f"a message of {len(tensors)} tensors does not fit the {HEADER_WORDS}-word header; "
                               "plan with a smaller max_cut_tensors")
    return torch.tensor(words + [0] * (HEADER_WORDS - len(words)), dtype=torch.int64)


def decode(header: torch.Tensor) -> tuple[int, list[tuple[torch.dtype, tuple[int, ...]]]]:
    """The step and the (dtype, shape) of every tensor a header announces."""
    words = header.tolist()
    step, n, i, specs = words[0], words[1], 2, []
    for _ in range(n):
        dtype, ndim = DTYPES[words[i]], words[i + 1]
        specs.append((dtype, tuple(words[i + 2:i + 2 + ndim])))
        i += 2 + ndim
    return step, specs


class Link:
    """This rank's messages from the previous pipeline rank and to the next one (global ranks)."""

    def __init__(self, rank: int, prev: int | None, next_rank: int | None, device: torch.device | str,
                 timeout: float, in_flight: int = 2):
        self.rank, self.prev, self.next = rank, prev, next_rank
        self.device, self.timeout, self.in_flight = torch.device(device), timeout, max(1, in_flight)
        self._pending: deque[tuple[int, list[dist.Work], list[torch.Tensor]]] = deque()

    def send(self, tensors: Sequence[torch.Tensor], step: int) -> None:
        """Start sending ``tensors`` of ``step`` to the next rank; wait for the oldest send beyond
        ``in_flight``."""
        header = encode(tensors, step).to(self.device)
        payload = [header, *(t.detach().contiguous() for t in tensors)]
        try:  # a peer already gone fails here, before any wait
            works = [dist.isend(t, self.next) for t in payload]
        except RuntimeError as err:
            raise DistributedError(f"rank {self.rank}: lost rank {self.next} while sending it step {step}: "
                                   f"{reason(err, self.timeout)}") from err
        self._pending.append((step, works, payload))
        while len(self._pending) > self.in_flight:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        step, works, _ = self._pending.popleft()
        for work in works:
            wait(work, self.timeout, f"rank {self.rank}: lost rank {self.next} while sending it step {step}")

    def flush(self) -> None:
        """Wait until every send has been received."""
        while self._pending:
            self._finish_oldest()

    def recv(self, step: int) -> list[torch.Tensor]:
        """The tensors the previous rank sent for ``step``."""
        what = f"rank {self.rank}: lost rank {self.prev} while waiting for step {step}"
        header = torch.empty(HEADER_WORDS, dtype=torch.int64, device=self.device)
        try:  # a peer already gone fails here, before any wait
            started = dist.irecv(header, self.prev)
        except RuntimeError as err:
            raise DistributedError(f"{what}: {reason(err, self.timeout)}") from err
        wait(started, self.timeout, what)
        got, specs = decode(header.cpu())
        if got != step:
            raise DistributedError(f"rank {self.rank}: rank {self.prev} sent step {got} where step {step} was "
                                   "expected; the ranks run different schedules (same splitfx and options on all?)")
        tensors = [torch.empty(shape, dtype=dtype, device=self.device) for dtype, shape in specs]
        works = [dist.irecv(t, self.prev) for t in tensors]
        for work in works:
            wait(work, self.timeout, what)
        return tensors
