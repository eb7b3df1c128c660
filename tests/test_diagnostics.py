"""Per-step line-search diagnostics: ``optimizer.last_step``, the module's and Trainer's logs, the
benchmarks' ``per_step`` columns (synthetic problems: maths only)."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyRegression, loader, trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from benchmarks.common import StepDiagnostics
from lsframe import optim
from lsframe.optim import PLASLS, SGDSLS, AdamSLS, SaLSA, WarmupCosineLR
from lsframe.optim._linesearch import sufficient_decrease_ratio


def problem(seed: int = 0, groups: int = 1) -> tuple[nn.Module, Tensor, Tensor]:
    """Least squares on a float64 linear model (exact enough to recompute losses)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(6, 1, generator=generator, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(groups - 1)], nn.Linear(6, 1))
    return model.double(), x, y


class Closure:
    """lsframe's closure contract on ``problem``; counts forward-only evaluations; ``trial_shift``
    is added to every forward-only loss (a positive shift makes every trial fail)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, trial_shift: float = 0.0) -> None:
        self.model, self.x, self.y, self.trial_shift = model, x, y, trial_shift
        self.forward_only = 0

    def loss(self) -> Tensor:
        return nn.functional.mse_loss(self.model(self.x), self.y)

    def __call__(self, backward: bool = True) -> Tensor:
        if not backward:
            self.forward_only += 1
            with torch.no_grad():
                return self.loss() + self.trial_shift
        self.model.zero_grad()
        loss = self.loss()
        loss.backward()
        return loss.detach()


def fresh_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x), y))


def squared_gradient_norm(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    return float(sum((p.grad**2).sum() for p in model.parameters()))


def test_sgdsls_ratio_is_the_fresh_decrease_over_step_size_times_the_squared_gradient_norm():
    model, x, y = problem()
    opt = SGDSLS(model.parameters())
    closure = Closure(model, x, y)
    for _ in range(4):
        before = fresh_loss(model, x, y)
        slope = squared_gradient_norm(model, x, y)  # Armijo along d = g: s = ⟨g, g⟩ at x
        opt.step(closure)
        after = fresh_loss(model, x, y)  # the accepted trial point is the step (no weight decay)
        record = opt.last_step
        assert record["accepted"] and record["searched"] and not record["failed"]
        eta = record["step_sizes"][0]
        ratio = record["sufficient_decrease_ratio"]
        assert ratio == pytest.approx((before - after) / (eta * slope), rel=1e-6)
        assert ratio >= opt.param_groups[0]["c"]  # plain Armijo accepts only ratios ≥ c


def test_salsa_ratio_is_the_averaged_decrease_over_step_size_times_the_averaged_slope():
    model, x, y = problem()
    opt = SaLSA(model.parameters())
    closure = Closure(model, x, y)
    for _ in range(4):
        opt.step(closure)
        record = opt.last_step
        assert record["accepted"] and record["searched"] and not record["failed"]
        state = opt.search_state  # D̄ and Ḡ with this step's averaged in
        eta = record["step_sizes"][0]
        ratio = record["sufficient_decrease_ratio"]
        assert ratio == pytest.approx(state["avg_decrease"] / (eta * state["avg_slope"]), rel=1e-9)
        assert ratio >= opt.param_groups[0]["c"]  # the smoothed condition accepts only these


def test_a_smoothed_rules_first_ratio_is_the_plain_rules_not_inflated_by_the_empty_average():
    # one step's decrease over Ḡ read 1/(1 − β_s) = 1000 times the ratio the rule tested
    ratios = []
    for smooth in (False, True):
        model, x, y = problem()
        opt = AdamSLS(model.parameters(), c=0.5, smooth=smooth)
        opt.step(Closure(model, x, y))
        assert opt.last_step["accepted"]
        ratios.append(opt.last_step["sufficient_decrease_ratio"])
    assert ratios[1] == pytest.approx(ratios[0], rel=1e-6) and ratios[0] >= 0.5


@pytest.mark.parametrize("name", optim.line_searches())
def test_trials_count_the_forward_only_evaluations_of_each_step(name: str):
    model, x, y = problem(groups=2)
    groups = [{"params": m.parameters(), "name": f"part{i}"} for i, m in enumerate(model)]
    opt = optim.create(name, groups)
    closure = Closure(model, x, y)
    for _ in range(5):
        forwards, seen = opt.search_state["forwards"], closure.forward_only
        opt.step(closure)
        trials = opt.last_step["trials"]
        assert trials == closure.forward_only - seen == opt.search_state["forwards"] - forwards
        assert (trials > 0) == opt.last_step["searched"]


def test_a_search_that_rejects_every_trial_is_failed_with_no_ratio():
    model, x, y = problem()
    opt = SGDSLS(model.parameters(), max_backtracks=3)
    closure = Closure(model, x, y, trial_shift=1.0)  # no trial ever decreases the loss
    failed_before = opt.search_state["failed_searches"]
    opt.step(closure)
    record = opt.last_step
    assert record["searched"] and record["failed"] and not record["accepted"]
    assert record["sufficient_decrease_ratio"] is None
    assert record["trials"] == 3
    assert opt.search_state["failed_searches"] == failed_before + 1


def test_amortised_salsa_steps_record_no_search_no_trials_and_no_ratio():
    model, x, y = problem()
    opt = SaLSA(model.parameters(), warmup_searches=2)
    closure = Closure(model, x, y)
    records = []
    for _ in range(30):
        opt.step(closure)
        records.append(opt.last_step)
        # a settled step size (both averages agree) spaces the searches max_gap steps apart
        opt.search_state["slow_step_size"] = opt.search_state["fast_step_size"]
    skipped = [r for r in records if not r["searched"]]
    assert skipped, "SaLSA amortised no search in 30 steps"
    assert all(r["trials"] == 0 and r["sufficient_decrease_ratio"] is None for r in skipped)
    assert all(not r["accepted"] and not r["failed"] for r in skipped)
    assert all(r["trials"] > 0 for r in records if r["searched"])


def test_a_non_finite_loss_is_recorded_as_a_rejected_step_without_a_search():
    model, x, y = problem()
    opt = SGDSLS(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda backward=True: torch.tensor(float("nan")))
    record = opt.last_step
    assert record["rejected"] and not record["searched"] and record["trials"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_record_gives_each_groups_step_size_and_stays_out_of_the_state_dict():
    model, x, y = problem(groups=2)
    groups = [{"params": m.parameters(), "name": f"part{i}"} for i, m in enumerate(model)]
    opt = PLASLS(groups, joint_steps=1)
    closure = Closure(model, x, y)
    for _ in range(3):
        opt.step(closure)
        assert opt.last_step["step_sizes"] == [g["step_size"] for g in opt.param_groups]
    saved = opt.state_dict()
    assert "last" not in repr(saved["state"]) and "sufficient_decrease_ratio" not in repr(saved)
    resumed = PLASLS([{"params": m.parameters()} for m in model], joint_steps=1)
    resumed.load_state_dict(saved)
    assert resumed.last_step is None  # a fresh object has taken no step yet


def test_the_ratio_is_none_when_the_rules_slope_is_zero():
    assert sufficient_decrease_ratio(0.0, 0.5, 0.0) is None
    assert sufficient_decrease_ratio(0.5, 0.5, 2.0) == pytest.approx(0.5)


def logged_rows(
    module: TinyRegression, folder: Path, key: str, n: int = 64, **settings
) -> tuple[pl.Trainer, list[dict]]:
    """Fit ``module`` on ``n`` examples (batch 4) with a CSV logger; the rows that log ``key``."""
    logger = CSVLogger(folder, name="run", version=0)
    fit = trainer(logger=logger, **settings)
    fit.fit(module, train_dataloaders=loader(n, 4))
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    return fit, [r for r in rows if r.get(key)]


def test_the_closure_module_logs_trials_failures_and_ratio_under_linesearch(tmp_path: Path):
    module = TinyRegression(optimizer=lambda p: SGDSLS(p))
    fit, rows = logged_rows(module, tmp_path, "linesearch/trials", max_steps=5, log_every_n_steps=1)
    assert len(rows) == 5
    for row in rows:  # one backward evaluation, the rest are the search's trials
        assert float(row["linesearch/trials"]) == float(row["train/closure_evals"]) - 1
        assert float(row["linesearch/sufficient_decrease_ratio"]) >= 0.1  # SGDSLS's c
    opt = fit.optimizers[0]
    assert float(rows[-1]["linesearch/failed_searches"]) == opt.search_state["failed_searches"]
    assert float(rows[-1]["linesearch/sufficient_decrease_ratio"]) == pytest.approx(
        opt.last_step["sufficient_decrease_ratio"], rel=1e-6
    )


def test_step_size_logs_the_lr_the_update_used_and_linesearch_step_size_the_searched_one(
    tmp_path: Path,
):
    schedule = partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda t: 0.5 ** (t + 1))
    module = TinyRegression(optimizer=lambda p: SGDSLS(p), lr_scheduler=schedule)
    _, rows = logged_rows(module, tmp_path, "step_size/all", max_steps=3, log_every_n_steps=1)
    assert len(rows) == 3
    for t, row in enumerate(rows):  # the multiplier the schedule set for step t
        searched = float(row["linesearch/step_size/all"])
        assert float(row["step_size/all"]) == pytest.approx(searched * 0.5 ** (t + 1), rel=1e-6)


def test_a_plasls_merge_step_logs_the_step_sizes_it_used_not_the_merged_mean(tmp_path: Path):
    # the merge after the update set the merged parts to their mean, which the logs showed as
    # the step (3 to 12 times off on a tiny BERT); a plain run's first step used the same sizes
    def plasls(merge_below):
        def create(groups):
            tensors = [p for group in groups for p in group["params"]]  # a part per tensor
            lrs = [0.01, 0.1, 0.05, 0.2]  # part p0 falls below 0.03 and joins p2
            parts = [{"params": [p], "name": f"p{i}", "lr": lrs[i]} for i, p in enumerate(tensors)]
            return PLASLS(parts, joint_steps=0, merge_below=merge_below)

        return create

    plain = trainer(max_steps=1)
    plain.fit(TinyRegression(optimizer=plasls(None)), train_dataloaders=loader(64, 4))
    used = plain.optimizers[0].param_groups
    merging = TinyRegression(optimizer=plasls(0.03))
    fit, rows = logged_rows(merging, tmp_path, "train/loss", max_steps=1, log_every_n_steps=1)
    merged = [group["step_size"] for group in fit.optimizers[0].param_groups]
    assert merged != [group["step_size"] for group in used]  # the setup: a merge took place
    for group in used:
        logged = float(rows[0][f"linesearch/step_size/{group['name']}"])
        assert logged == pytest.approx(group["step_size"], rel=1e-6)
        assert float(rows[0][f"step_size/{group['name']}"]) == pytest.approx(group["lr"], rel=1e-6)


def test_under_accumulation_each_optimizer_step_is_logged_once(tmp_path: Path):
    # Lightning logged the last step's values again on every micro-batch that took no step
    module = TinyRegression(optimizer=lambda p: SGDSLS(p), accumulate_grad_batches=5)
    key = "train/closure_evals"  # 12 batches: steps of 5, 5 and 2
    fit, rows = logged_rows(module, tmp_path, key, n=48, max_epochs=1, log_every_n_steps=1)
    assert fit.global_step == 3
    assert [int(r["step"]) for r in rows] == [4, 9, 11]  # the batch that took each step
    for row in rows:  # one evaluation (over the step's micro-batches) plus the trials
        assert float(row["train/closure_evals"]) == 1 + float(row["linesearch/trials"])
    # logging every 3 batches: each step once, at the first logging batch from its own on
    module = TinyRegression(optimizer=lambda p: SGDSLS(p), accumulate_grad_batches=5)
    _, rows = logged_rows(module, tmp_path / "every3", key, n=48, max_epochs=1, log_every_n_steps=3)
    steps = [int(r["step"]) for r in rows]
    # logging batches 2, 5, 8, 11: step 1 (batch 4) written at 5; step 2 (batch 9) would be
    # at 11, where step 3 (the epoch's last two batches) supersedes it, as sampling does
    assert steps == [5, 11]


class SettledStepSize(pl.Callback):
    """After each step, tell SaLSA its step size has settled: searches space out by max_gap."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        state = trainer.optimizers[0].search_state
        state["slow_step_size"] = state["fast_step_size"]


def test_a_step_without_a_search_logs_a_nan_ratio_not_the_last_searchs(tmp_path: Path):
    module = TinyRegression(optimizer=lambda p: SaLSA(p, warmup_searches=2))
    logger = CSVLogger(tmp_path, name="run", version=0)
    fit = trainer(max_steps=12, logger=logger, log_every_n_steps=1, callbacks=[SettledStepSize()])
    fit.fit(module, train_dataloaders=loader(64, 4))
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    rows = [r for r in rows if r.get("linesearch/trials")]
    searched = [r for r in rows if float(r["linesearch/trials"]) > 0]
    skipped = [r for r in rows if float(r["linesearch/trials"]) == 0]
    assert searched and skipped
    assert all(math.isfinite(float(r["linesearch/sufficient_decrease_ratio"])) for r in searched)
    assert all(math.isnan(float(r["linesearch/sufficient_decrease_ratio"])) for r in skipped)


class RecordAlignments(pl.Callback):
    def __init__(self) -> None:
        self.alignments: list[float | None] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self.alignments.append(trainer.optimizers[0].last_step["alignment"])


def test_the_default_optimizers_slope_is_logged_each_step_in_the_module_and_trainer(
    tmp_path: Path,
):
    # the statistic that moves SlopeTrackingAdam's step size was in no log: its trials, failures
    # and ratio are constant (0, 0, NaN)
    from lsframe.integrations.hf import step_size_logs
    from lsframe.optim import SlopeTrackingAdam

    record = RecordAlignments()
    module = TinyRegression(optimizer=lambda p: SlopeTrackingAdam(p))
    fit, rows = logged_rows(
        module, tmp_path, "train/loss", max_steps=4, log_every_n_steps=1, callbacks=[record]
    )
    logged = [float(row["linesearch/alignment"]) for row in rows]
    assert record.alignments[0] is None and math.isnan(logged[0])  # no last step to judge yet
    assert all(a is not None for a in record.alignments[1:])
    assert logged[1:] == pytest.approx(record.alignments[1:], rel=1e-6)
    logs = step_size_logs(fit.optimizers[0])
    assert logs["linesearch/alignment"] == record.alignments[-1]


def test_a_rejected_step_of_the_default_optimizer_logs_no_alignment_not_the_last_one(
    tmp_path: Path,
):
    # its record had no alignment key on a step the rule never reached: the log repeated the
    # last step's, and the benchmarks' column fell one entry short
    from lsframe.optim import SlopeTrackingAdam

    class NaNAtStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                batch[1].fill_(float("nan"))

    record = RecordAlignments()
    module = TinyRegression(optimizer=lambda p: SlopeTrackingAdam(p), nonfinite_loss="skip")
    _, rows = logged_rows(
        module,
        tmp_path,
        "train/loss",
        max_steps=4,
        log_every_n_steps=1,
        callbacks=[NaNAtStep(), record],
    )
    logged = [float(row["linesearch/alignment"]) for row in rows]
    assert record.alignments[2] is None and record.alignments[1] is not None
    assert math.isnan(logged[2]) and not math.isnan(logged[1])


def test_trainer_logs_carry_the_last_steps_diagnostics():
    pytest.importorskip("accelerate")
    from lsframe.integrations.hf import step_size_logs

    model, x, y = problem()
    opt = SGDSLS(model.parameters())
    opt.step(Closure(model, x, y))
    logs = step_size_logs(opt)
    assert logs["linesearch/trials"] == opt.last_step["trials"]
    assert (
        logs["linesearch/sufficient_decrease_ratio"] == opt.last_step["sufficient_decrease_ratio"]
    )
    assert logs["linesearch/failed_searches"] == opt.search_state["failed_searches"]


def test_benchmark_step_diagnostics_record_searches_and_adamws_scheduled_lr():
    model, x, y = problem()
    search, adamw = StepDiagnostics(), StepDiagnostics()
    opt = SGDSLS(model.parameters())
    closure = Closure(model, x, y)
    for _ in range(3):
        opt.step(closure)
        search.add(opt)
    assert search.columns["trials"][-1] == opt.last_step["trials"]
    assert search.columns["step_size"]["0"][-1] == pytest.approx(
        opt.param_groups[0]["step_size"], rel=1e-3
    )
    assert len(search.columns["ratio"]) == len(search.columns["searched"]) == 3
    other = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = WarmupCosineLR(other, total_steps=10)
    used = []
    for _ in range(4):
        closure()
        other.step()
        adamw.add(other)  # before the scheduler steps: the lr this step used
        used.append(other.param_groups[0]["lr"])
        schedule.step()
    assert adamw.columns["step_size"]["0"] == pytest.approx(used, rel=1e-3)
    assert "trials" not in adamw.columns
