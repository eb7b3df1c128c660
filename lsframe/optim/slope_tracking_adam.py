"""SlopeTrackingAdam: Adam whose step size follows the next batch's slope along the last step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from lsframe.optim._alignment import (
    MEASURES,
    batched_direction_sums,
    batched_on,
    direction_scale,
    one_pass_direction_sums,
    step_alignment,
)
from lsframe.optim._blocked import blocked_on
from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim._sharded import local
from lsframe.optim._slope_rule import (
    RULE_KEYS,
    check_rule_group,
    limited_step_size,
    step_size_change,
)
from lsframe.optim.adam_moments import (
    adam_directions,
    check_adam_group,
    cohorts,
    compiled_adam_step,
    next_moment_step,
    one_pass_adam_step,
)
from lsframe.optim.rules import ActiveGroup
from lsframe.optim.run_length import long_run_start
from lsframe.validation import (
    as_tuple,
    check_int_at_least,
)


class SlopeTrackingAdam(LineSearchOptimizer):
    """lsframe's learning-rate-free default: Adam's direction, a step size that tracks the zero of
    the expected loss's slope along the steps it takes, and no forward trial.

    The rule, per step ``t`` (``η`` is one step size for all groups; a group's ``lr_multiplier``
    scales it):

    1. the **step alignment** ``a_t = ⟨g_t, d_{t−1}⟩`` (``alignment_measure="slope"``, the
       default; ``"cosine"``: ``cos(g_t, d_{t−1})``, :func:`step_alignment`): this batch's
       gradient against the last step's direction. On a fresh batch it estimates the sign of the
       expected loss's slope along the last step: positive means the step was too short, negative
       that it overshot. It is the test of a stochastic line search on the expected loss, where
       Armijo on the batch that chose the direction accepts 8–25× the step that generalises on a
       short fine-tune (../specs/LINESEARCH-NOTES). The slope lets a steep batch count more than
       a flat one: a batch after an overshoot is steep;
    2. two signal-to-noise ratios clipped to [−1, 1], ``z_fast = ā_fast / √s̄`` and
       ``z_slow = ā_slow / √s̄``: bias-corrected moving averages of ``a`` over a short and a
       longer horizon, over the root mean square of ``a`` (``alignment_betas``: fast, slow,
       square);
    3. ``η ← η · max_change^e``. With ``combine_horizons="significant"`` (the default),
       ``e = min(z_fast, z_slow)`` once ``|z_slow|`` is at least ``SIGNIFICANCE`` (2) standard
       errors of pure noise (:func:`~lsframe.optim._alignment.noise_level`), else 0: a
       two-sided test at about 5 % that the slope along the steps is not 0. Under noise η
       moves on about one step in twenty instead of drifting; once there is a signal, η grows
       only while both horizons say the steps are too short and falls as soon as either says
       they overshoot. ``"min"`` (the
       defaults until 2026-12, preset ``earlier_defaults``) takes the minimum on every step:
       under noise it is negative on average, so η decays on its own, and over long runs it
       decays to nothing (below). ``"agree"`` moves η by ``z_slow`` only while both scores have
       the same sign and holds it otherwise (no drift under noise); ``"agree_else_min"``
       follows ``z_slow`` while both agree and brakes with the lower score when they do not (a
       third of the minimum's drift). With ``cap_at_fresh_peak=True`` (the default), from the
       second pass over a finite training set on (:meth:`start_pass`), η may grow, but not
       above the largest η of the first pass: once the batches repeat, a positive alignment
       rewards fitting them. ``grow_on_repeats=False`` stops growth on repeats altogether.
       ``gain_decay`` (off) divides the exponent by ``√(1 + k)``, ``k`` the sign changes of
       ``ā_slow`` (Kesten's rule: η then freezes instead of decaying). With
       ``hold_while_warming=True`` (the default since 2026-12-04) an alignment that judges a
       step taken while a schedule was still raising the multiplier (a warmup:
       ``lr_multiplier`` rose from that step to this one) is left out of the averages and η
       holds: such a step is short on purpose, and its "too short" says nothing about η. The
       averages then begin with the first step taken at the schedule's peak. With
       ``burn_in=True`` (the default since 2026-12-04) η may fall from the first alignment but
       not grow until 29 alignments have been averaged (:func:`burn_in_length` at β = 0.9,
       when the first one weighs about 5 % of the newest): a fine-tune's first steps are a
       transient in which the slope's scale grows and every step looks too short;
    4. Adam's update ``x ← x − η · multiplier · m̂ / (√v̂ + ε)`` and decoupled weight decay.

    The start: ``η`` starts at ``lr`` (1e-4, the top of the usual fine-tuning grid of
    1e-5–1e-4: Adam moves no weight by much more than η per step) on runs of up to
    ``long_run_steps`` (375) steps, and a run of ``T`` steps beyond at ``lr · √(375 / T)`` (the
    fixed-horizon rule; 6.1e-5 at 1,000 steps; since 2026-12-05). It changes by at most
    ``max_change`` per step, so it can neither jump to a step that destroys a pretrained model
    nor stay inert. Pair it with the usual fine-tuning schedule of the multiplier, a 10 %
    linear warmup and a cosine to 0 (:class:`~lsframe.optim.StepSizeSchedule` around
    ``WarmupCosineLR(warmup_ratio=0.1)``, as ``configs/optimizers/slope_tracking_adam.yaml``
    does; with Trainer, ``"cosine"`` and ``warmup_steps=0.1``, or ``warmup_ratio=0.1`` before
    transformers 5): every figure of these defaults was measured with it (the spec
    ``benchmarks.specs.DEFAULT``). Without a warmup the hold never acts and the burn-in alone
    guards the first steps.

    Failure modes (docs/default_optimizer.md): the test fires rarely, so at fine-tuning lengths
    (80–375 steps) these defaults are mostly AdamW at 1e-4 with 10 % warmup and a cosine (in the
    18 quality runs of setting S and of SST-2 in M, η stayed within 7 % of 1e-4). Where a task
    wants a smaller step (RTE in M, best at 5e-5) η comes down late, from step 64 or later;
    once the test fires it can take η well below the best AdamW peak (MRPC over 1,000 steps:
    to 1e-5). The run's length reaches the start only through :meth:`set_run_length`: without
    the call (a plain loop) every run starts at ``lr``. With ``"min"`` η decays without a
    floor. lsframe's modules and ``LineSearchTrainer`` call :meth:`start_pass` at each epoch; a
    plain loop calls it itself (without it every batch counts as fresh and the cap never acts).

    Cost: no extra forward and no parameter copy; one more read of ``g``, ``m`` and ``v`` and
    three inner products in one host sync per step. On CPU the sums run cache-blocked and the
    step in torch's fused AdamW kernel: 0.97× ``AdamW(foreach=True)``'s step time over 1,000
    steps on MiniLM-L6, 1.05× on a 2-layer BERT of width 128, the same peak memory; on CUDA the
    float32 sums are batched across the tensors (untimed on a GPU); ``fused=True`` runs two
    compiled kernels per tensor (docs/default_optimizer.md, Cost). It takes lsframe's closure, a
    torch-style closure, or none (``step()`` after the caller's own backward).

    Args:
        params: Parameters or param groups.
        lr: Initial step size η0. Default: 1e-4.
        betas: Adam's (β1, β2). Default: (0.9, 0.999).
        eps: Adam's ε. Default: 1e-8.
        max_change: Largest factor by which η changes in one step. Default: 1.2.
        alignment_betas: Averaging of the alignment over a short and a longer horizon, and of
            its square. Default: (0.5, 0.9, 0.99). Equal first two: one horizon.
        combine_horizons: ``"min"``: the exponent is ``min(z_fast, z_slow)``; ``"agree"``: it is
            ``z_slow`` when both have the same sign, else 0; ``"agree_else_min"``: ``z_slow`` when
            both have the same sign, else ``min(z_fast, z_slow)``; ``"significant"``: the
            minimum once ``|z_slow|`` clears two standard errors of noise, else 0.
            Default: ``"significant"``.
        gain_decay: Kesten's rule: divide the exponent by √(1 + sign changes). Default: False.
        min_step_size: Floor on η. Default: 0.
        max_step_size: Ceiling on η, at least ``lr`` (``None``: none). With ``lr`` equal to it,
            η starts at the ceiling and the alignment can only bring it down and back up to
            it (the preset ``from_top``: 1e-4, the top of the usual fine-tuning grid). Default:
            None.
        grow_on_repeats: Let η grow on the batches of a second or later pass too. Default: True.
        cap_at_fresh_peak: From the second pass on, η may grow back but not above the largest
            η of the first pass. Default: True.
        alignment_stride: The foreach kernels compute the alignment from every k-th row of
            each matrix with at least k rows, moving by one row each step, scaled to the whole
            (:func:`step_alignment`): about 1/k of the rule's memory traffic. 1 reads every
            entry, cache-blocked on CPU, which is cheaper there than any stride; ``fused=True``
            always reads every entry. Default: 1.
        alignment_measure: ``"cosine"``: the rule averages ``cos(g_t, d_{t−1})``;
            ``"slope"``: it averages the slope ``⟨g_t, d_{t−1}⟩`` itself, so a steep batch
            counts more than a flat one. The z-scores divide by the root mean square, so a
            constant scale cancels; a scale that drifts does not (the square's average, β = 0.99,
            remembers large slopes for about 100 steps and mutes the scores meanwhile).
            Default: ``"slope"``.
        weight_decay: Decoupled weight decay. Default: 0.
        hold_while_warming: Leave out of the averages, and hold η on, the alignments of steps
            taken while a schedule raised ``lr_multiplier`` (a warmup). Default: True.
        burn_in: No growth of η before :func:`burn_in_length` alignments. Default: True.
        long_run_steps: A run of ``T`` optimizer steps longer than this starts at
            ``lr · √(long_run_steps / T)`` (:func:`~lsframe.optim.long_run_start`; ``T`` from
            :meth:`set_run_length`, which lsframe's modules, ``LineSearchTrainer`` and the
            benchmarks call). ``None``: every run starts at ``lr``. Default: 375 (setting M's
            run length, the longest at which the 1e-4 start was measured against the AdamW
            grid).
        fused: Run the rule as compiled one-pass kernels (``torch.compile``). Default: False.
            Like every hyperparameter it is saved in the param groups: a loaded state dict
            brings its own (as with torch's ``Adam(fused=...)``).
    """

    ADAM_MOMENTS = True

    ONE_SEARCH_KEYS = (
        *LineSearchOptimizer.ONE_SEARCH_KEYS,
        *RULE_KEYS,
        "alignment_stride",
        "fused",
        "long_run_steps",
    )

    forward_trials = False

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_change: float = 1.2,
        alignment_betas: tuple[float, float, float] = (0.5, 0.9, 0.99),
        combine_horizons: str = "significant",
        gain_decay: bool = False,
        min_step_size: float = 0.0,
        max_step_size: float | None = None,
        grow_on_repeats: bool = True,
        cap_at_fresh_peak: bool = True,
        alignment_stride: int = 1,
        alignment_measure: str = "slope",
        weight_decay: float = 0.0,
        hold_while_warming: bool = True,
        burn_in: bool = True,
        long_run_steps: int | None = 375,
        fused: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=as_tuple(betas),
            eps=eps,
            max_change=max_change,
            alignment_betas=as_tuple(alignment_betas),
            combine_horizons=combine_horizons,
            gain_decay=gain_decay,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
            grow_on_repeats=grow_on_repeats,
            cap_at_fresh_peak=cap_at_fresh_peak,
            alignment_stride=alignment_stride,
            alignment_measure=alignment_measure,
            weight_decay=weight_decay,
            hold_while_warming=hold_while_warming,
            burn_in=burn_in,
            long_run_steps=long_run_steps,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_adam_group(group)
        check_rule_group(group)

    def _initial_search_state(self) -> dict[str, Any]:
        return {
            **super()._initial_search_state(),
            "alignment": None,
            "avg_alignment_fast": 0.0,
            "avg_alignment": 0.0,
            "avg_alignment_sq": 0.0,
            "alignments": 0,
            "sign_changes": 0,
            "last_sign": 0,
            "data_pass": 0,
            "fresh_peak": 0.0,
            # a list from the start: torch.distributed.checkpoint's full-state load merges
            # the saved state into the fresh one element by element
            "multipliers": [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then make the loaded rule (:data:`RULE_KEYS`) the default of
        groups added later: a run saved under other defaults resumes with its own rule, and a
        group added afterwards (gradual unfreezing) joins it."""
        super().load_state_dict(state_dict)
        if self.param_groups:
            self.defaults.update({key: self.param_groups[0][key] for key in RULE_KEYS})

    def start_pass(self, index: int) -> None:
        """Say that pass ``index`` (0: the first) over a finite training set begins.

        From pass 1 on, the batches have been seen before, so a positive alignment no longer
        says the step was too short for the expected loss: with ``grow_on_repeats=False`` η may
        then still fall but not grow. Call it at the start of every epoch, with the epoch's
        index (idempotent; saved in ``state_dict``); a stream that never repeats needs no call.
        """
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"start_pass: index must be an int >= 0, got {index!r}")
        self.search_state["data_pass"] = index

    @property
    def needs_run_length(self) -> bool:
        """Whether the start depends on the run's length (``long_run_steps`` is set)."""
        return self.shared("long_run_steps") is not None

    def set_run_length(self, total_steps: int) -> None:
        """Say the run takes ``total_steps`` optimizer steps. With ``long_run_steps`` set and
        before the first step, each group's η starts at :func:`long_run_start` of its own start,
        but not below its ``min_step_size`` (η would jump to the floor at its first update);
        idempotent. After the first step (a resumed run, a second call) η is left as it is."""
        check_int_at_least(1, total_steps=total_steps)
        rule = self.shared("long_run_steps")
        if rule is None or self.search_state["step"] > 0:
            return
        for group in self.param_groups:
            start = group.setdefault("unscaled_initial_step_size", group["initial_step_size"])
            group["step_size"] = group["initial_step_size"] = max(
                long_run_start(start, rule, total_steps), group["min_step_size"]
            )
        self._write_lr()

    def _one_pass(self, grads: list[Tensor]) -> str | None:
        """The kernels of this step's sums: ``"fused"`` (compiled), ``"blocked"`` (eager, on
        CPU: :mod:`lsframe.optim._blocked`), ``"batched"`` (foreach across the tensors: float32
        elsewhere, as on CUDA), or None (a loop over the tensors: strided rows, other dtypes,
        sharded tensors)."""
        if self.shared("fused"):
            return "fused"
        if self.shared("alignment_stride") != 1:
            return None
        if blocked_on([local(g) for g in grads]):
            return "blocked"
        return "batched" if batched_on(grads) else None

    def _gradients_finite(self, groups: list[ActiveGroup], grads: list[Tensor]) -> bool:
        self._kernels = self._one_pass(grads)
        self._cohorts = cohorts(self.state, groups, self.search_state.get("moment_step", 0))
        finite = self._finite(groups, grads)
        if not finite:  # no step: let go of this step's gradients (see _line_search_step)
            self._cohorts = self._sums = None
        return finite

    def _finite(self, groups: list[ActiveGroup], grads: list[Tensor]) -> bool:
        if self._kernels is None:
            return super()._gradients_finite(groups, grads)
        # the alignment's pass also tells whether the gradients are finite
        if self._kernels == "batched":
            sums = batched_direction_sums(self.state, self._cohorts)
        else:
            sums = one_pass_direction_sums(self.state, self._cohorts, self._kernels == "blocked")
        self._sums = sums
        if self._kernels == "fused":
            return sum(group_sums[3] for group_sums in sums) == 0
        # a finite ‖g‖² proves every entry finite; a non-finite one may be an overflow
        finite = all(math.isfinite(group_sums[1]) for group_sums in sums)
        return finite or super()._gradients_finite(groups, grads)

    _record_keys = {"alignment": None}  # the slope along the last step; None on a rejected one

    def _line_search_step(
        self, loss: float | None, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        rule = {key: self.shared(key) for key in RULE_KEYS}
        eta = self.param_groups[0]["step_size"]
        # the cohorts hold this step's gradients: kept past the step, they would stay alive
        # through the next backward (a whole gradient's memory on top of the peak)
        last, pairs, self._cohorts = state.get("moment_step", 0), self._cohorts, None
        if self._kernels is not None:
            scales = [direction_scale(active, count) for active, count in pairs if active.params]
            sums, self._sums = self._sums, None  # this step's, read once
            measure = MEASURES[rule["alignment_measure"]]
            alignment = measure(sums, scales) if last else None
        else:
            stride, measure = rule["alignment_stride"], rule["alignment_measure"]
            alignment = step_alignment(self.state, pairs, last, stride, measure) if last else None
        state["alignment"] = alignment
        # an alignment that judges a step short on purpose (a warmup) is not averaged: η holds
        warming = self._warming(rule["hold_while_warming"])
        if alignment is not None and not warming:
            change = step_size_change(state, alignment, rule)
            eta = limited_step_size(state, eta, eta * change, rule)
        if state["data_pass"] == 0:
            state["fresh_peak"] = max(state["fresh_peak"], eta)
        if self._kernels in ("blocked", "fused"):  # moments, update and weight decay in one pass
            next_moment_step(state)
            if self._kernels == "blocked":
                one_pass_adam_step(self.state, pairs, eta)
            else:
                compiled_adam_step(self.state, pairs, eta)
            self._decay_applied = True
        else:
            adam = adam_directions(self.state, groups, next_moment_step(state))
            adam.update().move(groups, [eta] * len(groups))
        self._set_step_sizes(eta)
        record = self.last_step
        if record is not None:
            record["alignment"] = alignment

    def _warming(self, hold: bool) -> bool:
        """With ``hold``, whether a group's ``lr_multiplier`` rose since the last step (the step
        this step's alignment judges was taken under a warmup); the multipliers are recorded
        either way, so the option may be switched on mid-run."""
        now = [float(group["lr_multiplier"]) for group in self.param_groups]
        last, self.search_state["multipliers"] = self.search_state["multipliers"], now
        if not hold or not last or len(last) != len(now):  # None: saved before 2026-12-07
            return False
        return any(b > a for a, b in zip(last, now))
