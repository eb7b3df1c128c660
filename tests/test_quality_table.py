"""The quality benchmark's table (``benchmarks.quality.summarise`` and ``table_lines``): paired
differences against the best AdamW grid point, the learning seeds, and a table before any grid
point is logged."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from benchmarks.quality import summarise, table_lines
from benchmarks.specs import build


def row(optimizer: str, seed: int, acc: float) -> dict:
    return {
        "optimizer": optimizer,
        "seed": seed,
        "acc": acc,
        "train_loss": 0.5,
        "forwards_per_step": 1.0,
        "seconds": 10.0,
    }


def test_paired_difference_is_taken_per_seed_against_the_best_grid_point():
    rows = [
        row("adamw@1e-4", 0, 0.80),
        row("adamw@1e-4", 1, 0.70),
        row("adamw@5e-5", 0, 0.60),
        row("adamw@5e-5", 1, 0.62),
        row("tracker", 0, 0.82),
        row("tracker", 1, 0.69),
        row("tracker", 2, 0.99),  # no grid run on seed 2: not paired
    ]
    table = {e["optimizer"]: e for e in summarise(rows, "acc", majority=0.68)}
    assert table["tracker"]["paired_against"] == "adamw@1e-4"
    mean, std = (float(x) for x in table["tracker"]["paired_cell"].split(" ± "))
    assert abs(mean - 0.005) < 1e-4 and abs(std - 0.0212) < 1e-4  # (+0.02, −0.01)
    assert table["tracker"]["learns"] == 2  # 0.82 and 0.99 are ≥ 0.70; 0.69 is not
    assert table["adamw@5e-5"]["learns"] == 0
    lines = table_lines(list(table.values()), "acc")
    assert "paired Δ vs adamw@1e-4" in lines[0]
    assert len(lines) == 2 + 3


def test_the_decoder_table_pairs_against_the_grid_point_with_the_lowest_held_out_loss():
    from benchmarks.decoder_finetune import summarise as decoder_summarise

    def loss_row(optimizer: str, seed: int, loss: float) -> dict:
        return {**row(optimizer, seed, 0.0), "heldout_loss": loss}

    rows = [
        loss_row("adamw@1e-4", 0, 3.60),
        loss_row("adamw@1e-4", 1, 3.70),
        loss_row("adamw@5e-5", 0, 3.65),
        loss_row("adamw@5e-5", 1, 3.75),
        loss_row("adamw@3e-3", 0, 3.00),  # not a grid point: never the reference
        loss_row("tracker", 0, 3.58),
        loss_row("tracker", 1, 3.71),
        loss_row("tracker", 2, 3.0),
    ]
    table = {e["optimizer"]: e for e in decoder_summarise(rows)}
    assert table["tracker"]["best"] == "adamw@1e-4"
    mean, std = (float(x) for x in table["tracker"]["paired"].split(" ± "))
    assert mean == pytest.approx(-0.005, abs=1e-4)  # seeds 0 and 1 only
    assert std == pytest.approx(math.sqrt(2) * 0.015, abs=1e-4)


def test_a_table_without_any_grid_point_has_no_paired_column():
    table = summarise([row("tracker", 0, 0.8)], "acc", majority=0.5)
    lines = table_lines(table, "acc")
    assert "paired" not in lines[0]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "tracker" and cells[-3] == "1/1" and len(cells) == lines[1].count("---")


def test_the_step_size_plot_shows_a_trackers_alignment_and_a_searchs_trials(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plot import plot_step_sizes, plt

    def logged(optimizer: str, trials: list[int], alignment=None) -> dict:
        per_step = {"step_size": {"0": [1e-4, 2e-4, 1e-4]}, "trials": trials}
        per_step |= {"failed": [False] * 3, "ratio": [0.5 if t else None for t in trials]}
        if alignment is not None:
            per_step["alignment"] = alignment
        return {**row(optimizer, 0, 0.8), "per_step": per_step}

    adamw = logged("adamw@1e-4", [0, 0, 0])
    tracker = logged("tracker", [0, 0, 0], [None, 0.1, -0.1])
    search = logged("salsa", [2, 1, 0])
    titles = {}
    for name, rows in {"tracker": [adamw, tracker], "both": [adamw, tracker, search]}.items():
        plot_step_sizes(rows, tmp_path / f"{name}.png")
        titles[name] = [ax.get_title() for ax in plt.gcf().axes]
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert titles["tracker"] == ["accepted step size", "step alignment (rolling mean of 10)"]
    assert len(titles["both"]) == 4 and "trials per step" in titles["both"]


class _Regression(torch.nn.Module):
    """A linear model called as Hugging Face models are (``model(**batch).loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y))


def test_the_default_steps_plot_draws_eta_times_the_best_grid_points_multiplier(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plot import plot_default_steps, plt
    from benchmarks.specs import BURN_IN_DEFAULT, DEFAULT

    def logged(optimizer: str, seed: int, acc: float, step_sizes: list[float]) -> dict:
        return {**row(optimizer, seed, acc), "per_step": {"step_size": {"0": step_sizes}}}

    rows = [
        logged("adamw@5e-5", 0, 0.70, [2.5e-5, 5e-5, 2.5e-5]),  # the multiplier: 0.5, 1, 0.5
        logged("adamw@1e-4", 0, 0.60, [5e-5, 1e-4, 5e-5]),
        # a diagnostic row and a pilot outside the grid score higher: neither is its best point
        logged("adamw@1e-4^late_half", 0, 0.90, [5e-5, 5e-5, 2.5e-5]),
        logged("adamw@3e-4", 0, 0.95, [1.5e-4, 3e-4, 1.5e-4]),
        # the default's runs of at most 375 steps are logged under the spec before the long-run
        # start; its η is logged without the multiplier
        logged(BURN_IN_DEFAULT, 0, 0.65, [1e-4, 8e-5, 6e-5]),
        logged(BURN_IN_DEFAULT, 1, 0.67, [1e-4, 1e-4, 1e-4]),
    ]
    plot_default_steps({"m_task": rows}, DEFAULT, tmp_path / "steps.png")
    (ax,) = plt.gcf().axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["the default, 2 seeds (0.660)"] == pytest.approx([5e-5, 8e-5, 3e-5])
    assert lines["adamw@5e-5 (0.700)"] == [2.5e-5, 5e-5, 2.5e-5]
    assert lines["adamw@1e-4 (0.600)"] == [5e-5, 1e-4, 5e-5]
    seed_1 = [y for label, y in lines.items() if label.startswith("_")]
    assert seed_1 == [pytest.approx([5e-5, 1e-4, 5e-5])]
    assert ax.get_title() == "m_task" and (tmp_path / "steps.png").stat().st_size > 0


def test_an_annealed_spec_moves_by_the_tracked_step_times_a_cosine_that_ends_at_zero():
    torch.manual_seed(0)
    total = 6
    run = build("slope_tracking_adam+fresh_peak~anneal", _Regression(), total_steps=total)
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8)}
    for k in range(1, total + 1):
        before = [p.detach().clone() for p in run.model.parameters()]
        run.step(batch)
        group = run.optimizer.param_groups[0]
        factor = 0.5 * (1 + math.cos(math.pi * k / total))
        assert group["lr_multiplier"] == pytest.approx(factor, abs=1e-12)
        assert group["lr"] == pytest.approx(group["step_size"] * factor, rel=1e-12)
        moved = any(not torch.equal(b, p) for b, p in zip(before, run.model.parameters()))
        assert moved  # the step before the last still had a multiplier above 0
    assert run.optimizer.param_groups[0]["lr_multiplier"] == pytest.approx(0.0, abs=1e-12)


def test_a_warmup_annealed_spec_rises_over_a_tenth_of_the_run_then_follows_the_cosine():
    torch.manual_seed(0)
    total = 20  # 2 warmup steps
    run = build("slope_tracking_adam~warmup_anneal", _Regression(), total_steps=total)
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8)}
    group = run.optimizer.param_groups[0]
    assert group["lr_multiplier"] == pytest.approx(0.5)  # the first step is not wasted at 0
    expected = [1.0] + [0.5 * (1 + math.cos(math.pi * (t - 2) / 18)) for t in range(2, total + 1)]
    for factor in expected:
        run.step(batch)
        assert group["lr_multiplier"] == pytest.approx(factor, abs=1e-12)
        assert group["lr"] == pytest.approx(group["step_size"] * factor, rel=1e-12)
    assert group["lr_multiplier"] == pytest.approx(0.0, abs=1e-12)  # the run ends at 0


@pytest.mark.parametrize("spec", ["slope_tracking_adam~warmup", "adamw@1e-4~anneal"])
def test_a_spec_with_an_unknown_or_misplaced_schedule_is_refused(spec):
    with pytest.raises(ValueError, match="anneal"):
        build(spec, _Regression(), total_steps=4)


def test_two_presets_in_a_spec_build_the_optimizer_with_both():
    run = build("slope_tracking_adam+agree+fresh_peak@1e-4", _Regression(), total_steps=4)
    group = run.optimizer.param_groups[0]
    assert group["combine_horizons"] == "agree"
    assert group["cap_at_fresh_peak"] is True
    assert group["lr"] == pytest.approx(1e-4)


def test_a_bare_tracker_spec_keeps_the_earlier_defaults_and_the_default_spec_is_the_class():
    from benchmarks.specs import DEFAULT
    from lsframe import optim

    earlier = optim.info("slope_tracking_adam").preset("earlier_defaults")
    logged = build("slope_tracking_adam", _Regression(), total_steps=4).optimizer.defaults
    current = optim.create("slope_tracking_adam", _Regression().parameters()).defaults
    assert {key: logged[key] for key in earlier} == earlier  # as its runs were logged
    assert all(current[key] != value for key, value in earlier.items())
    run = build(DEFAULT, _Regression(), total_steps=4)  # the class's defaults, warmed, annealed
    assert run.optimizer.defaults == current
    assert run.scheduler.warmup_ratio == 0.1 and run.scheduler.total_steps == 4


def test_the_default_and_its_spec_before_the_long_run_start_differ_only_beyond_375_steps():
    from benchmarks.specs import BURN_IN_DEFAULT, DEFAULT, LONG_RUN_STEPS

    def groups(spec: str, steps: int) -> list[dict]:
        run = build(spec, _Regression(), total_steps=steps)
        drop = ("params", "long_run_steps", "unscaled_initial_step_size")
        return [{k: v for k, v in g.items() if k not in drop} for g in run.optimizer.param_groups]

    # long_run_steps acts in set_run_length alone: equal groups are the same run
    assert groups(DEFAULT, LONG_RUN_STEPS) == groups(BURN_IN_DEFAULT, LONG_RUN_STEPS)
    assert groups(DEFAULT, LONG_RUN_STEPS + 1) != groups(BURN_IN_DEFAULT, LONG_RUN_STEPS + 1)


def test_the_earlier_defaults_runs_of_at_most_375_steps_count_for_the_default_and_no_others():
    from benchmarks.specs import (
        BURN_IN_DEFAULT,
        DEFAULT,
        default_mode,
        logged_as,
        same_runs_note,
        with_same_runs,
    )

    assert logged_as(DEFAULT, 375) == BURN_IN_DEFAULT and logged_as(DEFAULT, 376) == DEFAULT
    fused = default_mode("fused")
    assert logged_as(fused, 80) == BURN_IN_DEFAULT.replace("@", "+fused@")
    assert logged_as(f"{DEFAULT}^heldout", 80) == f"{BURN_IN_DEFAULT}^heldout"
    assert logged_as("salsa@1e-3~anneal", 80) == "salsa@1e-3~anneal"

    def run(spec: str, seed: int, steps: int, acc: float) -> dict:
        return {"optimizer": spec, "seed": seed, "steps": steps, "acc": acc}

    runs = [
        run(BURN_IN_DEFAULT, 0, 300, 0.8),
        run(BURN_IN_DEFAULT, 1, 1000, 0.7),  # a longer run: the default starts lower there
        run(BURN_IN_DEFAULT, 2, 300, 0.6),
        run(DEFAULT, 2, 300, 0.9),  # the default's own run wins
        run(BURN_IN_DEFAULT, 0, 300, 0.85),  # a seed logged twice: the last run, as in a table
    ]
    out = with_same_runs(runs, [DEFAULT], lambda r: r["steps"])
    assert out[: len(runs)] == runs
    mine = {r["seed"]: r for r in out if r["optimizer"] == DEFAULT}
    assert set(mine) == {0, 2}
    assert mine[0]["acc"] == 0.85 and mine[0]["same_run_as"] == BURN_IN_DEFAULT
    assert mine[2]["acc"] == 0.9 and "same_run_as" not in mine[2]
    assert with_same_runs(runs, [DEFAULT], 1000) == runs  # an int: every run's length
    assert BURN_IN_DEFAULT in same_runs_note(out) and same_runs_note(runs) == ""


def test_presets_that_set_one_key_differently_are_refused():
    with pytest.raises(ValueError, match="disagree on combine_horizons"):
        build("slope_tracking_adam+agree+agree_else_min", _Regression(), total_steps=4)


def test_the_readme_summary_pairs_each_row_with_the_best_grid_point_on_shared_seeds():
    from benchmarks.readme_summary import summary_line
    from benchmarks.specs import DEFAULT, PREVIOUS_DEFAULT

    def run(optimizer, seed, acc):
        return {"optimizer": optimizer, "seed": seed, "acc": acc, "majority": 0.5271}

    rows = [run("adamw@1e-4", s, a) for s, a in enumerate([0.60, 0.62, 0.64])]
    rows += [run("adamw@5e-5", s, a) for s, a in enumerate([0.70, 0.40, 0.70])]  # mean 0.600
    rows += [run("adamw@3e-4", 0, 0.99)]  # not a grid point: never the best
    rows += [run(DEFAULT, 0, 0.58), run(DEFAULT, 2, 0.68)]
    rows += [run("salsa", 1, 0.63), run(PREVIOUS_DEFAULT, 1, 0.40)]
    line = summary_line("S, RTE", rows)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "S, RTE"
    # seeds 0 and 2 against adamw@1e-4's 0.60 and 0.64: (−0.02 + 0.04) / 2
    assert cells[1] == "0.630 ± 0.071 (2 seeds; paired +0.010)"
    assert cells[2] == "0.400 (1 seed; paired −0.220)"  # seed 1 against 0.62
    assert cells[3] == "–"  # the earlier defaults did not run
    assert cells[4] == "0.630 (1 seed; paired +0.010)"
    assert cells[5] == "0.620 ± 0.020 (3 seeds), 1e-4"
    assert cells[6] == "0.527"


def test_the_readme_peers_table_takes_schedule_free_at_the_best_grid_points_lr():
    from benchmarks.readme_summary import peers_line
    from benchmarks.specs import DEFAULT

    def run(optimizer, seed, acc):
        return {"optimizer": optimizer, "seed": seed, "acc": acc, "majority": 0.684}

    rows = [run("adamw@5e-5", s, a) for s, a in enumerate([0.70, 0.72])]
    rows += [run("adamw@1e-4", s, a) for s, a in enumerate([0.69, 0.70])]
    rows += [run("schedulefree@1e-4", 0, 0.90)]  # run when 1e-4 was the best: not this column's
    rows += [run("schedulefree@5e-5", s, a) for s, a in enumerate([0.71, 0.70])]
    rows += [run("prodigy", 1, 0.68), run(DEFAULT, 0, 0.70)]
    cells = [c.strip() for c in peers_line("S, MRPC", rows).strip("|").split("|")]
    assert cells[1] == "0.700 (1 seed; paired +0.000)"
    assert cells[2] == "0.680 (1 seed; paired −0.040)"  # seed 1 against 0.72
    assert cells[3] == "0.705 ± 0.007 (2 seeds; paired −0.005)"
    assert cells[4] == "–"  # the authors' package did not run
    assert cells[5:] == ["0.710 ± 0.014 (2 seeds), 5e-5", "0.684"]


def test_the_readme_presets_table_sets_each_rule_beside_its_robust_preset():
    from benchmarks.readme_summary import presets_table

    def run(optimizer, seed, acc):
        return {"optimizer": optimizer, "seed": seed, "acc": acc, "majority": 0.509}

    rows = [run("adamw@1e-4", s, a) for s, a in enumerate([0.80, 0.78, 0.79])]
    rows += [run("adamsls", s, a) for s, a in enumerate([0.70, 0.74, 0.75])]
    rows += [run("adamsls+robust", s, a) for s, a in enumerate([0.79, 0.77, 0.80])]
    rows += [run("salsa-reference", 0, 0.81)]
    lines = presets_table(rows, "S, SST-2").splitlines()
    adamsls = next(line for line in lines if line.startswith("| AdamSLS |"))
    cells = [c.strip() for c in adamsls.strip("|").split("|")]
    # paired against AdamW 1e-4 per seed: (−0.10 − 0.04 − 0.04) / 3 and (−0.01 − 0.01 + 0.01) / 3
    assert cells[2] == "0.730 ± 0.026 (3 seeds; paired −0.060)"
    assert cells[4] == "0.787 ± 0.015 (3 seeds; paired −0.003)"
    sgdsls = next(line for line in lines if line.startswith("| SGDSLS |"))
    assert sgdsls.count("| – |") == 2  # not run: no cell invented
    assert lines[-1].endswith("authors' package: 0.810 (1 seed; paired +0.010) |")


def test_the_readme_presets_overview_gives_each_rule_default_to_preset_on_every_task():
    from benchmarks.readme_summary import presets_overview

    def run(optimizer, seed, acc, majority=0.509):
        return {"optimizer": optimizer, "seed": seed, "acc": acc, "majority": majority}

    sst2 = [run("adamw@1e-4", s, a) for s, a in enumerate([0.80, 0.78, 0.79])]
    sst2 += [run("adamsls", s, a) for s, a in enumerate([0.70, 0.74, 0.75])]
    sst2 += [run("adamsls+robust", s, a) for s, a in enumerate([0.79, 0.77, 0.80])]
    rte = [run("adamw@5e-5", s, a, 0.527) for s, a in enumerate([0.56, 0.58, 0.57])]
    rte += [run("adamw@1e-4", s, 0.50, 0.527) for s in range(3)]
    rte += [run("adamsls", 1, 0.54, 0.527), run("salsa", 0, 0.52, 0.527)]
    lines = presets_overview({"SST-2": sst2, "RTE": rte}).splitlines()
    assert lines[0] == "| method | paper default → lsframe preset `robust` | SST-2 | RTE |"
    adamsls = [c.strip() for c in next(x for x in lines if x.startswith("| AdamSLS |")).split("|")]
    assert adamsls[3] == "0.730 (−0.060) → 0.787 (−0.003)"  # 3 seeds: the count left out
    assert adamsls[4] == "0.540 (−0.040; 1 seed) → –"  # seed 1 against AdamW 5e-5's 0.58
    salsa = [c.strip() for c in lines[-2].split("|")]
    assert salsa[1] == "SaLSA" and salsa[3] == "– → –" and salsa[4] == "0.520 (−0.040; 1 seed) → –"
    assert lines[-1].endswith("| 0.790 (1e-4); 0.509 | 0.570 (5e-5); 0.527 |")


def tiny_quality_argv(out) -> list[str]:
    """``benchmarks.quality``'s command line for one AdamW run on 8 RTE examples, logged at
    ``out``."""
    argv = ["quality", "--task", "rte", "--train-limit", "8", "--batch-size", "4"]
    argv += ["--max-length", "32", "--seeds", "0", "--optimizers", "adamw@1e-4"]
    return argv + ["--no-schedulefree", "--device", "cpu", "--out", str(out)]


@pytest.mark.parametrize(
    "spec, start_free",
    [
        (
            "slope_tracking_adam+significant+slope@1e-4~warmup_anneal^heldout",
            "slope_tracking_adam+significant+slope~warmup_anneal^heldout",
        ),
        ("slope_tracking_adam+long_run_start@1e-4^heldout-z2", "slope_tracking_adam^heldout-z2"),
        ("slope_tracking_adam~anneal", "slope_tracking_adam~anneal"),
        ("slope_tracking_adam@5e-5", "slope_tracking_adam"),
    ],
)
def test_a_specs_name_and_its_start_free_form_keep_the_schedule_and_held_out_mark(spec, start_free):
    from benchmarks.specs import spec_name, without_start

    assert spec_name(spec) == "slope_tracking_adam"
    assert without_start(spec) == start_free


def test_a_hyphen_belongs_to_a_specs_name():
    from benchmarks.specs import spec_name

    assert spec_name("salsa-reference^heldout") == "salsa-reference"
    assert spec_name("adamw-fused-const@5e-5") == "adamw-fused-const"


def test_a_runs_steps_count_each_epochs_partial_last_batch():
    from benchmarks.quality import SETTINGS, most_steps, run_steps

    assert run_steps(2000, 16, 3) == 3 * 125
    assert run_steps(2001, 16, 3) == 3 * 126
    for setting, values in SETTINGS.items():  # a full DataLoader over the setting's examples
        loader = torch.utils.data.DataLoader(range(values["train_limit"]), values["batch_size"])
        assert most_steps(setting) == values["epochs"] * len(loader)


def test_a_spec_whose_package_is_missing_stops_the_benchmark_before_any_run(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from benchmarks import quality

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # prodigyopt not installed (CI installs lsframe without [bench])
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prodigyopt" else real_find_spec(name, *a),
    )
    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    argv.insert(argv.index("--no-schedulefree"), "prodigy")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=r"'prodigy' needs the package 'prodigyopt': .*\[bench\]"):
        quality.main()
    assert not out.with_suffix(".runs.jsonl").exists()  # the AdamW run before it did not start
    from benchmarks.specs import check_installed

    with pytest.raises(SystemExit, match="'prodigy\\^heldout' needs the package 'prodigyopt'"):
        check_installed(["adamw@1e-4^heldout", "prodigy^heldout"])  # a held-out pilot's row


def test_quality_runs_in_bf16_are_logged_apart_and_their_table_says_so(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    from benchmarks import quality

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    monkeypatch.setattr(sys, "argv", [*argv, "--bf16"])
    quality.main()
    monkeypatch.setattr(sys, "argv", argv)  # fp32: the bf16 run is not reused
    quality.main()
    logged = [json.loads(line) for line in out.with_suffix(".runs.jsonl").read_text().splitlines()]
    assert [r["bf16"] for r in logged] == [True, False]
    assert logged[0]["train_loss"] != logged[1]["train_loss"]  # bf16 rounding: another run
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["bf16"] for r in result["rows"]] == [False] and "; fp32;" in result["meta"]
    monkeypatch.setattr(sys, "argv", [*argv, "--bf16", "--table-only"])
    quality.main()
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["bf16"] for r in result["rows"]] == [True] and "bf16 autocast" in result["meta"]


def test_a_table_regenerated_elsewhere_names_the_machines_and_torch_versions_that_ran_its_runs(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    import torch

    from benchmarks import quality
    from benchmarks.common import machine

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    log = out.with_suffix(".runs.jsonl")
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["machine"] == machine("cpu") and row["torch"] == torch.__version__
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert f"device {machine('cpu')} (1 run)" in meta
    assert f"torch {torch.__version__} (1 run)." in meta
    # the same run as if another machine had logged it, and one from before machines were logged
    older = {k: v for k, v in row.items() if k not in ("machine", "torch")} | {"seed": 1}
    rows = [row | {"machine": "cpu: elsewhere", "torch": "2.11.0+cu130"}, older]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "0", "1", "--table-only"])
    quality.main()
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert "device cpu: elsewhere (1 run); not logged (1 run)," in meta
    assert "torch 2.11.0+cu130 (1 run); not logged (1 run)." in meta
    assert machine("cpu") not in meta and torch.__version__ not in meta


def test_a_quality_run_logs_each_steps_loss_the_ones_its_train_loss_averages(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    from benchmarks import quality

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    argv[argv.index("--train-limit") + 1] = "20"  # 5 steps of 4: the tail is the last one
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    (row,) = [json.loads(line) for line in out.with_suffix(".runs.jsonl").read_text().splitlines()]
    losses = row["per_step"]["loss"]
    assert len(losses) == len(row["per_step"]["step_size"]["0"]) == 5
    assert len(set(losses)) == 5 and all(0.0 < x < 5.0 for x in losses)
    assert losses[-1] == pytest.approx(row["train_loss"], rel=1e-3)  # 4 digits kept


def test_a_held_out_task_without_a_training_set_trains_and_evaluates_on_disjoint_dev_rows():
    from benchmarks.common import DEV_SPLIT, GLUE_DIR, glue_examples
    from lsframe.data.glue import glue_task, read_glue_tsv

    whole = read_glue_tsv(GLUE_DIR / "QNLI" / "dev.tsv", glue_task("qnli"))
    train, dev = glue_examples("qnli", "train"), glue_examples("qnli", "dev")
    assert len(train.text) == DEV_SPLIT["qnli"] == 2000
    assert train.text + dev.text == whole.text and train.labels + dev.labels == whole.labels
    assert train.text_pair + dev.text_pair == whole.text_pair
    assert glue_examples("qnli", "train", 500).text == train.text[:500]
    with pytest.raises(SystemExit, match="first 2000 of its dev.tsv"):
        glue_examples("qnli", "train", 2001)


def test_a_run_log_cut_short_resumes_and_a_bad_line_elsewhere_names_its_line(tmp_path, capsys):
    from benchmarks.common import append_run, read_run_log

    log = tmp_path / "x.runs.jsonl"
    log.write_text('{"optimizer": "a", "seed": 0}\n{"optimizer": "b", "se')  # killed mid-write
    assert read_run_log(log) == [{"optimizer": "a", "seed": 0}]
    assert "x.runs.jsonl:2: a cut-short last line, left out" in capsys.readouterr().out
    append_run(log, {"optimizer": "c", "seed": 1}, device="cpu")  # on a line of its own
    assert [r["optimizer"] for r in read_run_log(log)] == ["a", "c"]
    log.write_text('{"optimizer": "a"}\nnot json\n{"optimizer": "b"}\n')
    with pytest.raises(SystemExit, match=r"x.runs.jsonl:2: not a JSON row"):
        read_run_log(log)


def test_benchmark_arguments_are_refused_in_one_line_before_anything_loads():
    import argparse

    from benchmarks.common import positive_int
    from benchmarks.specs import check_specs

    assert positive_int("3") == 3
    for bad in ("0", "-5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer >= 1"):
            positive_int(bad)
    check_specs(["adamw@5e-5", "slope_tracking_adam", "adamw@1e-4^late_half"])
    for spec, message in (("bogus", "unknown optimizer spec"), ("adamw@abc", "could not convert")):
        with pytest.raises(SystemExit, match=f"optimizer spec '{spec}': {message}"):
            check_specs([spec])


def test_a_quality_table_holds_what_another_invocation_logged_meanwhile_and_no_other_tasks(
    minilm, shared_data, tmp_path, monkeypatch
):
    # the task was no logged setting (an MRPC table showed RTE's runs), and the table was built
    # from the log as it stood at the start (two invocations at once each dropped the other's)
    import json
    import sys

    from benchmarks import quality
    from benchmarks.common import append_run

    out = tmp_path / "quality_rte"
    log = tmp_path / "quality_rte.runs.jsonl"
    tiny = {"train_limit": 8, "batch_size": 4, "epochs": 1, "max_length": 32, "bf16": False}
    append_run(log, {**row("adamw@1e-5", 0, 0.9), **tiny, "task": "mrpc"}, device="cpu")

    def one_run(spec, seed, args, *data):
        meanwhile = {**row("adamw@5e-5", seed, 0.6), **quality.run_settings(args)}
        append_run(args.log, meanwhile, device="cpu")  # another invocation's run
        made = {**row(spec, seed, 0.55), **quality.run_settings(args)}
        append_run(args.log, made, device="cpu")
        return made

    monkeypatch.setattr(quality, "one_run", one_run)
    monkeypatch.setattr(sys, "argv", tiny_quality_argv(out))
    quality.main()
    result = json.loads((tmp_path / "quality_rte.json").read_text())
    assert sorted(r["optimizer"] for r in result["rows"]) == ["adamw@1e-4", "adamw@5e-5"]


def test_a_logs_last_row_without_a_newline_is_kept_and_the_next_row_starts_a_line(tmp_path):
    from benchmarks.common import append_run, read_run_log

    log = tmp_path / "x.runs.jsonl"
    log.write_text('{"optimizer": "a", "seed": 0}\n{"optimizer": "b", "seed": 0}')  # by hand
    append_run(log, {"optimizer": "c", "seed": 1}, device="cpu")
    assert [r["optimizer"] for r in read_run_log(log)] == ["a", "b", "c"]


def test_an_out_with_dots_keeps_its_own_log_and_tables():
    from pathlib import Path

    from benchmarks.common import beside

    assert beside(Path("r/q_v1.1"), ".runs.jsonl") == Path("r/q_v1.1.runs.jsonl")
    assert beside(Path("r/q_v1.1"), ".md") != beside(Path("r/q_v1.2"), ".md")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("adamw+robust@1e-4", "adamw takes no preset"),
        ("adamw@inf", "lr must be a positive finite number"),
        ("adamw@0", "lr must be a positive finite number"),
        ("adamw", "adamw needs a learning rate"),
        ("salsa^late_half", r"\^late_half needs a schedule"),
    ],
)
def test_a_spec_part_that_would_be_ignored_or_fail_later_is_refused_before_any_run(spec, message):
    from benchmarks.specs import check_specs

    with pytest.raises(SystemExit, match=f"optimizer spec '{re.escape(spec)}': {message}"):
        check_specs([spec])


def test_a_setting_refuses_an_explicit_value_it_fixes(tmp_path, monkeypatch, capsys):
    import sys

    from benchmarks import quality

    argv = ["quality", "--setting", "S", "--task", "rte", "--train-limit", "64", "--table-only"]
    argv += ["--out", str(tmp_path / "quality_s_rte")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        quality.main()
    assert "--setting S fixes --train-limit to 500, got 64" in capsys.readouterr().err


def test_readmes_quality_tables_are_the_summarys_tables():
    # nothing compared README's figures with the tables they come from (review Z)
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    results = root / "benchmarks" / "results"

    def tables(name: str) -> list[str]:
        text = (results / name).read_text()
        return [block.strip() for block in text.split("\n\n") if block.startswith("|")]

    bar, peers, presets, *per_task = tables("quality_summary_cpu.md")
    for table in (bar, peers, presets):  # README shows the per-task preset tables' overview
        assert table in readme, table.splitlines()[0]
    (gpu,) = tables("quality_summary_bf16_gpu.md")
    for line in gpu.splitlines()[2:]:  # README leaves out the columns not run on the GPU
        cells = [cell for cell in line.split(" | ") if cell != "–"]
        assert " | ".join(cells) in readme, line
