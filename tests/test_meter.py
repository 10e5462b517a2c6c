"""The saved-tensor meter never changes what is freed: a graph dropped without ``backward`` releases its
saved tensors, in the process and in the meter's ``live`` count, whatever kind of tensor it saved."""
import gc
import weakref

import pytest
import torch

import splitfx
from splitfx.base.meter import SavedTensorMeter, state_keys

from tinynets import Branchy


def _input(x):  # mul saves both of its inputs; ``a`` is an intermediate, not the output
    a = x * 2
    return a, a * x


def _output(x):  # sigmoid saves its own output
    a = torch.sigmoid(x * 2)
    return a, torch.sin(a)


def _inplace_output(x):  # in-place ReLU saves the tensor it overwrote, now its own output
    a = (x * 2).relu_()
    return a, torch.sin(a)


def _view(x):  # the view is what mul saves; its base is the storage counted
    a = (x * 2).view(-1)
    return a, a * x.view(-1)


def _saved_twice(x):  # one tensor saved twice by one op, and once more by a second op
    a = torch.tanh(x * 2)
    return a, a * a + torch.sin(a)


@pytest.mark.parametrize("build", [_input, _output, _inplace_output, _view, _saved_twice])
def test_a_graph_dropped_without_backward_is_freed(build):
    x = torch.randn(64, 64, requires_grad=True)
    with SavedTensorMeter({id(None)}) as meter:
        a, out = build(x)
        assert meter.live > 0
        alive = weakref.ref(a)
        del a, out
        gc.collect()
        assert alive() is None
        assert meter.live == 0
    assert meter.peak > 0


@pytest.mark.parametrize("build", [_input, _output, _inplace_output, _view, _saved_twice])
def test_the_meter_does_not_change_the_gradients(build):
    x = torch.randn(16, 16, requires_grad=True)
    build(x)[1].sum().backward()
    plain, x.grad = x.grad, None
    with SavedTensorMeter({id(None)}) as meter:
        build(x)[1].sum().backward()
        assert meter.live == 0
    assert torch.equal(x.grad, plain)


def _relu_outputs(model: torch.nn.Module) -> list[weakref.ref]:
    """Weak references to every output of the model's ReLUs (they save their own outputs)."""
    seen: list[weakref.ref] = []
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_hook(lambda _m, _i, out: seen.append(weakref.ref(out)))
    return seen


def test_local_losses_abandoned_after_the_first_loss_free_its_graph():
    model = Branchy(depth=3)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    sm = splitfx.convert(model, x, 3)
    seen = _relu_outputs(model)
    with SavedTensorMeter(state_keys([sm])) as meter:
        steps = sm.local_losses(x, y)
        loss = next(steps)
        assert meter.live > 0 and seen
        steps.close()
        del steps, loss
        gc.collect()
        assert meter.live == 0
    assert all(r() is None for r in seen)


@pytest.mark.parametrize("recipe", [r for r in splitfx.list_recipes() if r != "ffr"])  # ffr regresses: test_ffr.py
def test_a_meter_around_several_steps_holds_nothing_between_them(recipe):
    """``splitfx train`` and the benchmarks read the peak of a meter spanning many steps: each step
    must leave nothing counted (or alive) behind, or the peak would grow with the number of steps."""
    model = Branchy(depth=3)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    sm = splitfx.convert(model, x, 3, recipe=recipe)
    opt = torch.optim.SGD(sm.parameters(), lr=0.01)
    peaks = []
    with SavedTensorMeter(state_keys([sm])) as meter:
        for _ in range(3):
            sm.train_step(x, y, opt)
            assert meter.live == 0
            peaks.append(meter.peak)
            meter.mark()
    assert peaks[0] > 0 and len(set(peaks[1:])) == 1


def test_excluded_state_stays_alive_while_its_keys_do():
    """Keys are storage addresses: a buffer a module replaces in its forward (snntorch's neurons do,
    with their membrane) must not be freed while the meter compares against its key, or a tensor
    saved later may take its address and go uncounted (seen as a flaky undercount of a spiking
    student's block in the tandem tests)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    class Swapping(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("state", torch.zeros(16, 16))
            self.lin = torch.nn.Linear(16, 16)

        def forward(self, x):
            self.state = torch.zeros(16, 16)
            return torch.relu(self.lin(x))

    m = Swapping()
    old = StorageWeakRef(m.state.untyped_storage())
    keys = state_keys([m])
    with SavedTensorMeter(keys) as meter:
        m(torch.randn(16, 16)).sum().backward()
    assert not old.expired() and meter.peak == 2 * 16 * 16 * 4  # the input and the ReLU's output
    del keys, meter
    gc.collect()
    assert old.expired()
