"""The accuracy table's seed/validation machinery: rates are chosen on validation curves only, the
test images are read only after the choice, and a killed table resumes to the same numbers."""
import json
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

import splitfx.programs.accuracy as accuracy
import splitfx.programs.data as data
from splitfx.base.jsonl import append_record, read_records
from splitfx.cli import main
from splitfx.programs.accuracy_report import markdown, summarise
from splitfx.programs.config import TrainConfig

BASE = TrainConfig(model="resnet18", batch=128, input_size=16, epochs=2, max_batches=2, validation=0.15)
LRS = [1e-3, 3e-3]


class Tripwire(TensorDataset):
    """A test set that logs every image read into ``events``."""

    def __init__(self, events, *tensors):
        super().__init__(*tensors)
        self.events = events

    def __getitem__(self, i):
        self.events.append(("test read", None))
        return super().__getitem__(i)


@pytest.fixture
def watched(monkeypatch):
    """Events in order: every choice of a rate (with the curves it saw) and every test image read;
    ``labels`` permutes the test labels when set."""
    events, labels = [], {"permute": False}
    real_digits, real_choose = data.digits, accuracy.choose_lr

    def digits(size, channels=3):
        train, test, classes = real_digits(size, channels)
        x, y = test.tensors
        if labels["permute"]:
            y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
        return train, Tripwire(events, x, y), classes

    def choose(curves):
        events.append(("choose", dict(curves)))
        return real_choose(curves)

    monkeypatch.setattr(data, "digits", digits)
    monkeypatch.setattr(accuracy, "choose_lr", choose)
    return events, labels


def _run(path, recipes=("linear",), seeds=2):
    return accuracy.run(["resnet18"], list(recipes), [2], BASE, lrs=LRS, seeds=seeds, results=str(path),
                        log=lambda _: None)


def test_choose_lr_reads_final_validation_then_mean_then_smaller_rate():
    assert accuracy.choose_lr({1e-3: [0.5, 0.9], 2e-3: [0.8, 0.8]}) == 1e-3
    assert accuracy.choose_lr({1e-3: [0.5, 0.9], 2e-3: [0.7, 0.9]}) == 2e-3
    assert accuracy.choose_lr({4e-3: [0.7, 0.9], 2e-3: [0.7, 0.9]}) == 2e-3


def test_test_images_are_read_only_after_the_choice_and_never_steer_it(tmp_path, watched):
    events, labels = watched
    reported = _run(tmp_path / "a.jsonl")
    kinds = [kind for kind, _ in events]
    assert kinds.count("choose") == 1 and "test read" in kinds
    assert kinds.index("test read") > kinds.index("choose"), "a test image was read before the rate was chosen"
    search = [r for r in read_records(tmp_path / "a.jsonl") if r["phase"] == "search"]
    assert {r["lr"] for r in search} == set(LRS) and all(r["test"] is None for r in search)
    assert events[kinds.index("choose")][1] == {r["lr"]: r["val"] for r in search}
    assert [r["seed"] for r in reported] == [0, 1] and len({r["lr"] for r in reported}) == 1

    # Shuffled test labels change the reported accuracy, and nothing that chose it.
    labels["permute"] = True
    events.clear()
    again = _run(tmp_path / "b.jsonl")
    assert [r["lr"] for r in again] == [r["lr"] for r in reported]
    assert [r["val"] for r in again] == [r["val"] for r in reported]
    assert [r["test"] for r in again] != [r["test"] for r in reported]


def test_a_killed_table_resumes_to_the_same_numbers(tmp_path):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    reported = _run(full)
    lines = full.read_text().splitlines()
    searched = [line for line in lines if json.loads(line)["phase"] == "search"]
    cut.write_text("\n".join(searched) + "\n")  # killed after the search, before any test evaluation
    resumed = _run(cut)
    assert [(r["lr"], r["seed"], r["val"], r["test"]) for r in resumed] == \
        [(r["lr"], r["seed"], r["val"], r["test"]) for r in reported]
    before = cut.read_text()
    assert _run(cut) == resumed and cut.read_text() == before, "a finished table trains nothing again"
    cut.write_text(before + before)  # two copies of the file merged
    assert _run(cut) == resumed, "a repeated line is one run, not two"


def test_a_recorded_cell_is_recognised_when_its_options_hold_tuples(tmp_path):
    """InfoPro's lambda1=(5, 0) is a list once written: the cell is still the one recorded."""
    cell = accuracy.with_all_options(TrainConfig(model="resnet18", recipe="infopro", blocks=2))
    assert any(isinstance(v, tuple) for v in cell.recipe_options.values())
    path = tmp_path / "r.jsonl"
    append_record(path, {"model": cell.model, "recipe": cell.recipe, "blocks": cell.blocks,
                         "recipe_options": cell.recipe_options})
    assert accuracy._key(next(read_records(path))) == accuracy._key(cell)
    other = replace(cell, recipe_options={**cell.recipe_options, "lambda1": (1.0, 0.0)})
    assert accuracy._key(cell) != accuracy._key(other)


def test_table_marks_only_differences_beyond_the_spread():
    def line(recipe, k, test, seed):
        return {"model": "m", "recipe": recipe, "trained_blocks": k, "test": test, "lr": 1e-3, "seed": seed,
                "val": [0.5, test], "peak_saved_mib": 1.0, "wall_seconds": 60.0,
                "protocol": accuracy.protocol(BASE, LRS, 2)}
    rows = [line("e2e", 1, 0.90, 0), line("e2e", 1, 0.92, 1), line("a", 2, 0.80, 0), line("a", 2, 0.82, 1),
            line("b", 2, 0.91, 0), line("b", 2, 0.95, 1)]
    stats = summarise(rows)
    assert stats[("m", "a", 2)]["mean"] == pytest.approx(0.81)
    assert stats[("m", "a", 2)]["std"] == pytest.approx(0.01 * 2**0.5)
    table = markdown(rows, [2])
    assert "| a | 81.00 ± 1.41 ▼" in table and "| b | 93.00 ± 2.83 (" in table


def test_cli_refuses_to_mix_tables_and_reports_from_the_file(tmp_path, capsys):
    results = tmp_path / "acc.jsonl"
    args = ["accuracy", "resnet18", "--recipes", "e2e", "--blocks", "2", "--epochs", "1", "--max-batches", "1",
            "--batch", "128", "--input-size", "16", "--seeds", "1", "--lrs", "1e-3", "--results", str(results)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--report", "--figures", str(tmp_path / "fig")]) == 0
    assert "| e2e |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["resnet18-accuracy-memory.png",
                                                                    "resnet18-validation.png"]
    assert main([*args[:7], "2", *args[8:], "--report"]) == 2
    assert '"epochs": 1' in capsys.readouterr().err
