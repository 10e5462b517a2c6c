"""The accuracy table's seed/validation machinery: rates are chosen on validation curves only, the
test images are read only after the choice, and a killed table resumes to the same numbers."""
import json
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

import splitfx.programs.accuracy as accuracy
import splitfx.programs.data as data
import splitfx.programs.epochs as epochs
from splitfx.base.errors import ArgumentError
from splitfx.base.jsonl import append_record, read_records
from splitfx.cli import main
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
                        widen=0, log=lambda _: None)


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
    # A line of the table from other code: resuming is refused before anything trains.
    stale = {**json.loads(searched[0]), "seed": 9, "provenance": {"commit": "old111", "code": "0ld" * 20}}
    append_record(cut, stale)
    with pytest.raises(ArgumentError, match="2 versions of the splitfx sources"):
        accuracy.run(["resnet18"], ["linear"], [2], BASE, lrs=LRS, seeds=2, results=str(cut), widen=0,
                     trainer=lambda config: pytest.fail("trained before refusing"))


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
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["resnet18-accuracy-memory.png"]
    assert main([*args[:7], "2", *args[8:], "--report"]) == 2
    assert '"epochs": 1' in capsys.readouterr().err
    assert main([*args, "--report", "--channels-last"]) == 2  # a key the file's lines lack is named too
    assert '"channels_last": null' in capsys.readouterr().err


def test_the_same_seed_gives_every_cell_the_same_weights_and_data_order():
    """Differences to E2E are paired by seed: same initial backbone, same batches, whatever the recipe."""
    def begin(recipe, k, seed):
        config = replace(BASE, recipe=recipe, blocks=k, seed=seed)
        return epochs.start(config).model.state_dict(), [b.tolist() for b in epochs.epoch_order(config, 1, 300)]

    (w_linear, order_linear), (w_dgl, order_dgl) = begin("linear", 2, 3), begin("dgl", 4, 3)
    assert order_linear == order_dgl
    assert all(torch.equal(w_linear[k], w_dgl[k]) for k in w_linear)
    w_other, order_other = begin("linear", 2, 4)
    assert order_other != order_linear and not torch.equal(w_other["conv1.weight"], w_linear["conv1.weight"])


def test_two_runs_with_the_same_seed_and_commit_write_identical_lines(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _run(first, seeds=1)
    _run(second, seeds=1)
    a, b = list(read_records(first)), list(read_records(second))
    assert len(a) == len(LRS) + 1
    for line in a:
        assert line["provenance"]["code"] and line["provenance"]["commit"] and line["step_peak_mib"] > 0
        assert line["cpu_seconds"] > 0
    timeless = [[{k: v for k, v in r.items() if k not in ("wall_seconds", "cpu_seconds")} for r in lines]
                for lines in (a, b)]
    assert timeless[0] == timeless[1]


def test_widened_steps_beyond_the_edge_the_best_rate_is_at():
    assert accuracy.widened([1e-3, 2e-3, 4e-3], 4e-3, 5) == 8e-3
    assert accuracy.widened([1e-3, 2e-3, 4e-3], 1e-3, 5) == 5e-4
    assert accuracy.widened([1e-3, 2e-3, 4e-3], 2e-3, 5) is None
    assert accuracy.widened([1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2], 1.6e-2, 5) is None  # the limit


class _Stub:
    """A trained run without training: validation accuracy peaks at ``best`` (log-distance)."""

    def __init__(self, best, refuse=()):
        self.best, self.trained, self.refuse = best, [], refuse

    def __call__(self, config):
        import math

        from splitfx.base.errors import PlanError
        from splitfx.programs.train import EpochResult, TrainResult

        if (config.recipe, config.blocks) in self.refuse:
            raise PlanError(f"recipe {config.recipe!r} with {config.blocks} blocks: its loss 0 runs the whole network")
        self.trained.append((config.lr, config.seed, config.detach, config.method))
        val = 0.9 - 0.1 * abs(math.log2(config.lr / self.best)) + 0.001 * config.seed
        epoch = EpochResult(1, 1.0, [1.0], None, 1.0, 2**20, val_accuracy=val, step_peak_bytes=2**21)
        return TrainResult(config, config.blocks, 2**22, [epoch])


def test_the_grid_widens_until_the_best_rate_is_interior_and_controls_are_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "test_accuracy", lambda result: result.history[-1].val_accuracy)
    stub = _Stub(best=8e-3)
    path = tmp_path / "r.jsonl"
    reported = accuracy.run(["resnet18"], ["linear"], [2], BASE, lrs=[1e-3, 2e-3, 4e-3], seeds=2, results=str(path),
                            controls=["linear"], log=lambda _: None, trainer=stub)
    cells = {(r["detach"], r["method"]) for r in reported}
    assert cells == {(True, "memory"), (False, "memory"), (True, "uniform")}
    assert {r["lr"] for r in reported} == {8e-3}
    assert all(r["grid"] == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2] for r in reported)
    # Each cell searched five rates at seed 0, then reported seed 1 anew (seed 0's model was kept).
    assert len(stub.trained) == 3 * (5 + 1)
    assert sorted(r["seed"] for r in reported) == [0, 0, 0, 1, 1, 1]

    # Two shards train disjoint cells whose union is the whole table.
    halves = []
    for i in range(2):
        stub = _Stub(best=2e-3)
        accuracy.run(["resnet18"], ["e2e", "linear"], [2, 4], BASE, lrs=LRS, seeds=1,
                     results=str(tmp_path / f"{i}.jsonl"), shard=(i, 2), log=lambda _: None, trainer=stub)
        halves.append({(r["recipe"], r["blocks"]) for r in read_records(tmp_path / f"{i}.jsonl")})
    assert halves[0] | halves[1] == {("e2e", 1), ("linear", 2), ("linear", 4)} and not halves[0] & halves[1]


def test_lr_at_searches_each_recipe_once_and_trains_the_rest_at_its_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "test_accuracy", lambda result: result.history[-1].val_accuracy)
    stub = _Stub(best=2e-3)
    path = tmp_path / "r.jsonl"
    reported = accuracy.run(["resnet18"], ["e2e", "linear"], [2, 4], BASE, lrs=[1e-3, 2e-3, 4e-3], seeds=2,
                            results=str(path), controls=["linear"], lr_at=4, log=lambda _: None, trainer=stub)
    searches = [r for r in read_records(path) if r["phase"] == "search"]
    assert sorted((r["recipe"], r["blocks"]) for r in searches) == [("e2e", 1)] * 3 + [("linear", 4)] * 3
    assert {r["lr"] for r in reported} == {2e-3} and len(reported) == 2 * (1 + 2 + 2 * 2)
    assert all(r["grid"] == [1e-3, 2e-3, 4e-3] and r["protocol"]["lr_at"] == 4 for r in reported)
    # Resumed, nothing trains again.
    stub.trained.clear()
    again = accuracy.run(["resnet18"], ["e2e", "linear"], [2, 4], BASE, lrs=[1e-3, 2e-3, 4e-3], seeds=2,
                         results=str(path), controls=["linear"], lr_at=4, log=lambda _: None, trainer=stub)
    assert stub.trained == [] and len(again) == len(reported)


def test_a_cell_the_planner_refuses_is_recorded_with_its_reason_and_the_rest_goes_on(tmp_path, monkeypatch):
    from splitfx.programs.accuracy_report import markdown

    monkeypatch.setattr(accuracy, "test_accuracy", lambda result: result.history[-1].val_accuracy)
    stub = _Stub(best=2e-3, refuse={("hpff", 2)})
    path = tmp_path / "r.jsonl"

    def table():
        return accuracy.run(["resnet18"], ["e2e", "hpff"], [2, 4], BASE, lrs=LRS, seeds=2, results=str(path),
                            widen=0, log=lambda _: None, trainer=stub)

    reported = table()
    assert sorted({(r["recipe"], r["blocks"]) for r in reported}) == [("e2e", 1), ("hpff", 4)]
    refused = [r for r in read_records(path) if r["phase"] == "refused"]
    assert [(r["recipe"], r["blocks"]) for r in refused] == [("hpff", 2)] and "whole network" in refused[0]["reason"]
    stub.trained.clear()
    assert json.dumps(table()) == json.dumps(reported) and stub.trained == [], "a refused cell is not tried again"
    text = markdown(reported, [2, 4], list(read_records(path)))
    assert "- hpff K=2 on resnet18: recipe 'hpff' with 2 blocks: its loss 0 runs the whole network" in text


def test_repl_twins_are_cells_of_their_own_and_take_their_recipes_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "test_accuracy", lambda result: result.history[-1].val_accuracy)
    stub = _Stub(best=2e-3)
    path = tmp_path / "r.jsonl"
    reported = accuracy.run(["resnet18"], ["e2e", "linear"], [2, 4], BASE, lrs=LRS, seeds=1, results=str(path),
                            repl=2, repl_recipes=["e2e", "linear"], lr_at=4, widen=0, log=lambda _: None, trainer=stub)
    cells = {(r["recipe"], r["blocks"], r["replace"]) for r in reported}
    assert cells == {("e2e", 1, None), ("e2e", 1, 2), ("linear", 2, None), ("linear", 2, 2), ("linear", 4, None),
                     ("linear", 4, 2)}
    searched = {(r["recipe"], r["blocks"], r["replace"]) for r in read_records(path) if r["phase"] == "search"}
    assert searched == {("e2e", 1, None), ("e2e", 1, 2), ("linear", 4, None)}, "RepL E2E is its own baseline"


def test_cli_refuses_repl_that_would_replace_nothing(tmp_path, capsys):
    args = ["accuracy", "resnet18", "--recipes", "e2e", "--epochs", "1", "--max-batches", "1", "--seeds", "1",
            "--lrs", "1e-3", "--results", str(tmp_path / "r.jsonl")]
    assert main([*args, "--repl", "2"]) == 2
    assert "--repl N and --repl-recipes R" in capsys.readouterr().err
    assert main([*args, "--repl", "2", "--repl-recipes", "e2e"]) == 2
    assert "replace=2 replaces no unit" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
