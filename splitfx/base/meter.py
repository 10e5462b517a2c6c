"""Saved-for-backward accounting, shared by the fake-tensor cost probe and real measurements.

Activation memory is the bytes autograd keeps alive for backward. It is counted per *storage*
(views and ``detach()`` share one), and the model's own parameters and buffers are excluded: they
are state, not activations. The same rules serve prediction (under ``FakeTensorMode``) and
measurement (real tensors), so the two can be compared number for number.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (shared by views and detached aliases)."""
    return StorageWeakRef(t.untyped_storage()).cdata


def storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class StorageKeys(set):
    """Storage keys (:func:`storage_key`) that keep their storages alive. A key is a storage's
    address: a storage freed while a meter runs (a buffer a module replaces in its forward, as
    snntorch's neurons do with their membrane) would hand its address to a later saved tensor,
    which would then be excluded as state, an undercount that depends on the allocator's history."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[torch.UntypedStorage] = []

    def hold(self, t: torch.Tensor) -> None:
        """Exclude ``t``'s storage, and keep it (so its address) for as long as these keys live."""
        storage = t.untyped_storage()
        self.held.append(storage)
        self.add(StorageWeakRef(storage).cdata)

    def update(self, *others: Iterable[int]) -> None:
        for other in others:
            self.held.extend(getattr(other, "held", ()))
        super().update(*others)


def state_keys(modules: Iterable[torch.nn.Module]) -> StorageKeys:
    """Storage keys of every parameter and buffer of ``modules`` (held: see :class:`StorageKeys`)."""
    keys = StorageKeys()
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            keys.hold(t)
    return keys


class _Packed:
    """A saved tensor as the autograd graph keeps it; it holds its meter weakly (see :func:`_weak_pack`).

    It keeps a detached alias of the tensor (same storage, same version counter, no ``grad_fn``):
    for an op that saves its own output (ReLU, sigmoid, in-place ReLU) the output's ``grad_fn`` owns
    this object, and holding the output itself would close a cycle through C++ that the garbage
    collector cannot see, so a graph dropped without ``backward`` would never be freed. Autograd
    re-attaches the ``grad_fn`` when it unpacks, so what backward sees is unchanged."""

    __slots__ = ("generation", "key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: int, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter, self.generation = tensor.detach(), key, weakref.ref(meter), meter._generation

    def __del__(self):
        meter = self.meter()
        if meter is not None:
            meter._release(self.key, self.generation)


def _weak_pack(meter: SavedTensorMeter) -> Callable[[torch.Tensor], object]:
    """The pack hook of ``meter``, holding it weakly: every graph recorded under the hooks keeps its
    pack hook from C++, where the garbage collector cannot see, and a strong reference would keep
    the meter, its ``on_save`` owner and the tensors that hold that graph alive for good."""
    ref = weakref.ref(meter)

    def pack(t: torch.Tensor) -> object:
        owner = ref()
        return t.detach() if owner is None else owner._pack(t)

    return pack


class SavedTensorMeter:
    """Context manager tracking live saved-for-backward bytes and their peak.

    ``exclude`` holds storage keys never counted (parameters, buffers). ``on_save(key, nbytes)``
    is called for every counted save, also repeated ones, so a probe can attribute saves to nodes.
    ``mark()`` restarts the peak at the current live bytes, for per-phase peaks."""

    def __init__(self, exclude: Iterable[int] = (), on_save: Callable[[int, int], None] | None = None):
        # A set given is used live, so keys its owner adds while the meter runs are excluded too.
        self.exclude = exclude if isinstance(exclude, set) else set(exclude)
        self.on_save = on_save
        self.live = 0
        self.peak = 0
        self._counts: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self._generation = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(_weak_pack(self), self._unpack)

    def _pack(self, t: torch.Tensor):
        key = storage_key(t)
        if key in self.exclude:
            return t.detach()
        nbytes = storage_bytes(t)
        if self.on_save is not None:
            self.on_save(key, nbytes)
        count = self._counts.get(key, 0)
        if count == 0:
            self._bytes[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._counts[key] = count + 1
        return _Packed(t, key, self)

    @staticmethod
    def _unpack(p):
        return p.tensor if isinstance(p, _Packed) else p

    def _release(self, key: int, generation: int) -> None:
        if generation != self._generation:
            return  # saved before forget(): already taken off
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]
            self.live -= self._bytes.pop(key)

    def mark(self) -> None:
        self.peak = self.live

    def forget(self) -> None:
        """Count everything saved so far as released, as ``backward`` releases a graph's saved
        tensors even while Python still references the graph (fake-tensor simulations)."""
        self._generation += 1
        self._counts.clear()
        self._bytes.clear()
        self.live = self.peak = 0

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
