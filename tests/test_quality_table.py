"""The quality benchmark's table (``benchmarks.quality.summarise`` and ``table_lines``): paired
differences against the best AdamW grid point, the learning seeds, and a table before any grid
point is logged; its step-size plots, and README's tables made from it."""

from __future__ import annotations

import math

import pytest
from quality_helpers import row

from benchmarks.quality import summarise, table_lines


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
