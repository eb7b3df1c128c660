"""benchmarks.time_to_target: the target, the costs it reads from the step-cost tables, the
steps and seconds each optimizer takes to reach it, and what a run logs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks.common import device_name
from benchmarks.time_to_target import (
    adamw_steps_to_target,
    cost_ratios,
    costs_at_other_starts,
    grid_target,
    merged_costs,
    time_to_target,
    time_to_target_runs,
    train_to_target,
    upper_median,
)


def test_time_to_target_is_the_first_evaluation_that_reaches_it():
    history = [
        {"step": 25, "seconds": 10.0, "metric": 0.80},
        {"step": 50, "seconds": 20.0, "metric": 0.90},
        {"step": 75, "seconds": 30.0, "metric": 0.85},
        {"step": 100, "seconds": 40.0, "metric": 0.92},
    ]
    assert time_to_target(history, 0.90) == history[1]  # reached exactly, then lost again
    assert time_to_target(history, 0.91)["seconds"] == 40.0
    assert time_to_target(history, 0.95) is None


def test_the_target_is_the_best_final_grid_metric_first_listed_on_ties():
    finals = {"adamw@1e-05": 0.88, "adamw@2e-05": 0.91, "adamw@5e-05": 0.91, "adamw@0.0001": 0.5}
    assert grid_target(finals) == ("adamw@2e-05", 0.91)


def cost_result(tmp_path, first_steps: int = 300) -> Path:
    def row(name: str, first: float, whole: float) -> dict:
        window = {"total": first, "steps": first_steps}
        return {"optimizer": name, "first": window, "whole": {"total": whole, "steps": 1000}}

    rows = [row("adamw-const@5e-5", 1.0, 1.0), row("lrfree", 1.2, 1.05)]
    path = tmp_path / "step_cost.json"
    path.write_text(json.dumps({"meta": "", "rows": rows}))
    return path


def test_cost_ratios_read_the_window_that_matches_the_run_length(tmp_path):
    path = cost_result(tmp_path)
    assert cost_ratios(path, 300)["lrfree"] == 1.2  # runs no longer than the first window
    assert cost_ratios(path, 1000)["lrfree"] == 1.05
    assert cost_ratios(cost_result(tmp_path, first_steps=200), 300)["lrfree"] == 1.05
    assert cost_ratios(tmp_path / "missing.json", 300) == {}


def test_cost_ratios_refuse_a_table_shorter_than_the_runs_or_not_a_cost_table(tmp_path):
    with pytest.raises(SystemExit, match="timed 1000 steps, fewer than these runs' 2000"):
        cost_ratios(cost_result(tmp_path), 2000)
    other = tmp_path / "quality.json"
    other.write_text(json.dumps({"meta": "", "rows": [{"optimizer": "salsa", "acc": 0.8}]}))
    with pytest.raises(SystemExit, match="quality.json is not a step-cost table"):
        cost_ratios(other, 300)


def test_cost_ratios_read_the_first_table_format_and_leave_out_rows_timed_over_fewer_steps(
    tmp_path,
):
    rows = [{"optimizer": "adamw-const@5e-5", "steps": 1000, "ratio_to_adamw": 1.0},
            {"optimizer": "salsa", "steps": 1000, "ratio_to_adamw": 1.12},
            {"optimizer": "sgdsls", "steps": 50, "ratio_to_adamw": 2.9}]  # fmt: skip
    path = tmp_path / "first_format.json"
    path.write_text(json.dumps({"meta": "", "rows": rows}))
    assert cost_ratios(path, 1000) == {"adamw-const@5e-5": 1.0, "salsa": 1.12}
    assert cost_ratios(path, 50)["sgdsls"] == 2.9


def test_merged_costs_take_each_optimizer_from_the_first_table_that_timed_it(tmp_path):
    first = cost_result(tmp_path)  # lrfree 1.2 / 1.05
    rows = [{"optimizer": "adamw-const@5e-5", "steps": 1000, "ratio_to_adamw": 1.0},
            {"optimizer": "lrfree", "steps": 1000, "ratio_to_adamw": 3.0},
            {"optimizer": "salsa", "steps": 1000, "ratio_to_adamw": 1.12}]  # fmt: skip
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"meta": "", "rows": rows}))
    costs, sources = merged_costs([str(first), str(second)], 1000)
    assert (costs["lrfree"], sources["lrfree"]) == (1.05, str(first))
    assert (costs["salsa"], sources["salsa"]) == (1.12, str(second))


def test_a_rule_without_trials_costs_at_another_start_what_it_cost_where_it_was_timed():
    timed = "slope_tracking_adam+significant@1e-4~warmup_anneal"
    costs, sources = {timed: 0.97, "salsa@1e-4": 1.3}, {timed: "t.json", "salsa@1e-4": "t.json"}
    pilot = "slope_tracking_adam+significant@6.12e-5~warmup_anneal"
    others = [
        "slope_tracking_adam+significant@6.12e-5~anneal",  # another schedule
        "slope_tracking_adam+burn_in@6.12e-5~warmup_anneal",  # another rule
        "salsa@1e-3",  # a line search: its trials depend on the step size
        "adamw-const@6e-5",
    ]
    costs_at_other_starts([pilot, *others], costs, sources)
    assert costs[pilot] == 0.97 and "t.json" in sources[pilot] and timed in sources[pilot]
    assert not any(spec in costs for spec in others)


def test_adamw_steps_to_target_scale_the_step_by_the_measured_cost():
    assert adamw_steps_to_target(100, "lrfree", {"lrfree": 1.2}) == pytest.approx(120.0)
    assert adamw_steps_to_target(None, "lrfree", {"lrfree": 1.2}) is None  # never reached
    assert adamw_steps_to_target(100, "unmeasured", {"lrfree": 1.2}) is None


def test_time_to_target_table_counts_adamw_steps_against_the_best_run_and_the_grid(tmp_path):
    args = argparse.Namespace(
        model="small-bert", task="sst2", steps=100, eval_every=50, dev_limit=None, bf16=False,
        device="cpu", grid=[1e-5, 1e-4], lr_free=["lrfree", "other"], first=300, seeds=[0],
        out=str(tmp_path / "ttt"), cost_from=[str(cost_result(tmp_path))],
    )  # fmt: skip
    settings = {k: getattr(args, k) for k in ("model", "task", "steps", "eval_every")}
    settings |= {"dev_limit": None, "bf16": False, "device": device_name("cpu")}

    def logged(spec: str, metrics: list[float]) -> dict:
        history = [
            {"step": 50 * (i + 1), "seconds": 5.0 * (i + 1), "metric": m}
            for i, m in enumerate(metrics)
        ]
        return {"optimizer": spec, "train_seconds": 10.0, "final_metric": metrics[-1],
                "forwards_per_step": 1.0, "history": history, **settings}  # fmt: skip

    runs = [logged("adamw@1e-05", [0.6, 0.7]), logged("adamw@0.0001", [0.8, 0.9])]
    runs += [logged("lrfree", [0.9, 0.9]), logged("other", [0.5, 0.95])]
    Path(f"{args.out}.runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    meta, table, rows = time_to_target_runs(args)  # every run is logged: nothing trains
    by_spec = {r["optimizer"]: r for r in rows}
    assert by_spec["adamw@0.0001"]["adamw_steps_to_target"] == 100  # target 0.9 at its step 100
    assert by_spec["lrfree"]["adamw_steps_to_target"] == pytest.approx(60.0)  # step 50 × 1.2
    assert by_spec["adamw@1e-05"]["adamw_steps_to_target"] is None  # never reaches 0.9
    assert by_spec["other"]["adamw_steps_to_target"] is None  # reaches it; cost not measured
    line = next(x for x in table.splitlines() if x.startswith("| lrfree "))
    assert "| 60 | 0.60 | 0.30 |" in line  # vs the best run's 100 steps, the grid's 200
    assert f"(lrfree: {args.cost_from[0]}; other: not timed)" in meta


def test_time_to_target_resumes_runs_of_any_machine_and_then_compares_no_seconds(tmp_path):
    args = argparse.Namespace(
        model="small-bert", task="sst2", steps=100, eval_every=50, dev_limit=None, bf16=False,
        device="cpu", grid=[1e-5, 1e-4], lr_free=["lrfree"], first=300, seeds=[0],
        out=str(tmp_path / "ttt"), cost_from=[str(cost_result(tmp_path))],
    )  # fmt: skip
    settings = {"model": "small-bert", "task": "sst2", "steps": 100, "eval_every": 50}
    settings |= {"dev_limit": None, "bf16": False}

    def logged(spec: str, metrics: list[float], machine: str) -> dict:
        history = [{"step": 50 * (i + 1), "seconds": 5.0 * (i + 1), "metric": m}
                   for i, m in enumerate(metrics)]  # fmt: skip
        return {"optimizer": spec, "train_seconds": 10.0, "final_metric": metrics[-1],
                "forwards_per_step": 1.0, "history": history, **settings,
                "device": machine}  # fmt: skip

    runs = [logged("adamw@1e-05", [0.6, 0.7], "cpu: A, 1 threads")]
    runs += [logged("adamw@0.0001", [0.8, 0.9], "cpu: A, 1 threads")]
    runs += [logged("lrfree", [0.9, 0.9], "cpu: B, 1 threads")]
    Path(f"{args.out}.runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    meta, table, rows = time_to_target_runs(args)  # nothing trains: every run is reused
    assert [r["optimizer"] for r in rows] == ["adamw@1e-05", "adamw@0.0001", "lrfree"]
    line = next(x for x in table.splitlines() if x.startswith("| lrfree "))
    assert "| 60 | 0.60 | 0.30 | – | – | – |" in line  # steps compared, seconds not
    assert "device cpu: A, 1 threads; cpu: B, 1 threads;" in meta
    assert "no seconds columns: the runs come from 2 machines" in meta


def test_upper_median_counts_a_seed_that_missed_as_infinitely_late():
    assert upper_median([300.0]) == 300.0
    assert upper_median([400.0, None, 200.0]) == 400.0  # 200, 400, missed
    assert upper_median([None, 200.0, None]) is None  # two of three missed
    assert upper_median([100.0, None]) is None  # half missed: the upper of the two


def test_with_seeds_each_seed_has_its_own_target_and_the_table_shows_upper_medians(tmp_path):
    args = argparse.Namespace(
        model="small-bert", task="sst2", steps=100, eval_every=25, dev_limit=None, bf16=False,
        device="cpu", grid=[1e-5, 1e-4], lr_free=["lrfree"], first=300, seeds=[0, 1, 2],
        out=str(tmp_path / "ttt"), cost_from=[str(cost_result(tmp_path))],
    )  # fmt: skip
    settings = {"model": "small-bert", "task": "sst2", "steps": 100, "eval_every": 25}
    settings |= {"dev_limit": None, "bf16": False, "device": device_name("cpu")}

    def logged(spec: str, seed: int, metrics: list[float]) -> dict:
        history = [{"step": 25 * (i + 1), "seconds": 2.0 * (i + 1), "metric": m}
                   for i, m in enumerate(metrics)]  # fmt: skip
        return {"optimizer": spec, "seed": seed, "train_seconds": 8.0, "forwards_per_step": 1.0,
                "final_metric": metrics[-1], "history": history, **settings}  # fmt: skip

    # adamw@1e-4 is best by its mean final (0.85 > 0.70): the seeds' targets 0.80, 0.90, 0.85
    best = {0: [0.7, 0.8, 0.8, 0.8], 1: [0.6, 0.7, 0.9, 0.9], 2: [0.85, 0.8, 0.8, 0.85]}
    lrfree = {0: [0.8, 0.8, 0.8, 0.8], 1: [0.9, 0.9, 0.9, 0.9], 2: [0.5, 0.6, 0.7, 0.84]}
    runs = [logged("adamw@1e-05", s, [0.7] * 4) for s in (0, 1, 2)]
    runs += [logged("adamw@0.0001", s, best[s]) for s in (0, 1, 2)]
    runs += [logged("lrfree", s, lrfree[s]) for s in (0, 1, 2)]
    Path(f"{args.out}.runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    meta, table, rows = time_to_target_runs(args)  # nothing trains: every run is logged
    by_spec = {r["optimizer"]: r for r in rows}
    adamw = by_spec["adamw@0.0001"]
    assert [p["step_at_target"] for p in adamw["per_seed"]] == [50, 75, 25]
    assert adamw["step_at_target"] == 50 and adamw["final_metric"] == pytest.approx(0.85)
    mine = by_spec["lrfree"]
    # seed 0: 0.80 at step 25; seed 1: 0.90 at 25; seed 2: 0.84 < 0.85, never
    assert [p["step_at_target"] for p in mine["per_seed"]] == [25, 25, None]
    assert mine["reached"] == 2 and mine["step_at_target"] == 25
    assert mine["adamw_steps_to_target"] == pytest.approx(30.0)  # 25 steps × 1.2
    line = next(x for x in table.splitlines() if x.startswith("| lrfree "))
    assert "| 30 | 0.60 | 0.15 |" in line and line.endswith("| 2/3 |")  # vs 50 and 200 steps
    assert by_spec["adamw@1e-05"]["step_at_target"] is None  # 0.70 misses every seed's target
    assert "targets 0.8000, 0.9000, 0.8500" in meta
    # a rerun with one seed more trains only that seed's runs: here none, as seed 0 is logged
    assert time_to_target_runs(argparse.Namespace(**{**vars(args), "seeds": [0]}))[2][1][
        "final_metric"
    ] == pytest.approx(0.8)


def test_a_time_to_target_run_logs_the_step_sizes_and_alignments_of_every_step():
    """Plumbing on a small BERT with random tokens (no claim about quality): the run's row holds
    one step size per step, the schedule's for AdamW and the tracker's with its alignments."""
    generator = torch.Generator().manual_seed(0)

    def batch() -> dict:
        ids = torch.randint(5, 100, (4, 8), generator=generator)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (4,), generator=generator),
        }

    batches = [batch() for _ in range(6)]
    data = (batches, 3, [batch()])
    args = argparse.Namespace(model="small-bert", device="cpu", bf16=False, steps=6, eval_every=3)
    vocab = list(range(100))  # only its length is read
    tracker = "slope_tracking_adam+significant+fresh_peak+slope@1e-4~anneal"
    run = train_to_target(tracker, args, vocab, data)
    sizes = run["per_step"]["step_size"]["0"]
    assert len(sizes) == 6 and sizes[0] == pytest.approx(1e-4)
    alignments = run["per_step"]["alignment"]
    assert len(alignments) == 6 and alignments[0] is None and None not in alignments[1:]
    adamw = train_to_target("adamw@1e-4", args, vocab, data)["per_step"]["step_size"]["0"]
    assert adamw[0] == pytest.approx(1e-4) and adamw == sorted(adamw, reverse=True)  # the cosine
    assert adamw[-1] < adamw[0]
    assert [h["step"] for h in run["history"]] == [3, 6]
