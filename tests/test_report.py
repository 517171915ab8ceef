"""Comparisons of like with like (#46): arms compared at the step every trial reached, each arm's sweep and steps in
the table, only ratio arms on the ratio axis, and a best value at its grid's edge said, with the values that extend
the grid. Sweep folders are built from the grid's own arms (config/grid.py), with curves of known numbers."""

import json
import math

import pytest

from hybrid_ray.cli import main
from hybrid_ray.config.grid import expand, lr_around, numeric_value, parse_grid
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.layout import RunLayout
from hybrid_ray.records import folders, report
from hybrid_ray.records.edge import grid_edge, number


def curve(final: float, until: int, every: int, total: int) -> list[dict]:
    """Evaluations every `every` steps up to `until`, falling towards `final` (and a train log between them)."""
    history = []
    for step in range(every, until + 1, every):
        history.append({"step": step - every // 2, "loss": final + 3.5, "tokens_per_s": 1000.0})
        history.append({"step": step, "val_loss": final + 3 * math.exp(-4 * step / total), "val_accuracy": 0.3,
                        "val_recall": 0.1 + 0.3 * step / total, "time_s": step * 0.5})
    return history


def sweep_folder(root, name: str, grid: str, finals: list[float], *, total: int, every: int = 20,
                 stops: dict[tuple[int, int], int] | None = None, seeds: int = 2) -> list[dict]:
    """A finished sweep on disk (trials' results.json and sweep.json, written by write_comparison as the sweep
    writes them): the seeds of the grid's i-th arm end near finals[i] (+0.02 a seed); stops[(i, seed)] = the step
    ASHA stopped that trial at."""
    arms = expand(variant_spec("h100_hybrid_sparse", "tiny"), parse_grid([grid]))
    rows = []
    for i, arm in enumerate(arms):
        value = numeric_value(arm)
        for seed in range(seeds):
            stop = (stops or {}).get((i, seed))
            history = curve(finals[i] + 0.02 * seed, stop or total, every, total)
            evals = [r for r in history if "val_loss" in r]
            results = {"name": f"{arm.id}-s{seed}", "status": "stopped" if stop else "finished", "step": stop or total,
                       "total_steps": total, "best": min(evals, key=lambda r: r["val_loss"]), "final": evals[-1],
                       "history": history, "params": {"total": 500_000}, "tokens_seen": (stop or total) * 1000}
            run = RunLayout(str(root / name / "trials" / f"{arm.id}-s{seed}"))
            folders.write_results(run, results)
            row = report.trial_row(arm.id, arm.settings, seed, f"{arm.id}-s{seed}", run, results, value, sweep=name)
            rows.append({**row, **({"status": "stopped by ASHA", "reason": f"at step {stop}"} if stop else {})})
    report.write_comparison(rows, name, str(root / name / "sweep.json"), str(root / name / "sweep.png"))
    return rows


def lines_by_arm(table: str) -> dict[str, str]:
    return {line.split()[1]: line for line in table.splitlines()[1:] if line.split()[0].isdigit()}


def test_a_sweep_with_asha_stops_compares_every_arm_at_the_step_all_reached(tmp_path):
    # the figure: pure DeltaNet ran its 240 steps, the others stopped by ASHA at 40-60
    rows = sweep_folder(tmp_path, "ratio", "attention_ratio=0,0.5,1", [3.0, 3.05, 3.3], total=240,
                        stops={(1, 0): 60, (1, 1): 40, (2, 0): 40, (2, 1): 60})
    assert report.common_step(rows) == 40
    summary = {a["arm"]: a for a in report.arm_summary(rows)}
    for arm, members in (("attn0", rows[:2]), ("attn50", rows[2:4]), ("attn100", rows[4:])):
        at_40 = [next(r["val_loss"] for r in m["history"] if r.get("step") == 40 and "val_loss" in r) for m in members]
        assert summary[arm]["losses_at_common"] == at_40  # the value in each trial's own curve at step 40
        assert summary[arm]["loss_at_common"][0] == pytest.approx(sum(at_40) / 2)
    # at step 40 the finished arm is not 1 nat ahead; over its own 240 steps it is
    assert summary["attn50"]["loss_at_common"][0] - summary["attn0"]["loss_at_common"][0] == pytest.approx(0.05)
    assert summary["attn50"]["best_val_loss"] - summary["attn0"]["best_val_loss"] > 0.5
    table = report.ranked_table(rows)
    head = table.splitlines()[0]
    assert "steps" in head and "val loss @40" in head and "sweep" not in head  # one sweep: its name is no news
    lines = lines_by_arm(table)
    assert lines["attn0"].split()[2] == "240" and lines["attn50"].split()[2] == "40-60/240"
    assert f"{summary['attn50']['loss_at_common'][0]:.4f}" in lines["attn50"]
    assert "the last step every trial reached" in table
    written = json.loads((tmp_path / "ratio" / "sweep.json").read_text())
    assert written["common_step"] == 40 and written["edges"] == []  # 0 and 1 end the ratio axis: no edge
    arms = {a["arm"]: a for a in written["arms"]}
    assert arms["attn50"]["steps"] == [40, 60] and arms["attn50"]["total_steps"] == 240
    assert arms["attn100"]["losses_at_common"] == summary["attn100"]["losses_at_common"]
    assert (tmp_path / "ratio" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_whose_trials_all_ended_together_has_no_extra_column():
    rows = [report.trial_row("a", {"lr": 1e-3}, 0, "a-s0", RunLayout("/x/a-s0"),
                             {"status": "finished", "step": 40, "total_steps": 40, "best": {"val_loss": 3.0},
                              "history": curve(3.0, 40, 20, 40)}, 1e-3, sweep="s")]
    assert report.common_step(rows) == 40
    assert "@" not in report.ranked_table(rows).splitlines()[0]


def test_compare_of_a_ratio_sweep_and_an_lr_sweep_keeps_them_apart(tmp_path, capsys):
    sweep_folder(tmp_path, "ratio", "attention_ratio=0,0.5,1", [3.0, 3.05, 3.3], total=240,
                 stops={(1, 0): 60, (1, 1): 40, (2, 0): 40, (2, 1): 60})
    sweep_folder(tmp_path, "lr", "lr=2.5e-4,5e-4,1e-3", [3.6, 3.4, 3.2], total=40)
    assert main(["compare", str(tmp_path / "ratio"), str(tmp_path / "lr"), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    head = table.splitlines()[0].split()
    assert head[:5] == ["rank", "arm", "sweep", "steps", "best"]
    lines = lines_by_arm(table)
    assert lines["lr0.001"].split()[2:4] == ["lr", "40"] and lines["attn100"].split()[2:4] == ["ratio", "40-60/240"]
    # the 40-step LR arms are not judged against the 240-step ratio arm: each sweep has its own best
    assert "best" in lines["lr0.001"] and "best" in lines["attn0"] and "worse" in lines["lr0.0005"]
    assert "of its own sweep and number of steps" in table
    rows = report.comparison_rows([str(tmp_path / "ratio"), str(tmp_path / "lr")])
    assert {r["sweep"] for r in rows} == {"ratio", "lr"}
    positions, ticks = report.value_positions(report.arm_summary(rows))
    assert ticks is not None  # a learning rate is no attention share: the axis names the arms
    assert list(ticks)[:3] == ["attn0 (ratio)", "attn50 (ratio)", "attn100 (ratio)"]
    assert sorted(positions[f"lr/lr{lr:g}"] for lr in (2.5e-4, 5e-4, 1e-3)) == [3.0, 4.0, 5.0]
    written = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {(a["sweep"], a["arm"], tuple(a["steps"])) for a in written["arms"]} >= {
        ("lr", "lr0.001", (40, 40)), ("ratio", "attn0", (240, 240)), ("ratio", "attn50", (40, 60))}
    assert written["common_step"] == 40
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # one ratio sweep alone (or with runs placed by their attention share) keeps its numeric axis
    positions, ticks = report.value_positions(report.arm_summary(report.comparison_rows([str(tmp_path / "ratio")])))
    assert ticks is None and positions == {"ratio/attn0": 0.0, "ratio/attn50": 0.5, "ratio/attn100": 1.0}


def test_two_sweeps_arms_of_one_name_are_not_merged(tmp_path):
    sweep_folder(tmp_path, "long", "lr=5e-4,1e-3", [3.0, 3.1], total=120)
    sweep_folder(tmp_path, "short", "lr=5e-4,1e-3", [3.5, 3.4], total=40)
    summary = report.arm_summary(report.comparison_rows([str(tmp_path / "long"), str(tmp_path / "short")]))
    assert sorted((a["sweep"], a["arm"], a["seeds"]) for a in summary) == [
        ("long", "lr0.0005", 2), ("long", "lr0.001", 2), ("short", "lr0.0005", 2), ("short", "lr0.001", 2)]


def test_a_trial_compared_from_its_sweeps_trials_folder_keeps_its_sweep_and_arm(tmp_path):
    sweep_folder(tmp_path, "lr", "lr=5e-4,1e-3", [3.4, 3.2], total=40)
    rows = report.comparison_rows([str(tmp_path / "lr" / "trials")])
    assert {(r["sweep"], r["arm"], r["value"]) for r in rows} == {("lr", "lr0.0005", 5e-4), ("lr", "lr0.001", 1e-3)}
    assert all(r["settings"] == {"lr": r["value"]} for r in rows)  # not placed at its attention share


ORIGINAL_LR_GRID = [2e-4, 3e-4, 4e-4, 5e-4, 5.8e-4, 7e-4, 1e-3]  # the original scripts' LR ablation (jobs/lr_ablation.yaml)


def test_the_edge_rule_names_the_values_that_extend_the_grid():
    # the H100 case: the original LR grid's top value won
    assert str(grid_edge("lr", ORIGINAL_LR_GRID, 1e-3)) == ("best lr 1e-3 is the grid's highest: the optimum may be higher; "
                                                  "extend the grid with 1.4e-3, 2e-3")
    assert grid_edge("lr", ORIGINAL_LR_GRID, 2e-4).extend == (1.3e-4, 8.9e-5)  # the grid's own ratio at that edge (2e-4/3e-4)
    assert grid_edge("lr", ORIGINAL_LR_GRID, 5e-4) is None  # inside the grid
    assert grid_edge("lr", lr_around(1e-3), 4e-3).extend == (6.4e-3, 1e-2)  # the default grid continues its top ratio (x1.6)
    assert grid_edge("lr", [1e-3, 2e-3], 2e-3).extend == (4e-3, 8e-3)
    assert grid_edge("lr", [1e-3], 1e-3) is None  # one value is no grid
    assert grid_edge("train.batch_size", [16, 32, 48], 48).extend == (64, 80)  # evenly spaced: the same step
    assert grid_edge("train.batch_size", [16, 32], 16).extend == (8, 4)
    assert grid_edge("train.batch_size", [1, 2], 1) is None  # nothing below 1 in whole numbers
    assert grid_edge("attention_ratio", [0, 0.25, 0.5], 0.5).extend == (0.75, 1.0)
    assert grid_edge("attention_ratio", [0.25, 0.5], 0.25).extend == (0.0,)  # not past the axis's own end
    assert grid_edge("attention_ratio", [0, 0.5, 1], 1.0) is None and grid_edge("attention_ratio", [0, 1], 0) is None
    assert [number(v) for v in (1e-3, 1.4e-3, 5.8e-4, 0.75, 64.0, 1e-5)] == ["1e-3", "1.4e-3", "5.8e-4", "0.75", "64",
                                                                              "1e-5"]


def test_an_lr_sweep_whose_best_is_its_highest_value_says_so(tmp_path, capsys):
    rows = sweep_folder(tmp_path, "lr", "lr=2.5e-4,5e-4,1e-3", [3.6, 3.4, 3.2], total=40)
    note = "best lr 1e-3 is the grid's highest: the optimum may be higher; extend the grid with 2e-3, 4e-3"
    table = report.ranked_table(rows).splitlines()
    assert f"note: {note}" in table and "Welch's t-test" in table[-1]
    written = json.loads((tmp_path / "lr" / "sweep.json").read_text())
    assert written["edges"] == [{"sweep": "lr", "axis": "lr", "best": 1e-3, "side": "highest",
                                 "extend": [2e-3, 4e-3], "note": note}]
    # the best in the middle: nothing to say
    middle = sweep_folder(tmp_path, "mid", "lr=2.5e-4,5e-4,1e-3", [3.6, 3.2, 3.4], total=40)
    assert not [line for line in report.ranked_table(middle).splitlines() if line.startswith("note")]
    # compare names the sweep the note is about
    assert main(["compare", str(tmp_path / "lr"), str(tmp_path / "mid"), "--out", str(tmp_path / "cmp")]) == 0
    assert f"note (lr): {note}" in capsys.readouterr().out.splitlines()


def test_the_sweep_returns_its_edges_for_a_script(tmp_path):
    from hybrid_ray.layout import SweepLayout
    from hybrid_ray.sweep.tuner import write_outputs

    rows = sweep_folder(tmp_path, "lr", "lr=2.5e-4,5e-4,1e-3", [3.2, 3.4, 3.6], total=40)
    outcome = write_outputs(SweepLayout(str(tmp_path), "lr"), rows, "lr")
    assert [(e.axis, e.side, e.extend) for e in outcome.edges] == [("lr", "lowest", (1.3e-4, 6.3e-5))]
    assert "note: best lr 2.5e-4 is the grid's lowest: the optimum may be lower; extend the grid with 1.3e-4, 6.3e-5" \
        in outcome.table


def test_a_variant_sweep_has_no_edge_to_extend(tmp_path):
    rows = sweep_folder(tmp_path, "v", "variant=h100_deltanet,h100_hybrid_sparse", [3.5, 3.2], total=40)
    assert report.grid_edges(report.arm_summary(rows)) == []  # variants differ in more than their share
