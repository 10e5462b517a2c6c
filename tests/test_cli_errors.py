"""The command line's error boundary: every bad invocation is one line on stderr and exit status 2,
with no traceback, and no file the user had is changed, removed or left half-written."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from splitfx.cli import commands, main
from splitfx.programs.checkpoint import Checkpoint
from splitfx.programs.config import TrainConfig

CUDA_MISSING = "cuda:99"  # no machine has 100 GPUs: refused with or without CUDA
SMALL = ["--input-size", "32", "--batch", "2"]

BAD = [
    # (argv, a few words the message must contain)
    (["plan", "resnet18", "--recipe", "nope"], "invalid choice: 'nope'"),
    (["plan", "resnet18", "--replace", "1"], "at least 2"),
    (["plan", "resnet18", "--replace", "0"], "at least 2"),
    (["plan", "torchvision:nope"], "torchvision has no model 'nope'"),
    (["plan", "resnet5"], "not a timm model name"),
    (["plan", "no_such_package_xyz:factory"], "cannot build"),
    (["plan", "resnet18", "--batch", "0"], "positive integer"),
    (["plan", "resnet18", "--batch", "-3"], "positive integer"),
    (["plan", "resnet18", "--blocks", "0"], "positive integer"),
    (["plan", "resnet18", "--blocks", "two"], "not a positive integer"),
    (["plan", "resnet18", "--input-size", "3", "0", "32"], "positive integer"),
    (["plan", "resnet18", "--input-size", "3", "32"], "S (square, 3 channels) or C H W"),
    (["plan", "resnet18", "--plot", "folder"], "is a folder"),
    (["plan", "resnet18", "--plot", "plan.xyz"], "cannot write .xyz"),
    (["plan", "resnet18", "--plot", "notes.txt/plan.png"], "is a file, not a folder"),
    (["plan", "resnet18", "--method", "nope"], "invalid choice"),
    (["plan", "resnet18", "--blocks", "99", *SMALL], "at most"),
    (["plan", "resnet18", "--split-points", "nothing", *SMALL], "no module of that name"),
    (["plan", "resnet18", "--no-such-option"], "unrecognized arguments"),
    (["plan"], "required: MODEL"),
    ([], "required: COMMAND"),
    (["nocommand"], "invalid choice: 'nocommand'"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--batch", "0"], "positive integer"),
    (["train", "--lr", "0"], "positive number"),
    (["train", "--lr", "nan"], "positive number"),
    (["train", "--seed", "-1"], "integer ≥ 0"),
    (["train", "--out", "notes.txt"], "is a file"),
    (["train", "--resume", "missing.pt"], "no such file"),
    (["train", "--resume", "folder"], "a folder"),
    (["train", "--resume", "empty.pt"], "truncated"),
    (["train", "--resume", "truncated.pt"], "truncated"),
    (["train", "--resume", "foreign.pt"], "not a splitfx train checkpoint"),
    (["train", "--resume", "run/checkpoint.pt", "--recipe", "dgl"], "--recipe 'dgl' (checkpoint: 'linear')"),
    (["train", "--resume", "run/checkpoint.pt", "resnet34", "--blocks", "3"], "MODEL 'resnet34'"),
    (["train", "--resume", "run/checkpoint.pt", "--input-size", "16"], "--input-size 16 (checkpoint: 32)"),
    (["train", "--resume", "run/checkpoint.pt", "--max-cut-tensors", "1"], "--max-cut-tensors 1 (checkpoint: 16)"),
    (["train", "--resume", "run/checkpoint.pt"], "already trained"),
    (["train", "--resume", "run/checkpoint.pt", "--epochs", "1"], "give --epochs 2 or more"),
    (["train", "--device", CUDA_MISSING], "cuda"),
    (["train", "--device", "foo"], "not a torch device"),
    (["train", "--device", "meta"], "real device"),
    (["train", "--data", "imagefolder:empty_images"], "no class folders"),
    (["train", "--data", "imagefolder:missing_folder"], "is not a folder"),
    (["train", "--data", "nope"], "use digits, cluttered, cifar10:DIR or imagefolder:DIR"),
    (["train", "--input-size", "3", "32", "16"], "square with 3 channels"),
    (["train", "--blocks", "99", "--max-batches", "1"], "at most"),
    (["export", "resnet18", "--out", "folder"], "is a folder"),
    (["export", "resnet18"], "required: --out"),
    (["export", "resnet18", "--out", "m" * 300 + ".onnx"], "is 305 bytes long, and this file system takes at most"),
    (["train", "--teacher", "missing.pt"], "no such file"),
    (["train", "--recipe", "tandem"], "--recipe tandem learns from a trained teacher: give --teacher CKPT"),
    (["export", "missing.pt", "--out", "m.onnx"], "no such file"),
    (["export", "truncated.pt", "--out", "m.onnx"], "truncated"),
    (["export", "foreign.pt", "--out", "m.onnx"], "not a splitfx train checkpoint"),
    (["train", "--out", "run", *SMALL], "holds another run's checkpoint; continue it with --resume"),
    (["export", "run/checkpoint.pt", "--out", "run/checkpoint.pt"], "would write over the checkpoint being exported"),
    (["export", "run/checkpoint.pt", "--out", "./run/../run/checkpoint.pt"], "would write over the checkpoint"),
    (["export", "nosuchmodel_xyz", "--out", "m.onnx"], "not a timm model name"),
    (["accuracy", "resnet18", "--recipes", "linear", "nope"], "invalid choice: 'nope'"),
    (["accuracy", "resnet18", "nosuchmodel_xyz", "--recipes", "linear"], "not a timm model name"),
    (["accuracy", "resnet18", "--blocks", "0"], "positive integer"),
    (["accuracy", "--recipes", "e2e", "linear", "--blocks", "2", "99", "--epochs", "1"], "K=99"),
    (["accuracy", "--out", "folder"], "is a folder"),
    (["coverage", "--report", "noise.bin"], "noise.bin is not a results file"),
    (["accuracy", "--report", "--results", "noise.bin"], "noise.bin is not a results file"),
    (["tasks", "--results", "noise.bin"], "noise.bin is not a results file"),
    (["tasks", "friedman", "--blocks", "1"], "give K of 2 or more"),
    (["tasks", "chars", "--report", "--results", "none.jsonl"], "holds no run of chars"),
    (["coverage", "--report", "half.bin"], "half.bin is not a results file"),
    (["bench", "resnet18", "--steps", "0"], "positive integer"),
    (["bench", "resnet18", "--warmup", "-1"], "integer ≥ 0"),
    (["bench", "resnet18", "--json", "folder"], "is a folder"),
    (["bench-convert", "--models", "nosuchmodel_xyz"], "not a timm model name"),
]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A folder as a user might have it: files, a folder, broken and foreign checkpoints, and the
    checkpoint of a finished one-epoch run (its config is all the refusals read)."""
    root = tmp_path_factory.mktemp("user")
    (root / "notes.txt").write_text("mine\n")
    (root / "folder").mkdir()
    (root / "folder" / "kept.txt").write_text("also mine\n")
    (root / "empty.pt").write_bytes(b"")
    (root / "noise.bin").write_bytes(bytes(range(256)) * 4)
    (root / "half.bin").write_bytes(b'\xff\xfe{"model": "resnet18"}\n')  # JSON behind bytes that are no UTF-8
    (root / "empty_images" / "train").mkdir(parents=True)
    (root / "empty_images" / "val").mkdir()
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    (root / "run").mkdir()
    Checkpoint(config=asdict(TrainConfig(epochs=1)), epoch=0, model={}, optimizer={}, scheduler={}, scaler=None,
               rng=torch.get_rng_state(), cuda_rng=None, history=[], e2e_saved_bytes=1,
               num_classes=10).save(str(root / "run" / "checkpoint.pt"))
    (root / "truncated.pt").write_bytes((root / "run" / "checkpoint.pt").read_bytes()[:200])
    return root


def snapshot(root) -> dict[str, str]:
    """Every file and folder below ``root`` with a hash of its bytes."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) or "(nothing)" for a, _ in BAD])
def test_bad_invocation_is_one_line_and_exit_2_and_touches_nothing(argv, words, user_files, monkeypatch, capsys):
    monkeypatch.chdir(user_files)
    before = snapshot(user_files)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("splitfx: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert snapshot(user_files) == before



def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        """Plan, but with a bug."""
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "plan", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["plan", "resnet18"])


def test_installed_command_prints_one_line_and_exits_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "splitfx", "plan", "resnet18", "--recipe", "nope"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("splitfx: error: argument --recipe")
    assert run.stdout == "" and os.listdir(tmp_path) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("splitfx ")


def test_a_factory_beside_you_is_found_and_a_lazy_one_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "beside.py").write_text(
        "from torch import nn\n\n"
        "def lazy():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))\n\n"
        "def ready():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    monkeypatch.chdir(tmp_path)
    # the console script's sys.path: no current folder (python -m would add it)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())])
    assert main(["plan", "beside:lazy", "--blocks", "2", "--input-size", "3", "16", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lazy parameters not initialised yet (2.weight, 2.bias)" in err
    assert main(["plan", "beside:ready", "--blocks", "2", "--input-size", "3", "16", "16"]) == 0
    assert str(tmp_path) not in sys.path


MINE = '''from torch import nn


def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def fixed():
    return net()
'''


def test_the_console_script_finds_a_module_beside_you_as_python_m_does(tmp_path):
    script = Path(sysconfig.get_path("scripts")) / "splitfx"
    if not script.exists():
        pytest.skip("splitfx is not installed with its console script")
    (tmp_path / "mymodule.py").write_text(MINE)
    run = subprocess.run([str(script), "plan", "mymodule:net", "--blocks", "2", "--input-size", "3", "16", "16"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Sequential: 2 blocks")


def test_a_factory_without_num_classes_is_refused_in_one_line_that_says_what_to_add(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodule_fixed.py").write_text(MINE)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "mymodule_fixed:fixed", "--blocks", "2", "--input-size", "8", "--max-batches", "1"]
    assert main([*argv, "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected keyword argument 'num_classes'" in err
    assert "its factory must take num_classes" in err and not (tmp_path / "run").exists()


def test_the_reliability_sweep_ends_every_case_in_one_line_and_touches_nothing(user_files, tmp_path, monkeypatch,
                                                                              capsys):
    """#37's sweep, run in one go: every bad invocation above, and every random, text or truncated
    file the checkpoint loader refuses given to ``export`` and to ``train --resume``. Each ends in
    exit 2 with one line and no traceback, and no file or run folder the user had changes."""
    import random

    from test_checkpoint_errors import fuzzed

    from splitfx.base.errors import CheckpointError

    folder = tmp_path / "fuzz"
    folder.mkdir()
    argvs = [argv for argv, _ in BAD]
    for i, content in enumerate(fuzzed((user_files / "run" / "checkpoint.pt").read_bytes(), random.Random(1))):
        path = folder / f"{i}.pt"
        path.write_bytes(content)
        try:
            Checkpoint.load(str(path))
        except CheckpointError:
            argvs += [["export", str(path), "--out", str(tmp_path / "m.onnx")], ["train", "--resume", str(path)]]
        else:
            path.unlink()  # bytes changed inside a tensor: still a checkpoint, which a run would use
    assert len(argvs) >= 160
    monkeypatch.chdir(user_files)
    before, fuzz = snapshot(user_files), snapshot(folder)
    for argv in argvs:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, (argv, err)
    assert snapshot(user_files) == before and snapshot(folder) == fuzz
    assert not (tmp_path / "m.onnx").exists()
