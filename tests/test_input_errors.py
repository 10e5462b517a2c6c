"""An input size the model cannot take (#37, item 9): on the command line one line naming --input-size,
the size the model takes and what to pass, exit 2, before any tracing; in the API an ArgumentError
naming example_inputs, with the model's own error as its ``__cause__``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import splitfx
from splitfx.api.input_shape import shape_mismatch

from tinynets import Branchy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLI = {
    # name: (argv, words the one line must contain)
    "plan vit_tiny": (["plan", "vit_tiny_patch16_224", "--input-size", "32"],
                      ["--input-size 32:", "3×224×224", "patch_embed.img_size", "pass --input-size 224"]),
    "plan 1 channel": (["plan", "test_vit3", "--input-size", "1", "32", "32"],
                       ["--input-size 1 32 32:", "3×160×160", "pass --input-size 160"]),
    "bench": (["bench", "test_vit3", "--input-size", "32", "--steps", "1"],
              ["--input-size 32:", "pass --input-size 160"]),
    "bench --stages": (["bench", "test_vit3", "--stages", "2", "--input-size", "32"],
                       ["--input-size 32:", "pass --input-size 160"]),
    "non-image": (["bench", "splitfx.models:mlp8", "--input-size", "10", "--steps", "1"],
                  ["--input-size 10:", "inputs of shape (10,)", "leave --input-size out"]),
    "export": (["export", "tests.tinynets:Branchy", "--input-size", "1", "8", "8", "--out", "{out}/b.onnx"],
               ["expected input[2, 1, 8, 8] to have 3 channels", "in_channels of its first convolution, stem",
                "pass --input-size 8"]),
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> tuple[dict[str, tuple[int, str]], str]:
    """Every CLI case run at once, each in its own process (most of each is importing torch): exit
    status and stderr by name, and the folder ``export`` was to write into."""
    out = str(tmp_path_factory.mktemp("out"))
    started = {name: subprocess.Popen([sys.executable, "-m", "splitfx", *(a.format(out=out) for a in argv)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for name, (argv, _) in CLI.items()}
    try:
        stderr = {name: p.communicate(timeout=300)[1] for name, p in started.items()}
    finally:  # one that timed out leaves none of the others running
        for p in started.values():
            p.kill()
            p.communicate()
    return {name: (p.returncode, stderr[name]) for name, p in started.items()}, out


@pytest.mark.parametrize("name", CLI)
def test_cli_refuses_an_input_size_the_model_cannot_take(cli, name):
    returncode, stderr = cli[0][name]
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("splitfx: error: --input-size"), stderr
    assert "Traceback" not in stderr
    for word in CLI[name][1]:
        assert word in lines[0]


def test_export_refuses_it_before_writing(cli):
    assert cli[0]["export"][0] == 2 and not os.listdir(cli[1])


@pytest.mark.parametrize("entry", [splitfx.plan, splitfx.convert])
def test_api_names_example_inputs_and_keeps_the_model_error_as_cause(entry):
    with pytest.raises(splitfx.ArgumentError, match=r"example_inputs has shape \(2, 1, 8, 8\).*\(B, 3, 8, 8\)") as err:
        entry(Branchy(), torch.randn(2, 1, 8, 8), 2)
    assert err.value.__cause__ is not None and not isinstance(err.value.__cause__, splitfx.ArgumentError)


def test_api_names_the_size_a_timm_vit_takes():
    with pytest.raises(splitfx.ArgumentError, match=r"Input height \(32\) doesn't match model \(160\).*"
                                                    r"3×160×160.*\(B, 3, 160, 160\)") as err:
        splitfx.plan(timm.create_model("test_vit3"), torch.randn(2, 3, 32, 32), 2)
    assert isinstance(err.value.__cause__, AssertionError)


class _AlwaysFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise RuntimeError("not about the shape")


def test_no_mismatch_where_the_shape_is_fine_or_not_the_cause():
    assert shape_mismatch(Branchy(), torch.randn(2, 3, 8, 8)) is None
    assert shape_mismatch(_AlwaysFails(), torch.randn(2, 1, 8, 8)) is None
    assert shape_mismatch(nn.Linear(6, 3), torch.randn(2, 5)) is None  # not an image batch: the model's own error


def test_the_check_changes_nothing_real():
    model = timm.create_model("test_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = shape_mismatch(model, torch.randn(2, 1, 32, 32))
    assert found is not None and found.expected == (3, 32, 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_default_size_is_checked_too():
    from splitfx.cli import preflight

    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(splitfx.SplitFXError, match=r"--input-size not given \(default 32\): .*first convolution, 0\); "
                                                  r"pass --input-size 1 32 32"):
        preflight.input_size(gray, (3, 32, 32), given=False)
    preflight.input_size(gray, (1, 32, 32))
