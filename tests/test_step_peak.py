"""The whole training step's peak (weights, gradients, optimizer state, activations, transients,
batch): predicted on fake tensors, measured on real ones by the same tracker and by the allocator."""
import pytest
import timm
import torch

import splitfx
from splitfx.base.live_bytes import LiveBytes
from splitfx.base.optimizers import optimizer_spec
from splitfx.base.workspace import fitted_here, onednn_scratch
from splitfx.programs.measure import allocator_peak
from splitfx.runtime.step import run_step

from tinynets import Stack


def _tracked(modules, optimizer, step, batch) -> int:
    step()  # the optimizer's state exists from the first step on
    with LiveBytes(*modules, optimizer, *batch, workspace=onednn_scratch) as tracker:
        step()
    return tracker.peak


@pytest.mark.parametrize("recipe,optimizer", [("linear", "sgd_momentum"), ("dgl", "adamw"), ("hpff", "sgd"),
                                              ("man", "adamw"), ("mlaan", "sgd")])
def test_predicted_step_peaks_equal_the_tracked_real_steps(recipe, optimizer):
    """Recipes whose heads recompute in backward (man, mlaan, hpff's decoders) included: the
    recomputation is a transient of the real step, and the plan runs the same step."""
    torch.manual_seed(0)
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    sm = splitfx.convert(model, x, 3, recipe=recipe, optimizer=optimizer)
    plan = sm.plan
    make = optimizer_spec(optimizer)
    opt = make([p for p in sm.parameters() if p.requires_grad])
    assert plan.step_peak_bytes == _tracked([sm], opt, lambda: sm.train_step(x, y, opt), (x, y))
    assert plan.training_peak_bytes() == plan.step_peak_bytes == max(b.step_peak_bytes for b in plan.blocks)
    assert all(b.step_peak_bytes > b.saved_bytes for b in plan.blocks)
    assert plan.training_peak_bytes("rmsprop") != plan.step_peak_bytes, "another optimizer: the formula"
    e2e = timm.create_model("resnet18", num_classes=10)
    opt = make(e2e.parameters())
    loss = torch.nn.CrossEntropyLoss()

    def e2e_loss():  # lazily, as a training loop runs it: the last step's gradients are freed before the forward
        yield loss(e2e(x), y)

    measured = _tracked([e2e], opt, lambda: run_step(e2e_loss(), opt, x.device), (x, y))
    # E2E is predicted on the traced graph, whose in-place ops the eager model may run differently.
    assert abs(plan.e2e_step_peak_bytes - measured) <= 0.01 * measured


def test_the_allocator_agrees_where_every_buffer_is_a_tensor():
    """A model of linear layers allocates nothing outside torch's tensors: the profiler's memory
    timeline then equals the prediction up to what was alive before the step (the batch)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU()) for _ in range(6)],
                                torch.nn.Linear(256, 10))
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    sm = splitfx.convert(model, x, 3, optimizer="sgd_momentum")
    opt = torch.optim.SGD(sm.parameters(), lr=0.1, momentum=0.9)
    sm.train_step(x, y, opt)
    measured = allocator_peak(lambda: sm.train_step(x, y, opt), x.device)
    predicted = sm.plan.step_peak_bytes
    assert abs(measured - predicted) <= 0.02 * predicted, (measured, predicted)


@pytest.mark.skipif(not fitted_here(), reason="oneDNN's scratch is modelled on AVX-512 x86 CPUs only")
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100"])
def test_the_allocator_agrees_on_convolutions_once_their_scratch_is_modelled(name):
    """oneDNN's convolutions allocate buffers of their own on CPU (base/workspace): with them modelled,
    the predicted local and E2E step peaks equal the allocator's within 1 %, strided, 1×1 and
    depthwise convolutions included."""
    torch.manual_seed(0)
    model, x = timm.create_model(name, num_classes=10), torch.randn(8, 3, 64, 64)
    y = torch.randint(0, 10, (8,))
    sm = splitfx.convert(model, x, 4, optimizer="sgd_momentum")
    opt = torch.optim.SGD([p for p in sm.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    sm.train_step(x, y, opt)
    local = allocator_peak(lambda: sm.train_step(x, y, opt), x.device)
    e2e = timm.create_model(name, num_classes=10)
    e2e_opt = torch.optim.SGD(e2e.parameters(), lr=0.01, momentum=0.9)

    def e2e_loss():
        yield torch.nn.functional.cross_entropy(e2e(x), y)

    run_step(e2e_loss(), e2e_opt, x.device)
    whole = allocator_peak(lambda: run_step(e2e_loss(), e2e_opt, x.device), x.device)
    assert abs(local - sm.plan.step_peak_bytes) <= 0.01 * local, (local, sm.plan.step_peak_bytes)
    assert abs(whole - sm.plan.e2e_step_peak_bytes) <= 0.01 * whole, (whole, sm.plan.e2e_step_peak_bytes)


def test_a_budget_counts_the_whole_step():
    model, x = timm.create_model("resnet18", num_classes=10), torch.randn(4, 3, 32, 32)
    plan = splitfx.plan(model, x, 2)
    assert plan.step_peak_bytes > plan.local_peak_bytes + plan.param_bytes
    assert splitfx.plan(model, x, memory_budget=plan.step_peak_bytes).training_peak_bytes() <= plan.step_peak_bytes


def _stack(spare: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Stack()
    if spare:
        model.spare = torch.nn.Linear(100, 100)  # never used by forward: 10,100 parameters, 40,400 bytes
    return model


@pytest.mark.parametrize("replace", [None, 2], ids=["plain", "RepL"])
def test_parameters_the_forward_never_uses_are_held_but_neither_trained_nor_given_optimizer_state(replace):
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    spare, plain = (splitfx.convert(_stack(s), x, 2, replace=replace) for s in (True, False))
    weights = 100 * 100 * 4 + 100 * 4
    with_, without = spare.plan, plain.plan
    assert (with_.trainable_params, with_.trainable_params_before) == (without.trainable_params,
                                                                       without.trainable_params_before)
    assert with_.trainable_bytes == without.trainable_bytes and with_.param_bytes == without.param_bytes + weights
    for optimizer in ("adamw", "sgd"):  # simulated, and the formula
        assert with_.training_peak_bytes(optimizer) == without.training_peak_bytes(optimizer) + weights
    assert with_.e2e_step_peak_bytes == without.e2e_step_peak_bytes + weights
    repl = [[line for line in p.table().splitlines() if "trainable parameters" in line] for p in (with_, without)]
    assert repl[0] == repl[1] and len(repl[0]) == (replace is not None)  # what `splitfx plan` prints
    opt = torch.optim.AdamW(spare.parameters())  # as a user makes it: every parameter, the spare ones too
    assert with_.step_peak_bytes == _tracked([spare], opt, lambda: spare.train_step(x, y, opt), (x, y))
    assert not [p for p in spare.model.spare.parameters() if opt.state[p]]
