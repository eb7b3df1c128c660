"""The first-pass loss trend read from the quality benchmark's run logs."""

from __future__ import annotations

import json
import math
import random

import pytest

from benchmarks.first_pass_losses import first_pass, loss_trend, rows_for


def test_the_trend_recovers_a_known_fall_and_its_noise():
    rng = random.Random(0)
    n, slope, sd = 400, -0.001, 0.05
    trend = loss_trend([0.7 + slope * x + rng.gauss(0.0, sd) for x in range(n)])
    assert trend["fall"] == pytest.approx(-slope * n, abs=3 * trend["fall_se"])
    assert trend["sd"] == pytest.approx(sd, rel=0.15)
    assert trend["t"] < -5  # falling losses give a negative slope
    assert trend["upper"] == pytest.approx(trend["fall"] + 1.645 * trend["fall_se"])


def test_the_standard_error_shrinks_as_the_square_root_of_n_cubed():
    # the slope's se is sd / sqrt(sum (x - mean)^2) ~ sd * sqrt(12 / n^3); the fall's is n times it
    def alternating(n: int) -> list[float]:
        return [0.69 + (0.01 if x % 2 else -0.01) for x in range(n)]

    short, long = loss_trend(alternating(16)), loss_trend(alternating(128))
    assert short["fall_se"] / long["fall_se"] == pytest.approx(math.sqrt(128 / 16), rel=0.1)


def test_a_rising_loss_has_a_positive_t_and_a_negative_fall():
    trend = loss_trend([0.5, 0.6, 0.65, 0.8, 0.85])
    assert trend["t"] > 0 and trend["fall"] < 0


def test_a_flat_loss_has_no_trend_and_too_few_losses_are_refused():
    assert loss_trend([0.69] * 10)["t"] == 0.0
    with pytest.raises(ValueError, match="3 losses"):
        loss_trend([0.69, 0.7])


def test_the_first_pass_is_the_first_share_of_the_steps_per_pass(tmp_path):
    run = {"optimizer": "adamw@1e-4", "seed": 3, "epochs": 3, "acc": 0.6}
    run["per_step"] = {"loss": {"0": [float(x) for x in range(12)]}}
    assert first_pass(run) == [0.0, 1.0, 2.0, 3.0]
    (tmp_path / "quality_m_rte_cpu.runs.jsonl").write_text(
        json.dumps(run) + "\n" + json.dumps({**run, "per_step": {"step_size": {}}}) + "\n"
    )
    rows = rows_for("M", "rte", tmp_path)
    assert [(r["seed"], r["steps"], r["fall"]) for r in rows] == [
        (3, 4, pytest.approx(-4.0))
    ]  # -slope * n
