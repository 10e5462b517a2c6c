"""Checkpoints and data that are not what they should be (#37, items 7 and 8): a file that is no
checkpoint, a damaged one, one that no longer fits the model or the data, an imagefolder file that is
no image, a full disk under --out. Each is one line ``splitfx: error: ...`` and exit 2 on the command
line, a ``SplitFXError`` in the API, raised before any work where it can be."""
from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

from splitfx.base.errors import CheckpointError, SplitFXError
from splitfx.base.files import PREFIX, atomic_path
from splitfx.cli import main
from splitfx.programs import checkpoint as checkpoints
from splitfx.programs import data as datasets
from splitfx.programs.checkpoint import Checkpoint
from splitfx.programs.train import TrainConfig, load_checkpoint_model, train

TINY = '''from torch import nn
WIDTH = 8
def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                         nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, num_classes))
'''
FAST = dict(model="tinymodel:net", blocks=2, epochs=1, batch=8, input_size=8, max_batches=2)
CLI_FAST = ["tinymodel:net", "--blocks", "2", "--batch", "8", "--input-size", "8", "--max-batches", "1"]


def cli(cwd, *argv: str) -> subprocess.CompletedProcess:
    """``python -m splitfx ARGV`` in ``cwd`` (where ``tinymodel.py`` is importable)."""
    return subprocess.run([sys.executable, "-m", "splitfx", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def refused(run: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a run that exited 2 with no traceback, checked to hold ``words``."""
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("splitfx: error: "), run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A folder with ``tinymodel.py`` (importable) and a one-epoch run of it on digits in ``run/``."""
    root = tmp_path_factory.mktemp("home")
    (root / "tinymodel.py").write_text(TINY)
    sys.path.insert(0, str(root))
    try:
        train(TrainConfig(**FAST), out=str(root / "run"), progress=False, log=lambda _: None)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("tinymodel", None)
    return root


@pytest.fixture
def tiny(home, monkeypatch):
    """``home`` with ``tinymodel`` importable in this process (and forgotten afterwards)."""
    monkeypatch.syspath_prepend(str(home))
    monkeypatch.delitem(sys.modules, "tinymodel", raising=False)
    yield home
    sys.modules.pop("tinymodel", None)


def no_data_loaded(monkeypatch) -> None:
    """Make loading data a test failure: a refusal must come before any work."""
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the refusal")

    monkeypatch.setattr(datasets, "load", load)


# --- item 7: files that are no checkpoint ------------------------------------------------------------

def test_a_text_file_given_to_resume_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("epoch 1: loss 0.3\n{'a': 1}\n")
    refused(cli(tmp_path, "train", "--resume", "notes.txt"), "notes.txt", "checkpoint.pt written by splitfx train")
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_random_file_given_to_export_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "noise.pt").write_bytes(bytes(random.Random(8).randrange(256) for _ in range(37)))
    refused(cli(tmp_path, "export", "noise.pt", "--out", "m.onnx"), "noise.pt", "not a torch file")
    assert os.listdir(tmp_path) == ["noise.pt"]


def fuzzed(real: bytes, rng: random.Random) -> list[bytes]:
    """Files a checkpoint loader meets: random bytes, text, pickle-looking noise, the real checkpoint
    cut short anywhere, and the real checkpoint with a few bytes changed."""
    files = []
    for _ in range(12):
        files.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
        files.append("".join(rng.choice("abc {}[]:'0129\n") for _ in range(rng.randrange(1, 300))).encode())
        files.append(b"\x80\x02" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 100))))
        files.append(real[:rng.randrange(len(real))])
        changed = bytearray(real)
        for _ in range(rng.randrange(1, 6)):
            changed[rng.randrange(len(changed))] = rng.randrange(256)
        files.append(bytes(changed))
    return files


def test_random_and_truncated_files_are_checkpoint_errors(tiny, tmp_path):
    real = (tiny / "run" / "checkpoint.pt").read_bytes()
    refusals = 0
    for i, content in enumerate(fuzzed(real, random.Random(0))):
        path = tmp_path / f"{i}.pt"
        path.write_bytes(content)
        try:
            state = Checkpoint.load(str(path))
        except CheckpointError as err:
            assert str(path) in str(err)
            refusals += 1
            continue
        # Changed bytes inside a tensor's data: a checkpoint still, its fields of their types, and
        # export's loader either builds the model or refuses it as a SplitFXError.
        assert checkpoints.malformed({k: getattr(state, k) for k in Checkpoint.__dataclass_fields__},
                                     Checkpoint) == []
        with contextlib.suppress(SplitFXError):
            load_checkpoint_model(str(path))
    assert refusals >= 48


# --- item 7: splitfx checkpoints with a malformed field -----------------------------------------------

def damaged(state: dict) -> dict[str, dict]:
    """The one-epoch checkpoint with one field changed into what no run writes, by name."""
    first = state["history"][0]
    return {
        "config": {**state, "config": ["resnet18"]},
        "epoch": {**state, "epoch": "1"},
        "num_classes": {**state, "num_classes": 0},
        "model": {**state, "model": {"model.0.weight": [1.0, 2.0]}},
        "rng": {**state, "rng": torch.zeros(3)},
        "cuda_rng": {**state, "cuda_rng": [7]},
        "config.blocks": {**state, "config": {**state["config"], "blocks": "two"}},
        "config.cuts": {**state, "config": {**state["config"], "cuts": "1 2"}},
        "history[0].train_loss": {**state, "history": [{**first, "train_loss": "low"}]},
        "history[0].seconds": {**state, "history": [{k: v for k, v in first.items() if k != "seconds"}]},
        "history[0].colour": {**state, "history": [{**first, "colour": "red"}]},
        "optimizer": {**state, "optimizer": {"lr": 0.1}},
    }


@pytest.mark.parametrize("field", list(damaged({"history": [{}], "config": {}})))
def test_a_malformed_field_is_refused_by_name_before_any_work(field, tiny, tmp_path, monkeypatch, capsys):
    state = torch.load(tiny / "run" / "checkpoint.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    torch.save(damaged(state)[field], path)
    no_data_loaded(monkeypatch)
    with pytest.raises(CheckpointError, match="malformed") as caught:
        train(TrainConfig(**{**FAST, "epochs": 2}), resume=str(path), progress=False, log=lambda _: None)
    assert f"{field}: " in str(caught.value)
    assert main(["train", "--resume", str(path), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("splitfx: error: ") and field in err and str(path) in err


def test_a_malformed_checkpoint_given_to_export_is_one_line_and_exit_2(home, tmp_path):
    state = torch.load(home / "run" / "checkpoint.pt", weights_only=True)
    torch.save(damaged(state)["config"], tmp_path / "checkpoint.pt")
    refused(cli(tmp_path, "export", "checkpoint.pt", "--out", "m.onnx"), "checkpoint.pt", "config: not dict")
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_state_that_does_not_fit_the_converted_model_is_a_checkpoint_error(tiny, tmp_path):
    state = torch.load(tiny / "run" / "checkpoint.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("heads.")}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"does not fit the converted model.*heads"):
        train(TrainConfig(**{**FAST, "epochs": 2}), resume=str(tmp_path / "checkpoint.pt"), progress=False,
              log=lambda _: None)


# --- item 7: a checkpoint that no longer fits the model or the data -----------------------------------

def test_resuming_after_the_model_definition_changed_is_refused_before_any_work(home, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes((home / "run" / "checkpoint.pt").read_bytes())
    (tmp_path / "tinymodel.py").write_text(TINY.replace("WIDTH = 8", "WIDTH = 12"))
    run = cli(tmp_path, "train", "--resume", "run/checkpoint.pt", "--epochs", "2")
    refused(run, "--resume run/checkpoint.pt", "definition changed", "checkpoint [8], model [12]")
    assert run.stdout == "" and sorted(os.listdir(tmp_path / "run")) == ["checkpoint.pt"]


def image_folder(root, classes: dict[str, int], val: int = 2) -> str:
    """``root/train/CLASS/`` with ``classes[CLASS]`` 8×8 PNGs each, ``root/val/CLASS/`` with ``val``;
    returns the ``--data`` spec."""
    rng = random.Random(1)
    for name, count in classes.items():
        for split, n in (("train", count), ("val", val)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = bytes(rng.randrange(256) for _ in range(8 * 8 * 3))
                Image.frombytes("RGB", (8, 8), pixels).save(root / split / name / f"{i}.png")
    return f"imagefolder:{root}"


def test_resuming_after_the_dataset_classes_changed_is_refused_before_any_work(tiny, tmp_path):
    spec = image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    train(TrainConfig(**{**FAST, "data": spec}), out=str(tiny / "images-run"), progress=False, log=lambda _: None)
    image_folder(tmp_path / "images", {"eel": 6})
    run = cli(tiny, "train", "--resume", "images-run/checkpoint.pt", "--epochs", "2")
    refused(run, "--resume images-run/checkpoint.pt", "trained on 2 classes", "has 3 now")
    assert run.stdout == ""


# --- item 8: imagefolder files that are no image; a full disk under --out ----------------------------

def test_a_file_that_is_no_image_is_refused_by_name_before_training(home, tmp_path):
    spec = image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    (tmp_path / "images" / "train" / "dog" / "notes.jpg").write_text("not a picture\n")
    (tmp_path / "images" / "train" / "dog" / "README.txt").write_text("skipped: no image extension\n")
    run = cli(home, "train", *CLI_FAST, "--data", spec, "--epochs", "1", "--out", str(tmp_path / "out"))
    line = refused(run, "notes.jpg", "not images PIL can read", "remove or replace")
    assert "README.txt" not in line and "epoch 1" not in run.stdout
    assert not (tmp_path / "out").exists(), "the run folder made for the run is removed again"


def test_an_image_that_fails_to_decode_later_names_its_file(tmp_path):
    spec = image_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    whole = (tmp_path / "images" / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "images" / "train" / "cat" / "0.png").write_bytes(whole[:60])  # the header passes
    splits = datasets.load(spec, 8)
    with pytest.raises(SplitFXError, match=r"cat/0\.png: the image cannot be decoded.*remove or replace it"):
        splits.train[0]


def full_disk_on(second_save: bool):
    """A ``torch.save`` that writes part of the file, then fails as a full disk does (on every save,
    or from the second on)."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1 and second_save:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def test_a_full_disk_under_out_names_out_and_the_reason_and_leaves_no_half_file(tiny, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(checkpoints.torch, "save", full_disk_on(second_save=True))
    assert main(["train", *CLI_FAST, "--epochs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {out}" in err and "No space left on device (ENOSPC)" in err and "another --out" in err
    assert not [n for n in os.listdir(out) if n.startswith(PREFIX)], "no temp file is left"
    assert Checkpoint.load(str(out / "checkpoint.pt")).epoch == 0, "epoch 1's checkpoint is whole"


def test_a_full_disk_on_the_first_checkpoint_leaves_no_checkpoint(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.torch, "save", full_disk_on(second_save=False))
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint\.pt: No space left on device"):
        train(TrainConfig(**FAST), out=str(tmp_path), progress=False, log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_a_failed_atomic_write_names_its_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "metrics.jsonl"
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
