"""The accuracy table and pictures from synthetic results lines (no training): t-intervals over seeds,
differences to E2E paired by seed, the marks, the provenance rule and the file names."""
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from splitfx.programs.accuracy_report import _difference, figures, markdown
from splitfx.programs.accuracy_stats import Interval, summarise, t_interval

PROTOCOL = {"epochs": 12, "batch": 64, "data": "cluttered", "input_size": 32, "validation": 0.1, "lr_decay": 0.8,
            "weight_decay": 0.05, "lrs": [0.001, 0.002, 0.004], "seeds": 5,
            "widen": 2, "lr_at": 4}
CODE = "c0de" * 16
E2E_TESTS = [0.90, 0.92, 0.88, 0.91, 0.89]


def line(recipe="dgl", k=2, seed=0, test=0.9, *, model="m", lr=0.002, provenance=None, **extra):
    """One reported line; ``provenance`` replaces the default one (``False``: an old line without it)."""
    record = {"model": model, "recipe": recipe, "blocks": k, "recipe_options": {}, "lr": lr, "seed": seed,
              "phase": "test", "trained_blocks": k, "val": [0.5, test], "test": test, "peak_saved_mib": 10.0 / k,
              "e2e_saved_mib": 10.0, "step_peak_mib": 20.0 / k, "wall_seconds": 900.0, "protocol": PROTOCOL,
              "provenance": {"commit": "abc123def456", "command": "splitfx accuracy m", "machine": "Xeon, 2 cores",
                             "code": CODE} if provenance is None else provenance, **extra}
    if provenance is False:
        del record["provenance"]
    return record


def e2e(**extra):
    return [line("e2e", 1, seed, test, **extra) for seed, test in enumerate(E2E_TESTS)]


def recipe(differences, name="dgl", k=2, **extra):
    """Lines whose test accuracy is E2E's of the same seed plus ``differences`` (fractions)."""
    return [line(name, k, seed, E2E_TESTS[seed] + d, **extra) for seed, d in enumerate(differences)]


def row(table, label, section=1):
    """The cells of the row ``label`` in the model's ``section``-th table (0 accuracy, 1 difference, 2 memory)."""
    tables = table.split("| variant |")[1:]
    found = [r for r in tables[section].splitlines() if r.startswith(f"| {label} |")]
    assert len(found) == 1, found
    return [c.strip() for c in found[0].strip("|").split("|")][1:]


def test_the_interval_is_students_t_over_the_seeds():
    values = [0.81, 0.83, 0.80, 0.84, 0.82]
    low, high = stats.t.interval(0.95, 4, loc=statistics.fmean(values), scale=statistics.stdev(values) / math.sqrt(5))
    got = t_interval(values)
    assert got.n == 5 and got.mean == pytest.approx(0.82)
    assert got.mean - got.half == pytest.approx(low) and got.mean + got.half == pytest.approx(high)
    assert got.half == pytest.approx(2.7764451 * math.sqrt(0.00025 / 5))  # t(0.975, 4) · s / √n by hand
    table = markdown([line(seed=s, test=v) for s, v in enumerate(values)], [2])
    assert row(table, "dgl", 0) == ["82.00 ± 1.96"]


def test_one_seed_gives_no_interval_and_says_so():
    assert t_interval([0.7]) == Interval(0.7, None, 1)
    table = markdown([*e2e(), line(seed=0, test=0.87)], [2])
    assert row(table, "dgl", 0) == ["87.00 (1 seed)"]
    assert row(table, "dgl", 1) == ["−3.00 (1 seed), lr 0.002"]


def test_the_difference_is_paired_by_seed_and_an_unpaired_seed_is_left_out():
    lines = [*e2e(), *recipe([-0.01, -0.02, -0.015, -0.012, -0.018]), line(seed=7, test=0.10)]
    table = markdown(lines, [2])
    diffs = [-1.0, -2.0, -1.5, -1.2, -1.8]  # points; seed 7 ran without E2E
    half = stats.t.ppf(0.975, 4) * statistics.stdev(diffs) / math.sqrt(5)
    mean = statistics.fmean(diffs)
    assert t_interval([d / 100 for d in diffs]).half == pytest.approx(half / 100)
    assert row(table, "dgl", 1) == [f"−{-mean:.2f} [−{half - mean:.2f}, −{-mean - half:.2f}] ▼, lr 0.002"]
    assert row(table, "dgl", 0)[0].endswith("(6 seeds)")  # the accuracy itself counts every seed


def test_marks_only_an_interval_that_excludes_zero():
    lines = [*e2e(), *recipe([0.01, 0.02, 0.015, 0.012, 0.018], "up"),
             *recipe([0.01, -0.01, 0.005, -0.005, 0.002], "level"), *recipe([0.01, 0.01, 0.01, 0.01, 0.01], "exact")]
    table = markdown(lines, [2])
    assert row(table, "up", 1) == ["+1.50 [+0.99, +2.01] ▲, lr 0.002"]
    assert row(table, "level", 1) == ["+0.04 [−0.95, +1.03], lr 0.002"]
    assert row(table, "exact", 1) == ["+1.00 [+1.00, +1.00] ▲, lr 0.002"]  # no spread: any difference shows
    assert row(table, "e2e", 1) == ["reference, lr 0.002"]
    assert Interval(0.5, 0.5, 3).excludes(0.0) is False  # an interval touching zero does not exclude it
    assert Interval(-0.5, 0.49, 3).excludes(0.0) is True


def test_a_mark_follows_the_bounds_as_printed():
    """An interval whose lower bound rounds to 0.00 is not marked, though it excludes 0 unrounded."""
    assert _difference(Interval(0.01, 0.009999, 5), 5) == "+1.00 [0.00, +2.00]"
    assert _difference(Interval(0.01, 0.00994, 5), 5) == "+1.00 [+0.01, +1.99] ▲"
    assert _difference(Interval(-0.01, 0.009999, 5), 5) == "−1.00 [−2.00, 0.00]"
    assert _difference(Interval(-0.01, 0.00994, 5), 5) == "−1.00 [−1.99, −0.01] ▼"


def test_a_rate_at_the_edge_of_the_cells_grid_is_marked():
    lines = [*e2e(lr=0.001), *recipe([0] * 5, "top", lr=0.004), *recipe([0] * 5, "middle"),
             *recipe([0] * 5, "extended", lr=0.004, grid=[0.001, 0.002, 0.004, 0.008])]
    table = markdown(lines, [2])
    assert row(table, "e2e", 1) == ["reference, lr 0.001†"]
    assert row(table, "top", 1) == ["0.00 [0.00, 0.00], lr 0.004†"]  # no grid in the line: the protocol's
    assert row(table, "middle", 1) == ["0.00 [0.00, 0.00], lr 0.002"]
    assert row(table, "extended", 1) == ["0.00 [0.00, 0.00], lr 0.004"]


def test_controls_are_labelled_and_follow_their_recipe():
    lines = [*recipe([0] * 5, "dgl", detach=False), *recipe([0] * 5, "infopro"), *e2e(),
             *recipe([0] * 5, "dgl", method="uniform"), *recipe([0] * 5, "dgl")]
    table = markdown(lines, [2, 4])
    rows = [r.split("|")[1].strip() for r in table.split("| variant |")[1].splitlines()[2:] if r.startswith("|")]
    assert rows == ["e2e", "dgl", "dgl (no detach)", "dgl (uniform cuts)", "infopro"]
    assert row(table, "dgl (uniform cuts)", 0) == ["90.00 ± 1.96", "–"]  # K=4 not run


def test_memory_is_measured_against_e2e_and_a_missing_total_is_a_dash():
    lines = [*e2e(), *recipe([0] * 5, "dgl", k=4), *recipe([0] * 5, "old", k=4, step_peak_mib=None)]
    table = markdown(lines, [4])
    assert row(table, "e2e", 2) == ["1.00× / 1.00×"]
    assert row(table, "dgl", 2) == ["0.25× / 0.25×"]
    assert row(table, "old", 2) == ["0.25× / –"]
    alone = markdown(recipe([0] * 5, "dgl", k=4, e2e_saved_mib=5.0), [4])  # no E2E cell: its measured step
    assert row(alone, "dgl", 2) == ["0.50× / –"]


def test_mixed_code_digests_are_refused_naming_each():
    lines = [*e2e(), *recipe([0] * 3, provenance={"commit": "old111", "code": "0ld" * 20}), line(provenance=False)]
    with pytest.raises(ValueError, match="stale cells") as err:
        markdown(lines, [2])
    assert f"code {CODE}: 5 line(s), commit(s) abc123def456 (5)" in str(err.value)
    assert f"code {'0ld' * 20}: 3 line(s), commit(s) old111 (3)" in str(err.value)
    assert "code unrecorded: 1 line(s), commit(s) unrecorded (1)" in str(err.value)
    with pytest.raises(ValueError, match="3 versions"):
        figures(lines, "unused")


def test_a_search_made_by_other_code_is_refused_though_every_test_line_agrees():
    """The search chose the rate the test lines ran at: its code must be theirs too."""
    reported = [*e2e(), *recipe([0.01] * 5)]
    search = {**line("dgl", 4, 0, 0.9), "phase": "search", "provenance": {"commit": "old111", "code": "0ld" * 20}}
    assert markdown(reported, [2], reported).startswith("Test accuracy")
    with pytest.raises(ValueError, match="2 versions"):
        markdown(reported, [2], [*reported, search])
    with pytest.raises(ValueError, match="2 versions"):
        figures(reported, "unused", [*reported, search])


def test_lines_of_other_recipe_options_in_one_cell_are_refused():
    lines = [*e2e(), *recipe([0.01] * 3), *(line("dgl", 2, s, 0.9, recipe_options={"w": 1}) for s in (3, 4))]
    with pytest.raises(ValueError, match="several recipe options"):
        summarise(lines)


def test_training_time_is_cpu_hours_where_every_run_recorded_them_else_wall_clock_hours():
    timed = [*e2e(cpu_seconds=360.0), *recipe([0.01] * 5, cpu_seconds=360.0)]
    assert "Training time of the runs in this file: 1.00 CPU-hours." in markdown(timed, [2])
    older = [*timed[:-1], line("dgl", 2, 4, 0.9)]  # one run from before CPU seconds were recorded
    assert "2.50 hours of wall-clock time summed over runs" in markdown(older, [2])


def test_mixed_commits_of_one_code_are_one_table_and_the_caption_says_where_they_came_from():
    later = {"commit": "fed987", "command": "splitfx accuracy m --resume", "machine": "Xeon, 2 cores", "code": CODE}
    lines = [*e2e(), *recipe([0.01] * 5, provenance=later)]
    searches = [{**r, "phase": "search"} for r in lines]  # the same runs, searched then reported: counted once
    table = markdown(lines, [2], [*lines, *searches, lines[0]])  # a line written twice counts once
    assert ("commit(s) abc123def456, fed987; machine(s): Xeon, 2 cores; command(s): `splitfx accuracy m`; "
            "`splitfx accuracy m --resume`. Training time of the runs in this file: 2.50 hours of wall-clock time "
            "summed over runs (one thread each; more than their CPU time where runs shared a core).") in table
    assert f"Code {CODE[:12]} (digest of the splitfx sources)" in table
    assert ("learning rate chosen per recipe at K=4 (E2E on its own), then used at every K and for the controls (a "
            "recipe the planner refuses at that K searches at each K) on a validation split of 10 % of the training "
            "images: seed 0 at each rate of the grid 0.001, 0.002, 0.004, extended by up to 2 rate(s) past an edge "
            "while the best rate lies there") in table
    assert ("Data cluttered at 32², 12 epochs, batch 64, AdamW with weight decay 0.05, learning rate ×0.8 per "
            "epoch") in table
    assert "Test accuracy of 5 seeds per cell" in table
    assert markdown([line(provenance=False)], [2]).count("Code unrecorded") == 1


def test_a_cell_reported_at_two_rates_is_refused():
    with pytest.raises(ValueError, match=r"m dgl K=2: seeds reported at several learning rates \(0.001, 0.002\)"):
        summarise([line(seed=0, lr=0.002), line(seed=1, lr=0.001)])


def test_figures_are_written_per_model_with_safe_names(tmp_path):
    model = "splitfx.models.cifar_resnet:resnet32"
    lines = [*e2e(model=model), *recipe([-0.01] * 5, model=model), *recipe([-0.02] * 5, k=4, model=model),
             *recipe([-0.02] * 5, model=model, detach=False), *recipe([0.0] * 5, "solo", model="other")]
    paths = figures(lines, str(tmp_path))
    assert paths == [str(tmp_path / "splitfx.models.cifar_resnet_resnet32-accuracy-memory.png"),
                     str(tmp_path / "splitfx.models.cifar_resnet_resnet32-gap.png"),
                     str(tmp_path / "other-accuracy-memory.png")]  # no E2E cell: no gap to draw
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in paths)
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
