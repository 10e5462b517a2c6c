"""The main job: ``splitfx train`` with its defaults saves memory (measured, E2E and local alike),
and leaves a run folder whose checkpoint resumes and whose ONNX file runs; resume refuses a run that
differs; a temp file left by a killed write is cleaned up by the next write."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitfx.base.errors import SplitFXError
from splitfx.base.files import write_text
from splitfx.cli import main
from splitfx.programs.config import TrainConfig
from splitfx.programs.data import digits
from splitfx.programs.run_folder import LOCK, default_dir, read_metrics, reserved
from splitfx.programs.train import load_checkpoint_model, train

RUN = os.path.join("runs", "resnet18-linear-k4")


def _mib(text: str, what: str) -> float:
    return float(re.search(rf"{what} ([\d.]+) MiB", text).group(1))


def test_default_train_saves_memory_and_leaves_a_run_folder_that_resumes_and_exports(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--max-batches", "2"]) == 0  # the defaults, one short epoch
    printed = capsys.readouterr().out
    local, e2e = _mib(printed, "local"), _mib(printed, "E2E")
    assert local < e2e, printed
    assert "(less memory)" in printed and "test accuracy" in printed and f"run folder {RUN}" in printed
    assert sorted(os.listdir(RUN)) == ["checkpoint.pt", "metrics.jsonl", "model.onnx", "plan.png", "tensorboard"]
    (line,) = read_metrics(RUN)
    assert line["peak_saved_bytes"] < line["e2e_saved_bytes"] == line["e2e_predicted_bytes"]  # exact on CPU
    assert line["recipe"] == "linear" and line["blocks"] == 4

    # The ONNX file is the trained model: onnxruntime agrees with the checkpoint's weights.
    model, config = load_checkpoint_model(os.path.join(RUN, "checkpoint.pt"))
    x = digits(config.input_size)[1].tensors[0][:5]
    got = ort.InferenceSession(os.path.join(RUN, "model.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    with open(os.path.join(RUN, "plan.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # The checkpoint resumes into the same folder; the options not given come from it.
    assert main(["train", "--resume", os.path.join(RUN, "checkpoint.pt"), "--epochs", "2"]) == 0
    assert [h["epoch"] for h in read_metrics(RUN)] == [1, 2]
    assert sorted(os.listdir("runs")) == ["resnet18-linear-k4"]

    # A run that differs from the checkpoint is refused, naming what differs.
    with pytest.raises(SplitFXError, match=r"--blocks 2 \(checkpoint: 4\)"):
        train(TrainConfig(blocks=2, epochs=3, max_batches=2), resume=os.path.join(RUN, "checkpoint.pt"))


def test_default_run_folders_never_overwrite_an_earlier_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(model="torchvision:resnet18")
    first, second = default_dir(config), default_dir(config)  # each created as it is chosen
    assert (first, second) == (os.path.join("runs", "torchvision_resnet18-linear-k4"),
                               os.path.join("runs", "torchvision_resnet18-linear-k4-2"))
    assert os.path.isdir(first) and os.path.isdir(second)


def test_a_run_folder_is_held_by_one_run_and_another_runs_checkpoint_is_kept(tmp_path):
    config, out = TrainConfig(), str(tmp_path / "run")
    with reserved(out, config) as held:
        assert held == out and os.path.exists(os.path.join(out, LOCK))
        with pytest.raises(SplitFXError, match=f"process {os.getpid()}"), reserved(out, config):
            pass
    assert not os.path.exists(out), "a folder made for a run that wrote nothing is removed"
    os.makedirs(out)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"another run")
    with pytest.raises(SplitFXError, match=r"--resume .*--overwrite"), reserved(out, config):
        pass
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes(b"a third run")
    resuming_another = reserved(out, config, resume=str(elsewhere))
    with pytest.raises(SplitFXError, match="holds another run's checkpoint"), resuming_another:
        pass
    for flags in (dict(resume=os.path.join(out, "checkpoint.pt")), dict(overwrite=True)):
        with reserved(out, config, **flags):
            pass
    assert sorted(os.listdir(out)) == ["checkpoint.pt"], "the lock is gone, the checkpoint kept"


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(f"{int(dead.stdout)}\n")
    with reserved(str(out), TrainConfig()):
        assert (out / LOCK).read_text() == f"{os.getpid()}\n"


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".splitfx-{dead_pid}-abc123.pt"
    live = tmp_path / f".splitfx-{os.getppid()}-def456.pt"  # our parent is running: maybe mid-write
    mine = tmp_path / "checkpoint.pt"
    for path in (stale, live, mine):
        path.write_bytes(b"partial")
    write_text(tmp_path / "metrics.jsonl", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, mine.name, "metrics.jsonl"])
    assert mine.read_bytes() == b"partial"


def test_resuming_through_a_symlink_continues_in_the_folder_it_points_into(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run, link = tmp_path / "run", tmp_path / "latest.pt"
    quick = ["--max-batches", "1", "--input-size", "8", "--blocks", "2"]
    assert main(["train", "tests.tinynets:small_cnn", "--epochs", "1", *quick, "--out", str(run)]) == 0
    os.symlink(run / "checkpoint.pt", link)
    assert main(["train", "--resume", str(link), "--epochs", "2"]) == 0
    assert [line["epoch"] for line in read_metrics(str(run))] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["latest.pt", "run"]  # nothing written beside the link
