"""ONNX export: parity with onnxruntime, the user's model untouched, checkpoints export directly,
large weights in PATH.data, files written whole or not at all."""
import contextlib
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

import splitfx
from splitfx.api import onnx_export
from splitfx.cli import main


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vit_tiny_patch16_224", 224), ("convnext_atto", 64)])
def test_export_parity_and_model_left_as_it_was(tmp_path, name, size):
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    next(model.children()).eval()  # a model whose modules are in mixed modes
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, size, size)
    sm = splitfx.convert(model, x, num_blocks=3)
    path = tmp_path / "m.onnx"
    report = splitfx.export_onnx(sm, path, x)
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output)
    assert report.top1_equal and report.batch_sizes == (2, 3)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch dimension is dynamic"
    assert not any("detach" in n.op_type.lower() for n in graph.node)
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_failed_verification_writes_nothing(tmp_path):
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(splitfx.SplitFXError, match="nothing written"):
        splitfx.export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 32, 32), atol=0.0)
    assert os.listdir(tmp_path) == []


class _BiasedAttention(torch.nn.Module):
    """BEiT's attention in miniature: SDPA with a per-head bias of batch 1 as ``attn_mask``, then
    ``transpose(1, 2).reshape``. Under the CPU flash kernel torch.export records that reshape as a view,
    and the ONNX exporter's decompositions (the math kernel's layout) cannot run it: ``Cannot view a
    tensor with shape [s, 5, 2, 8] and strides (80, 8, 40, 1)``."""

    def __init__(self, dim: int = 16, heads: int = 2, tokens: int = 5):
        super().__init__()
        self.heads, self.qkv = heads, torch.nn.Linear(dim, 3 * dim)
        self.bias = torch.nn.Parameter(torch.randn(heads, tokens, tokens))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.unsqueeze(0))
        return x.transpose(1, 2).reshape(b, n, c)


def test_attention_with_a_bias_mask_exports_with_dynamo(tmp_path):
    """BEiT and MaxViT fell back to TorchScript (whose graph holds ~5.5× the weights while exporting:
    beit_large_patch16_384 ran out of memory); SDPA's math kernel during export keeps them on dynamo."""
    report = splitfx.export_onnx(_BiasedAttention().eval(), tmp_path / "m.onnx", torch.randn(2, 5, 16))
    assert report.exporter == "dynamo"
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output) and report.top1_equal


def _small() -> torch.nn.Module:
    """25 kB of weights, for 3×8×8 inputs."""
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))


def _without_dynamo(monkeypatch):
    """Make the dynamo exporter fail: export falls back to TorchScript."""
    export = torch.onnx.export

    def fails_with_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo cannot export this")
        return export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", fails_with_dynamo)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_external_data_puts_the_weights_beside_the_model_and_runs_in_onnxruntime(tmp_path, monkeypatch, exporter):
    if exporter == "torchscript":
        _without_dynamo(monkeypatch)
    model, x = _small().eval(), torch.randn(2, 3, 8, 8)
    report = splitfx.export_onnx(model, tmp_path / "m.onnx", x, external_data=True)
    assert report.exporter == exporter and report.data_path == str(tmp_path / "m.onnx.data")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    graph = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}, "the weights are in PATH.data, named as it is, not as the temp file was"
    assert os.path.getsize(tmp_path / "m.onnx") < 16 * 36 * 10 * 4 <= os.path.getsize(tmp_path / "m.onnx.data")
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {graph.input[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, report.max_abs_output)
    assert "and its weights" in str(report) and report.max_abs_diff <= 1e-4


_SESSION_GROWTH = """
import sys, torch, onnxruntime as ort, splitfx
def anonymous():  # resident anonymous memory, not file pages, which the OS can drop
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon"))
session, grown = ort.InferenceSession, []
def measured(*args, **kwargs):
    before = anonymous()
    made = session(*args, **kwargs)
    grown.append(anonymous() - before)
    return made
ort.InferenceSession = measured
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
external = sys.argv[2] == "external"
report = splitfx.export_onnx(model, sys.argv[1], torch.randn(2, 1024), external_data=external)
assert report.within(1e-4) and (report.data_path is not None) == external
print(max(grown))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_verification_reads_external_weights_in_place_instead_of_copying_them(tmp_path):
    """A billion-parameter model's weights fit in memory once, beside onnxruntime's file-backed view
    of them, not twice (pre-packing copies every matrix-multiply weight). Measured in a fresh process
    whose large blocks go back to the OS when freed, as a sweep worker's do."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    grown = {layout: int(subprocess.run([sys.executable, "-c", _SESSION_GROWTH, str(tmp_path / f"{layout}.onnx"),
                                         layout], env=env, capture_output=True, text=True, check=True,
                                        timeout=300).stdout.split()[-1]) for layout in ("external", "inside")}
    weights = 8 * 1024 * 1025 * 4
    assert grown["external"] < weights / 8 and grown["inside"] > weights / 2, f"grew {grown} for {weights} B"


def test_by_default_only_weights_over_a_gib_go_to_external_data(tmp_path, monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    report = splitfx.export_onnx(_small(), tmp_path / "small.onnx", x)
    assert report.data_path is None and os.listdir(tmp_path) == ["small.onnx"]
    assert onnx_export.EXTERNAL_ABOVE == 2**30
    monkeypatch.setattr(onnx_export, "EXTERNAL_ABOVE", 1000)  # this model's weights are 25 kB
    report = splitfx.export_onnx(_small(), tmp_path / "big.onnx", x)
    assert report.data_path == str(tmp_path / "big.onnx.data")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "small.onnx"]
    report = splitfx.export_onnx(_small(), tmp_path / "one.onnx", x, external_data=False)
    assert report.data_path is None and not (tmp_path / "one.onnx.data").exists()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_failed_export_writes_neither_file_and_keeps_the_old_ones(tmp_path, monkeypatch, exporter):
    if exporter == "torchscript":
        _without_dynamo(monkeypatch)
    for name in ("m.onnx", "m.onnx.data"):
        (tmp_path / name).write_bytes(b"an earlier export")
    with pytest.raises(splitfx.SplitFXError, match="nothing written"):
        splitfx.export_onnx(_small(), tmp_path / "m.onnx", torch.randn(2, 3, 8, 8), atol=0.0, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"], "no temp folder left behind"
    assert all((tmp_path / name).read_bytes() == b"an earlier export" for name in ("m.onnx", "m.onnx.data"))


def test_an_exporter_that_dies_halfway_leaves_nothing(tmp_path, monkeypatch):
    def writes_half_then_fails(model, args, path, **kwargs):
        with open(path, "wb") as f, open(path + ".data", "wb") as data:
            f.write(b"half a model")
            data.write(b"half the weights")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch.onnx, "export", writes_half_then_fails)
    with pytest.raises(splitfx.SplitFXError, match="out of memory"):
        splitfx.export_onnx(_small(), tmp_path / "m.onnx", torch.randn(2, 3, 8, 8), external_data=True)
    assert os.listdir(tmp_path) == []


def test_a_temp_folder_left_by_a_killed_export_is_removed_by_the_next_one(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    stale, live = tmp_path / f".splitfx-{int(dead.stdout)}-abc123", tmp_path / f".splitfx-{os.getppid()}-def456"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "m.onnx.data").write_bytes(b"partial")
    splitfx.export_onnx(_small(), tmp_path / "m.onnx", torch.randn(2, 3, 8, 8), external_data=True)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "m.onnx", "m.onnx.data"])
    assert os.listdir(live) == ["m.onnx.data"], "a live writer's temp folder is never touched"


def test_checkpoint_exports_and_loads_into_fresh_timm_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "resnet18", "--recipe", "linear", "--epochs", "1", "--batch", "128",
                 "--input-size", "16", "--blocks", "2", "--out", str(run)]) == 0
    out = tmp_path / "r.onnx"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out and out.exists()
    state = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    fresh = timm.create_model("resnet18", num_classes=10)
    fresh.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, strict=True)


class _ZeroPadThenMaxPool(torch.nn.Module):
    """BiT ResNet-V2's stem in miniature: the zero padding wins wherever a window is all negative."""

    def __init__(self):
        super().__init__()
        self.pad, self.pool = torch.nn.ConstantPad2d(1, 0.0), torch.nn.MaxPool2d(3, 2)

    def forward(self, x):
        return self.pool(self.pad(x - 1.0))


def test_zero_padding_before_max_pool_survives_onnxruntime_pad_fusion(tmp_path):
    """onnxruntime's Pad_Fusion folds Pad(0) into MaxPool, whose padding is -inf: exported as is, the
    border of this model's output would be the negative window maxima instead of 0."""
    report = splitfx.export_onnx(_ZeroPadThenMaxPool(), tmp_path / "p.onnx", torch.rand(2, 3, 8, 8) * 0.5)
    assert report.max_abs_diff == 0.0


def test_bit_resnetv2_exports_within_tolerance(tmp_path):
    model = timm.create_model("resnetv2_50x1_bit", num_classes=10)
    report = splitfx.export_onnx(model, tmp_path / "bit.onnx", torch.randn(2, 3, 64, 64))
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output)
    assert all(p.requires_grad for p in model.parameters()), "the model itself was not rewritten"


class _LargeMeanBatchNorm(nn.Module):
    """EfficientNetV2-M's random-init eval state in miniature: a convolution whose outputs (~1e5) sit on
    the BatchNorm running mean, so PyTorch's float32 ``conv(x) − mean`` cancels to a few digits."""

    def __init__(self, shift: float = 1e5):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.bias.fill_(shift)
            self.bn.running_mean.fill_(shift)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


class _Cancelling(nn.Module):
    """Two large convolutions subtracted: every float32 runtime loses the answer in the cancellation."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(32, 8, 3), nn.Conv2d(32, 8, 3), nn.Linear(8, 4)
        with torch.no_grad():
            self.a.bias.fill_(1e5)
            self.b.bias.fill_(1e5)

    def forward(self, x):
        return self.head((self.a(x) - self.b(x)).mean((2, 3)))


def test_onnx_that_matches_the_exact_outputs_passes_where_pytorch_float32_cancels(tmp_path):
    """onnxruntime folds the BatchNorm into the convolution and gets the float64 answer; PyTorch's
    float32 misses it by ~5e-4 on logits of ~0.3, so only the float64 reference shows the export is right."""
    torch.manual_seed(0)
    report = splitfx.export_onnx(_LargeMeanBatchNorm().eval(), tmp_path / "bn.onnx", torch.randn(2, 3, 8, 8))
    assert report.reference == "PyTorch float64"
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output) and report.top1_equal


@pytest.mark.parametrize("available, reference", [(2**40, "PyTorch float64"), (0, None)])
def test_weights_over_the_float64_cap_get_the_float64_reference_where_memory_allows(tmp_path, monkeypatch,
                                                                                    available, reference):
    """Weights over FLOAT64_UP_TO (here: any) still get the exact reference where their float64 copy
    fits in half the available memory (gemma4_vit_570m: 2.3 GB of weights); where it does not, the
    export is refused and the message says why."""
    from splitfx.api import onnx_verify

    monkeypatch.setattr(onnx_verify, "FLOAT64_UP_TO", 0)
    monkeypatch.setattr(onnx_verify, "available_memory", lambda: available)
    torch.manual_seed(0)
    model, x = _LargeMeanBatchNorm().eval(), torch.randn(2, 3, 8, 8)
    if reference:
        assert splitfx.export_onnx(model, tmp_path / "bn.onnx", x).reference == reference
    else:
        with pytest.raises(splitfx.SplitFXError, match=r"no float64 reference: .* over half the available memory"):
            splitfx.export_onnx(model, tmp_path / "bn.onnx", x)
        assert not list(tmp_path.iterdir())


def test_available_memory_is_what_the_os_reports():
    from splitfx.api.onnx_verify import available_memory

    with open("/proc/meminfo") as meminfo:
        line = next(line for line in meminfo if line.startswith("MemTotal:"))
    assert 0 < available_memory() <= int(line.split()[1]) * 1024


def test_an_ill_conditioned_model_is_named_as_such_and_nothing_is_written(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(splitfx.SplitFXError, match=r"ill-conditioned at these weights.*float64 ones by"):
        splitfx.export_onnx(_Cancelling().eval(), tmp_path / "c.onnx", torch.randn(2, 32, 8, 8))
    assert not list(tmp_path.iterdir())


class _SensitiveAwayFromZero(nn.Module):
    """Exact at the example (all zeros), chaotic on noise: float32 rounding of sin(x) times 1e4."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1e4))

    def forward(self, x):
        return torch.sin(self.gain * torch.sin(x))


def test_verify_on_example_checks_the_example_where_noise_is_ill_conditioned(tmp_path):
    model, example = _SensitiveAwayFromZero(), torch.zeros(2, 8)
    with pytest.raises(splitfx.SplitFXError, match=r"ill-conditioned.*verify_on='example'"):
        splitfx.export_onnx(model, tmp_path / "noise.onnx", example)
    report = splitfx.export_onnx(model, tmp_path / "example.onnx", example, verify_on="example")
    assert report.batch_sizes == (2, 3) and report.max_abs_diff == 0.0 and report.reference == "PyTorch"
    with pytest.raises(splitfx.ArgumentError, match="verify_on must be 'random' or 'example'"):
        splitfx.export_onnx(model, tmp_path / "bad.onnx", example, verify_on="data")


class _WindowAttention(nn.Module):
    """Hiera's mask-unit attention in miniature: SDPA over (B, heads, windows, tokens, dim), or 3-D as
    SAM's ViT runs it, (B·heads, tokens, dim); ``masked`` adds a 3-D ``attn_mask``: per window, or, as
    SAM's relative-position bias, computed from the query (batch-dependent)."""

    def __init__(self, rank: int, masked: bool = False):
        super().__init__()
        self.rank, self.masked, self.qkv, self.head = rank, masked, nn.Linear(8, 24), nn.Linear(48, 4)
        self.rel_pos, self.window_bias = nn.Linear(8, 6), nn.Parameter(torch.randn(2, 3, 3))

    def forward(self, x):
        qkv = self.qkv(x)
        if self.rank == 5:
            qkv = qkv.reshape(x.shape[0], 2, 2, 3, 3, 4).permute(4, 0, 1, 2, 3, 5)
        else:
            qkv = qkv.reshape(x.shape[0], 6, 3, 8).permute(2, 0, 1, 3)
        q, k, v = qkv.unbind(0)
        mask = None
        if self.masked:
            mask = self.window_bias if self.rank == 5 else self.rel_pos(q)
        return self.head(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).flatten(1))


@pytest.mark.parametrize("rank,masked", [(5, False), (3, False), (5, True), (3, True)])
def test_attention_of_any_rank_exports_with_dynamo(tmp_path, rank, masked):
    """The exporter's own SDPA translation takes 4-D inputs only (microsoft/onnxscript#2558); a mask of
    rank up to 3 spans only the dims that flattening to 4-D keeps (samvit: (B·heads, N, N))."""
    torch.manual_seed(0)
    model = _WindowAttention(rank, masked).eval()
    report = splitfx.export_onnx(model, tmp_path / "w.onnx", torch.randn(2, 6, 8))
    assert report.exporter == "dynamo" and report.batch_sizes == (2, 3)
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output) and report.top1_equal


class _CondConv(nn.Module):
    """efficientnet_cc's routed convolution in miniature: per-sample kernels, run as one convolution
    whose group count is the batch size."""

    def __init__(self):
        super().__init__()
        self.route, self.head = nn.Linear(3, 4), nn.Linear(8, 4)
        self.conv = timm.layers.CondConv2d(3, 8, 3, num_experts=4)

    def forward(self, x):
        routing = torch.sigmoid(self.route(x.mean((2, 3))))
        return self.head(self.conv(x, routing).mean((2, 3)))


def test_a_model_with_no_dynamic_batch_export_is_exported_at_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    report = splitfx.export_onnx(_CondConv().eval(), tmp_path / "cc.onnx", torch.randn(1, 3, 8, 8))
    assert report.exporter == "dynamo" and report.batch_sizes == (1,) and "torchscript:" in report.fixed_batch
    assert report.max_abs_diff <= 1e-4 * max(1.0, report.max_abs_output) and report.top1_equal
    assert "the batch is fixed at 1" in str(report), "the example's own batch size, not the 2 tried for dynamic"
    dims = ort.InferenceSession(str(tmp_path / "cc.onnx"), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert dims == [1, 3, 8, 8]


def test_an_optimized_graph_that_is_not_valid_onnx_is_exported_again_without_the_optimizer(tmp_path):
    """Upstream: onnxscript's optimizer writes gemma4_vit's graph with a ``Clip`` reading a value no
    node makes (``onnx.checker``: not topologically sorted); the unoptimized graph is valid. When the
    first assertion fails, the optimizer is fixed and the fallback can go."""
    model = timm.create_model("gemma4_vit_167m_enc", pretrained=False, img_size=96, depth=1).eval()
    x = torch.randn(2, 3, 96, 96)
    torch.onnx.export(model, (x,), tmp_path / "upstream.onnx", dynamo=True)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(tmp_path / "upstream.onnx")
    report = splitfx.export_onnx(model, tmp_path / "m.onnx", x)
    assert report.exporter.startswith("dynamo, unoptimized") and report.within(1e-4), report
    onnx.checker.check_model(tmp_path / "m.onnx")


class _TwoHeads(nn.Module):
    """A model returning a dict of two outputs, one of them nested in a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.cls, self.box = nn.Linear(8, 3), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.cls(h), "extra": (self.box(h), h.mean(1))}


def test_every_output_of_a_dict_model_is_verified_and_a_wrong_file_is_rejected(tmp_path):
    from splitfx.api.onnx_verify import _outputs, verify_export

    torch.manual_seed(0)
    model, x = _TwoHeads().eval(), torch.randn(2, 6)
    assert [t.shape for t in _outputs(model(x))] == [(2, 3), (2, 4), (2,)]
    report = splitfx.export_onnx(model, tmp_path / "m.onnx", x)
    assert report.top1_equal and report.max_abs_diff <= 1e-4
    other = _TwoHeads().eval()  # same structure, other weights: the file does not compute it
    with pytest.raises(splitfx.SplitFXError, match="ONNX verification failed"):
        verify_export(other, str(tmp_path / "m.onnx"), (x,), True, 1e-4, "m.onnx")


def _dynamo_interrupted(monkeypatch, how: str) -> list[str]:
    """Make the dynamo exporter meet a Ctrl-C: turned into an error of its own (the interrupt its
    ``__cause__``), or dropped by it before it fails or writes the file. Returns the fallbacks tried."""
    tried: list[str] = []
    dynamo, torchscript = onnx_export._dynamo, onnx_export._torchscript

    def interrupted(*args, **kwargs):
        if how == "error":
            raise RuntimeError("export failed") from KeyboardInterrupt()
        with contextlib.suppress(KeyboardInterrupt):  # what a library that catches BaseException does
            signal.raise_signal(signal.SIGINT)
        if how == "dropped, then failed":
            raise RuntimeError("export failed")
        return dynamo(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "_dynamo", interrupted)
    monkeypatch.setattr(onnx_export, "_torchscript", lambda *a: tried.append("torchscript") or torchscript(*a))
    return tried


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, as a program run from a terminal has it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how", ["error", "dropped, then failed", "dropped, then written"])
def test_a_ctrl_c_during_the_dynamo_export_stops_the_export_and_writes_nothing(tmp_path, monkeypatch,
                                                                              default_sigint, how):
    tried = _dynamo_interrupted(monkeypatch, how)
    with pytest.raises(KeyboardInterrupt):
        splitfx.export_onnx(_small(), tmp_path / "m.onnx", torch.randn(2, 3, 8, 8))
    assert os.listdir(tmp_path) == [] and tried == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_during_train_s_final_export_exits_130_with_no_model_onnx(tmp_path, monkeypatch, capsys):
    (tmp_path / "interruptible_net.py").write_text(
        "from torch import nn\n\n"
        "def net(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    tried = _dynamo_interrupted(monkeypatch, "error")
    assert main(["train", "interruptible_net:net", "--blocks", "2", "--batch", "8", "--input-size", "8",
                 "--epochs", "1", "--max-batches", "1", "--out", "run"]) == 130
    assert capsys.readouterr().err.startswith("splitfx: interrupted")
    assert tried == [] and "model.onnx" not in os.listdir(tmp_path / "run")
    assert "checkpoint.pt" in os.listdir(tmp_path / "run")


def test_the_exporter_prints_nothing_to_stdout(tmp_path, capsys):
    """A user's output (``splitfx train``'s summary) is not interleaved with the exporter's progress lines."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(4, 6)
    sm = splitfx.convert(model, x, 2)
    capsys.readouterr()
    splitfx.export_onnx(sm, tmp_path / "m.onnx", x)
    assert "[torch.onnx]" not in capsys.readouterr().out
