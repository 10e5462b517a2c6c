"""``tandem`` (LTL): teacher nodes matched to the student's cuts, the loss against the teacher's
normalised activations, teacher forcing, spiking students."""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import splitfx
from splitfx.passes.snn import THRESHOLD, SpikingReLU, spiking
from splitfx.recipes.teacher import normalised

from checks import assert_eval_equal, assert_interleaved_equals_summed, assert_isolated, measure


def _module_outputs(teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's modules' outputs in eval mode, by fx node name (``layer1.0.act2`` → ``layer1_0_act2``),
    read with forward hooks: independent of splitfx's matching."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name.replace(".", "_"), o))
             for name, m in teacher.named_modules() if name]
    with torch.no_grad():
        teacher.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def _block_outputs(sm: splitfx.SplitModule, x: torch.Tensor) -> list[torch.Tensor]:
    """What each non-final block hands its head (its tensors merged), run one after another."""
    h, outs = (x,), []
    for block, merge in zip(sm.blocks[:-1], sm.merges, strict=True):
        out = block(*h)
        out = out if isinstance(out, tuple) else (out,)
        outs.append(merge(*out))
        h = tuple(t.detach() for t in out)
    return outs


@pytest.mark.parametrize("name,size,points", [("resnet18", 32, ["layer1.0.act2", "layer2.1", "layer3.0.act2"]),
                                              ("vit_tiny_patch16_224", 64, ["blocks.2", "blocks.5", "blocks.8"])])
def test_each_cut_reads_the_teacher_node_in_the_same_place(name, size, points):
    """After module M, the student's block k learns the teacher's M output (read with a forward hook,
    independently of splitfx's matching), normalised as LTL does; the last block learns the labels."""
    torch.manual_seed(0)
    kwargs = dict(img_size=size) if "vit" in name else {}
    student, teacher = (timm.create_model(name, num_classes=10, **kwargs) for _ in range(2))
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    sm = splitfx.convert(student, x, split_points=points,
                         recipe=splitfx.recipe("tandem", teacher=teacher, percentile=99.0))
    losses = [loss.detach() for loss in sm.local_losses(x, y)]
    assert teacher.training, "the user's teacher keeps its mode (splitfx runs a frozen copy)"
    hooked, outs = _module_outputs(teacher, x), _block_outputs(sm, x)
    for k, point in enumerate(points):
        expected = F.mse_loss(outs[k], normalised(hooked[point.replace(".", "_")], 99.0))
        torch.testing.assert_close(losses[k], expected, rtol=0, atol=0)
    assert torch.equal(losses[-1], F.cross_entropy(student.train()(x), y))
    assert_isolated(sm, x, y)
    assert_eval_equal(sm, student, x)


def test_normalisation_is_ltls_percentile_clamp():
    a = torch.arange(1000.0).reshape(10, 100)  # non-negative, as LTL's clipped-ReLU teachers are
    t = normalised(a, 99.9)
    assert torch.equal(t, (a / 998.0).clamp(0, 1)) and t.max() == 1 and t.min() == 0
    signed = torch.tensor([-4.0, -1.0, 1.0, 2.0])
    assert torch.equal(normalised(signed, 50.0), torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert normalised(a, None) is a


@pytest.mark.parametrize("steps", [None, 4])
def test_by_default_a_spiking_student_learns_normalised_values_and_an_ordinary_one_raw_values(steps):
    """``percentile="auto"``: LTL's 99.9 clamp for spike rates, which live in [0, 1]; the teacher's
    own values for an ordinary student. Each block's loss is recomputed from the teacher's output."""
    torch.manual_seed(0)
    teacher = Net()
    _, x, y, sm = _tiny(teacher, steps)
    losses = [loss.detach() for loss in sm.local_losses(x, y)]
    hooked = _module_outputs(teacher, x)
    rates = [head(out) for head, out in zip(sm.heads, _block_outputs(sm, x), strict=False)]
    for k, point in enumerate(POINTS):
        wanted = hooked[point.replace(".", "_")]
        wanted = wanted if steps is None else normalised(wanted, 99.9)
        torch.testing.assert_close(losses[k], F.mse_loss(rates[k], wanted), rtol=0, atol=0)
    assert sm.recipe.options()["percentile"] == "auto"
    with pytest.raises(ValueError, match="percentile must be in"):
        splitfx.recipe("tandem", percentile="high")


class Net(nn.Module):
    """Three conv → ReLU layers and a linear readout: a tiny student or teacher."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else width, width, 3, padding=1) for i in range(3))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(3))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        for conv, act in zip(self.convs, self.acts, strict=True):
            x = act(conv(x))
        return self.head(x.mean((2, 3)))


class Renamed(Net):
    """Net's layers under other names: a teacher that matches only through ``rename``."""

    def __init__(self):
        super().__init__()
        self.layers, self.relus = self.convs, self.acts
        del self.convs, self.acts

    def forward(self, x):
        for conv, act in zip(self.layers, self.relus, strict=True):
            x = act(conv(x))
        return self.head(x.mean((2, 3)))


POINTS = ["acts.0", "acts.1"]


def _tiny(teacher, steps=None, **options):
    torch.manual_seed(0)
    student = Net() if steps is None else spiking(Net(), steps)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    sm = splitfx.convert(student, x, split_points=POINTS, recipe=splitfx.recipe("tandem", teacher=teacher, **options))
    return student, x, y, sm


def test_a_teacher_of_another_topology_is_refused_by_name():
    with pytest.raises(splitfx.PlanError, match=r"teacher has no node matching the student's acts_0"):
        _tiny(Renamed())
    with pytest.raises(splitfx.PlanError, match=r"recipe 'tandem'.*e\.g\. the teacher has no node matching"):
        splitfx.convert(Net(), torch.randn(4, 3, 8, 8), 3, recipe=splitfx.recipe("tandem", teacher=Renamed()))
    with pytest.raises(splitfx.PlanError, match=r"teacher's acts_0 has shape \(4, 16, 8, 8\), the student's acts_0"):
        _tiny(Net(width=16))
    _, x, y, sm = _tiny(Renamed(), rename={"convs": "layers", "acts": "relus"})
    assert [h.teacher_nodes for h in sm.heads] == [("relus_0",), ("relus_1",)]
    assert_isolated(sm, x, y)


def test_predicted_saved_bytes_are_measured_for_ordinary_and_spiking_students():
    """Each block's saved bytes, its T time steps included, are predicted exactly. (The E2E figure of a
    spiking model is over-predicted, by 5 % here: docs/design.md.)"""
    for steps in (None, 4):
        _, x, y, sm = _tiny(Net(), steps)
        e2e, blocks = measure(sm, x, y, sm.loss_fn)
        assert blocks == [b.saved_bytes for b in sm.plan.blocks]
        assert e2e == sm.plan.e2e_saved_bytes if steps is None else e2e <= sm.plan.e2e_saved_bytes
        assert_interleaved_equals_summed(sm, x, y)


def _block_grads(sm, x, y, k):
    sm.zero_grad(set_to_none=True)
    for i, loss in enumerate(sm.local_losses(x, y)):
        if i == k:
            loss.backward()
            break
    return {n: p.grad.clone() for n, p in zip(sm._block_param_names[k], sm.block_parameters(k), strict=True)}


@pytest.mark.parametrize("steps", [None, 4])
def test_teacher_forcing_makes_each_block_independent_of_the_one_before(steps):
    """With teacher_inputs=True, block k reads the teacher's activation at cut k−1: changing block k−1's
    weights changes nothing in block k's gradients (and, as a control, it does without forcing)."""
    for forcing in (True, False):
        student, x, y, sm = _tiny(Net(), steps, teacher_inputs=forcing)
        before = _block_grads(sm, x, y, 1)
        with torch.no_grad():
            student.convs[0].weight.mul_(1.5).add_(0.1)
        after = _block_grads(sm, x, y, 1)
        same = all(torch.equal(before[n], after[n]) for n in before)
        assert same == forcing
        assert_isolated(sm, x, y)


def test_the_spiking_neuron_is_ltls():
    """u[t] = β·u[t−1]·(1 − s[t−1]) + I, s[t] = 1[u[t] > 0.6], β = exp(−1/10), from snntorch's Leaky;
    the surrogate gradient is 1 within 0.2 of the threshold."""
    steps, current = 6, torch.tensor([0.0, 0.3, 0.55, 0.7, 2.0])
    x = current.repeat(steps, 1).requires_grad_(True)
    spikes = SpikingReLU(steps)(x)
    u, s, expected = torch.zeros(5), torch.zeros(5), []
    for _ in range(steps):
        u = math.exp(-1 / 10) * u * (1 - s) + current
        s = (u > THRESHOLD).float()
        expected.append(s)
    assert torch.equal(spikes, torch.stack(expected))
    spikes[0].sum().backward()  # step 0: u = I, so ds/dI is 1 exactly where |I − 0.6| < 0.2
    assert torch.equal(x.grad[0], ((current - THRESHOLD).abs() < 0.2).float())


def test_a_spiking_student_keeps_its_time_steps_inside_blocks():
    student, x, y, sm = _tiny(Net(), steps=4)
    assert [h.steps for h in sm.heads] == [4, 4]
    assert sm.plan.blocks[0].output_shapes == [[4 * 4, 8, 8, 8]]  # T·B: the plan counts every step
    assert_isolated(sm, x, y)
    assert_eval_equal(sm, student, x)
    assert student(x).shape == (4, 5)
    with pytest.raises(splitfx.SplitFXError, match=r"no nn\.ReLU"):
        spiking(nn.Sequential(nn.Linear(3, 3), nn.GELU()), 4)


def test_onnx_of_a_tandem_student_is_the_student_alone(tmp_path):
    student, x, y, sm = _tiny(Net())
    sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1))
    report = splitfx.export_onnx(sm, tmp_path / "student.onnx", x)
    import onnx

    graph = onnx.load(tmp_path / "student.onnx").graph
    assert report.max_abs_diff <= 1e-4 and [o.name for o in graph.output] and len(graph.output) == 1
    weights = sum(math.prod(i.dims) for i in graph.initializer)
    params = sum(p.numel() for p in student.parameters())
    assert params <= weights <= params + 8  # the student's weights and a few scalars: no teacher


def test_other_recipes_refuse_a_spiking_students_folded_cuts():
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(splitfx.PlanError, match=r"folded 4×.*recipe 'tandem'"):
        splitfx.convert(spiking(Net(), 4), x, split_points=POINTS, recipe="linear")


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A factory the command line builds (``tests.test_tandem:tiny_cnn``)."""
    return Net(width=8, classes=num_classes)


def test_the_command_line_trains_a_spiking_student_from_a_teacher_checkpoint(tmp_path, monkeypatch, capsys):
    from splitfx.cli import main
    from splitfx.programs.train import load_checkpoint_model

    monkeypatch.chdir(Path(__file__).parent.parent)
    quick = ["--epochs", "1", "--max-batches", "2", "--input-size", "8", "--blocks", "3"]
    assert main(["train", "tests.test_tandem:tiny_cnn", "--recipe", "e2e", *quick, "--out", str(tmp_path / "t")]) == 0
    teacher = str(tmp_path / "t" / "checkpoint.pt")
    assert main(["train", "tests.test_tandem:tiny_cnn", "--recipe", "tandem", "--teacher", teacher, "--spiking", "2",
                 *quick, "--out", str(tmp_path / "s")]) == 0
    assert "recipe 'tandem'" in capsys.readouterr().out
    student, config = load_checkpoint_model(str(tmp_path / "s" / "checkpoint.pt"))
    assert (config.spiking, config.teacher) == (2, teacher)
    assert isinstance(student.acts[0], SpikingReLU) and student(torch.randn(3, 3, 8, 8)).shape == (3, 10)
    linear = ["train", "tests.test_tandem:tiny_cnn", "--teacher", teacher, *quick, "--out", str(tmp_path / "x")]
    assert main(linear) == 2
    assert "--teacher: recipe 'linear' learns from no teacher; use --recipe tandem" in capsys.readouterr().err


def test_a_pipeline_stage_of_the_last_block_alone_reads_no_teacher_and_forcing_is_not_pipelined():
    from splitfx.runtime.pipeline import Stage, refusal

    _, x, y, sm = _tiny(Net())
    whole = [loss.detach() for loss in sm.local_losses(x, y)]
    h = x
    for block in sm.blocks[:-1]:
        h = block(h).detach()
    (last,) = Stage(sm, 2, 3).losses((h,), y, ())  # a later rank gets no inputs: none is needed
    assert torch.equal(last.detach(), whole[-1])
    _, _, _, forced = _tiny(Net(), teacher_inputs=True)
    assert "pipeline" in refusal(forced, [(0, 1), (1, 3)]) and refusal(sm, [(0, 1), (1, 3)]) is None


class Scaled(Net):
    """Net reading a buffer in its forward (a ``get_attr`` node, as Swin's position index is)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.full((3, 1, 1), 2.0))

    def forward(self, x):
        return super().forward(x * self.scale)


def test_one_recipe_plans_two_batches_and_its_teacher_follows_the_inputs_device():
    recipe = splitfx.recipe("tandem", teacher=Scaled())
    for batch in (4, 8):  # each plan traces the teacher on its own example
        x, y = torch.randn(batch, 3, 8, 8), torch.randint(0, 5, (batch,))
        sm = splitfx.convert(Scaled(), x, split_points=POINTS, recipe=recipe)
        assert all(torch.isfinite(loss) for loss in sm.local_losses(x, y))
    teacher = sm.heads[0].teacher
    on_cpu = teacher.run(["acts_0"], (x,))["acts_0"]
    moved = teacher.run(["acts_0"], (x.to("meta"),))["acts_0"]  # a device change: its graphs' buffers move too
    assert moved.device.type == "meta" and moved.shape == on_cpu.shape
