"""The base of every line-search optimizer: the step protocol, hyperparameters, counters.

A line-search optimizer is a :class:`torch.optim.Optimizer` whose ``step`` takes the closure
contract of lsframe, ``closure(backward: bool = True) -> Tensor``, and optionally a separate
forward-only callable (Lightning's precision plugin wraps the closure and calls it without
arguments, so :class:`lsframe.modules.ClosureModule` passes forward-only trials as ``forward``).
Without ``forward``, a closure that takes no ``backward`` argument (torch-style, as for LBFGS) is
refused before anything is evaluated, with :class:`lsframe.optim.closure.ClosureContractError`
stating the contract (:func:`lsframe.optim.make_closure` builds the closure in a plain loop,
:mod:`lsframe.integrations.hf` in Hugging Face ``Trainer``).
Each optimizer subclasses :class:`LineSearchOptimizer` directly, implements
:meth:`~LineSearchOptimizer._line_search_step` from the rules in :mod:`lsframe.optim.rules` (and
Adam's moments from :mod:`lsframe.optim.adam_moments`), and lists its hyperparameter checks in
:meth:`~LineSearchOptimizer._check_group`.

Shared by all:

* **Hyperparameters live in the groups** (torch's ``defaults``): per group, saved by
  ``state_dict``, and backfilled from ``defaults`` when an older state dict lacks one. A value a
  joint search uses for several groups at once (``c`` of a search over all groups) must agree
  across them (:meth:`~LineSearchOptimizer.shared`).
* **The step size has one home**, the group's ``step_size``: the step taken in the last step
  (``initial_step_size`` keeps η0). ``lr_multiplier`` (default 1; a schedule acts here, see
  :class:`StepSizeSchedule`) scales it, and ``lr = step_size · lr_multiplier`` is written after
  every step so LR monitors see the step actually taken. Writing ``lr`` from outside (a torch
  scheduler attached directly) is detected at the next step and is an error, never a silent
  overwrite of the search.
* **One place counts searches**: :meth:`~LineSearchOptimizer._search`. Counters live in
  ``state["line_search"]``: ``step``, ``forwards`` (trial evaluations), ``searches``,
  ``failed_searches``, ``rejected_steps``; the same dict is ``param_groups[0]["line_search"]``,
  where ``state_dict`` saves it, so that every key of its ``state`` is a parameter's, as
  ``torch.distributed.checkpoint`` needs; ``load_state_dict`` also takes the older layout.
* **Per-step diagnostics**: :attr:`~LineSearchOptimizer.last_step`, set by ``step`` and
  :meth:`~LineSearchOptimizer._search` only (see
  :func:`~lsframe.optim.rules.sufficient_decrease_ratio`).
* **Robustness.** A non-finite loss at ``x`` or a non-finite gradient is a rejected step (no
  update, counted in ``rejected_steps``); a non-finite trial loss (``±inf`` or NaN) is a
  rejected trial; a failed search leaves its groups at ``x``, weight decay included; every
  search is bounded by ``max_backtracks`` (a hyperparameter of the optimizers with forward
  trials only). After a failed search (every trial rejected) the
  step size is ``max(min_step_size, η the rule left)``: a group hyperparameter of every line
  search, default 0 (off), applied in :meth:`~LineSearchOptimizer._search` (a group key, e.g.
  ``[{"params": ..., "min_step_size": 1e-6}]``; PLASLS and ALSALS also take it as an argument).
  The next search starts from it by the optimizer's own rule: SGDSLS, AdamSLS and PLASLS reset
  it (option 0 keeps it, 1 grows it by ``γ^(1/n)``, 2 restarts from η0, so the floor then only
  shows in that step's ``lr``), ALSALS starts from it times ``growth``, SaLSA takes it as
  ``η_last`` (candidate ``growth · η_last``; its averages of η see the floored value).
* **Reduced precision.** Under bf16 or fp16 autocast, a step that may search evaluates the loss at
  ``x`` and every trial with autocast off (one more forward per search, counted with the trials;
  ``last_step["reference_loss"]``): rounded losses cannot resolve a fine-tuning step's decrease
  (:mod:`lsframe.optim._precision`).
* **Distributed.** Decisions use only the losses returned by the closures and global sums of the
  gradients. lsframe's closures (its modules', ``LineSearchTrainer``'s, ``make_closure``'s for a
  DDP or FSDP model) average every loss across ranks before returning it, and DDP makes the
  gradients identical on all ranks, so every rank takes the same step
  (:mod:`lsframe.optim._processes`); a closure written by hand must do the same.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lsframe.optim._functional import all_finite
from lsframe.optim._precision import full_precision, reduced_autocast
from lsframe.optim._search_groups import SearchGroups
from lsframe.optim._sharded import local
from lsframe.optim.closure import check_closure, check_loss, trial_loss_of
from lsframe.optim.rules import (
    ActiveGroup,
    NonFiniteSlope,
    SearchResult,
    Verdict,
    backtrack,
    loss_value,
    sufficient_decrease_ratio,
)

Closure = Callable[..., Tensor]


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside torch and ``lsframe.optim`` (the line
    that called ``step``: torch wraps it in decorators of its own)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename for part in _INNER):
        frame, level = frame.f_back, level + 1
    return level


_INNER = (f"{os.sep}torch{os.sep}", f"lsframe{os.sep}optim{os.sep}")


def check_defines_step(cls: type) -> None:
    """Raise TypeError when ``cls`` (a :class:`LineSearchOptimizer` subclass) leaves
    ``_line_search_step`` undefined: refused when it is built or registered, not at its first
    step."""
    if cls._line_search_step is LineSearchOptimizer._line_search_step:
        raise TypeError(
            f"{cls.__name__} subclasses LineSearchOptimizer but does not define "
            "_line_search_step(self, loss, forward, groups), the method that searches and "
            "steps (docs/extending.md)"
        )


class LineSearchOptimizer(SearchGroups, Optimizer):
    """Base class: the step protocol, group bookkeeping and the state the family shares.

    Subclasses call ``super().__init__(params, defaults)`` with every hyperparameter in
    ``defaults`` (``lr`` is η0), implement :meth:`_line_search_step`, and extend
    :meth:`_check_group` and :meth:`_initial_search_state` where they need to.
    """

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        check_defines_step(type(self))
        searching = {"max_backtracks": 100} if self.forward_trials else {}  # a tracker has none
        defaults = {
            "weight_decay": 0.0,
            "lr_multiplier": 1.0,
            **searching,
            "min_step_size": 0.0,
            **defaults,
        }
        self._check_group(defaults)
        self._constructing = True  # the constructor's groups: all must share one lr
        try:
            super().__init__(params, defaults)
        finally:
            self._constructing = False
        self._adopt_search_state()
        self._unmoved: set[int] = set()  # groups a failed search of this step left at x
        self._start: list[Tensor] | None = None
        self._start_params: list[Tensor] | None = None

    #: Whether the rule keeps Adam's moments per parameter: its search state then counts their
    #: updates (``moment_step``) from the start, so that any state dict names the count.
    ADAM_MOMENTS: bool = False

    def _initial_search_state(self) -> dict[str, Any]:
        counts = {
            "step": 0,
            "forwards": 0,
            "searches": 0,
            "failed_searches": 0,
            "rejected_steps": 0,
        }
        return {**counts, "moment_step": 0} if self.ADAM_MOMENTS else counts

    @property
    def search_state(self) -> dict[str, Any]:
        return self.state["line_search"]

    @property
    def last_step(self) -> dict[str, Any] | None:
        """Diagnostics of the last step, plain Python (None before the first step).

        Keys: ``loss`` (f(x)), ``trials`` (forward-only evaluations in the step), ``searched``
        (a search ran: SaLSA amortises), ``accepted`` (it ran and accepted a trial), ``failed``
        (it ran and rejected every trial), ``rejected`` (non-finite loss or gradient, or no
        gradient at all: no update), ``sufficient_decrease_ratio``
        (:func:`~lsframe.optim.rules.sufficient_decrease_ratio` at the accepted trial; None
        without an accepted search) and ``step_sizes`` (each group's ``step_size`` after the
        step). Not in ``state_dict``: it describes a step this object took, and resuming needs
        none of it.
        """
        return getattr(self, "_last_step", None)

    # ------------------------------------------------------------------------------- step
    def _active_groups(self) -> list[ActiveGroup]:
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            groups.append(ActiveGroup(group, params, [p.grad for p in params]))
        return groups

    #: It evaluates forward-only trials (False: a step-size tracker such as
    #: :class:`~lsframe.optim.SlopeTrackingAdam`, which takes any closure, or none after a
    #: backward pass of the caller's own).
    forward_trials: bool = True

    # a search branches on losses and moves the parameters between trials, which Dynamo cannot
    # trace (state written on one side of a graph break was not seen on the other): a compiled
    # function that calls step runs it eagerly (SlopeTrackingAdam's fused=True compiles inside)
    @torch.compiler.disable
    @torch.no_grad()
    def step(
        self, closure: Closure | None = None, forward: Callable[[], Tensor] | None = None
    ) -> Tensor | None:
        """One step: one backward evaluation, then forward-only trials as the rule needs.

        Args:
            closure: ``closure(backward=True)`` zeroes the gradients, computes the loss at the
                current parameters and back-propagates it, and returns the loss (see
                :func:`lsframe.optim.make_closure`). An optimizer without forward trials
                (``forward_trials`` False) also takes a torch-style closure, or none: it then
                steps on the gradients already in ``.grad``.
            forward: Forward-only loss at the current parameters, no graph. Default:
                ``closure(backward=False)``; given, the closure is only called without arguments
                (a torch-style closure then works).

        Returns:
            The loss at the parameters before the step (None without a closure).

        Raises:
            ClosureContractError: no closure, or (without ``forward``) a closure that takes no
                ``backward`` argument, for an optimizer with forward trials; raised before
                anything is evaluated. The message states the contract.
        """
        if self.forward_trials and (closure is None or forward is None):
            check_closure(closure, type(self).__name__)
        self._check_lr_untouched()
        if forward is None and closure is not None:
            forward = trial_loss_of(closure, type(self).__name__)
        state = self.search_state
        forwards = state["forwards"]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            # before any counter; None only for a tracker (a torch-style closure may return it)
            if (loss is not None or self.forward_trials) and not isinstance(loss, (int, float)):
                check_loss(loss, f"{type(self).__name__}.step's closure", backward=False)
        state["step"] += 1
        value = None if loss is None else loss_value(loss)
        record = self._last_step = {"loss": value, "trials": 0, "searched": False}
        record.update(accepted=False, failed=False, rejected=False, sufficient_decrease_ratio=None)
        record.update(self._record_keys)  # a rule's own, on a rejected step too
        groups = self._active_groups()
        grads = [g for active in groups for g in active.grads]
        finite_loss = value is None or math.isfinite(value)
        if not finite_loss or not grads or not self._gradients_finite(groups, grads):
            if not grads and finite_loss and closure is not None:
                self._warn_no_gradients()
            state["rejected_steps"] += 1
            record["rejected"] = True
        else:
            trials = self._counting(forward)
            device_type = reduced_autocast(grads) if self.forward_trials else None
            if device_type is not None and forward is not None and self._may_search():
                trials = self._counting(full_precision(forward, device_type))
                value = record["reference_loss"] = loss_value(trials())  # x, as the trials see it
            if value is None or math.isfinite(value):
                self._decay_applied = False  # a rule's one-pass kernel may apply it
                self._unmoved = set()
                self._start = None  # the search's copy of x, in reduced precision
                try:
                    self._line_search_step(value, trials, groups)
                except NonFiniteSlope:  # nothing moved; a rule's moments may hold this step
                    state["rejected_steps"] += 1
                    record["rejected"] = True
                else:
                    if not self._decay_applied:
                        self._apply_weight_decay(groups)
            else:
                state["rejected_steps"] += 1
                record["rejected"] = True
        self._start = self._start_params = None  # the copy lives for one step
        record["step_sizes"] = self._step_sizes_taken()
        self._write_lr()
        record["trials"] = state["forwards"] - forwards
        return loss

    def _step_sizes_taken(self) -> list[float]:
        """Each group's step size in the step just taken (on a failed or rejected step, where
        none was, the one the next search starts from): its ``step_size``, unless the rule
        changed that after its update (PLASLS's merges)."""
        return [float(group["step_size"]) for group in self.param_groups]

    #: A rule's own keys of :attr:`last_step`, with their value on a step that never reaches
    #: the rule (a rejected one)
    _record_keys: dict[str, Any] = {}

    #: Warn when a closure ran and no parameter has a gradient (False: the caller's closure
    #: drops them on purpose, as lsframe's modules do for ``nonfinite_loss="skip"``).
    warn_without_gradients: bool = True

    def _warn_no_gradients(self) -> None:
        """A closure ran, yet no parameter has a gradient: where some may have one, the closure
        most likely forgot ``loss.backward()`` (a step with every parameter frozen is quiet)."""
        if not self.warn_without_gradients:
            return
        if any(p.requires_grad for group in self.param_groups for p in group["params"]):
            warnings.warn(
                f"{type(self).__name__}.step: no parameter has a gradient after "
                "closure(backward=True), so the step moved nothing (counted in rejected_steps); "
                "with backward=True a closure zeroes the gradients, computes the loss and calls "
                "loss.backward() (lsframe.optim.make_closure builds one)",
                stacklevel=_caller_stacklevel(),
            )

    def _may_search(self) -> bool:
        """Whether this step may run trials (before ``_line_search_step``; over-approximating is
        safe). Under reduced-precision autocast a step that may search first evaluates the loss
        at ``x`` at full precision (:mod:`lsframe.optim._precision`); an amortised rule says
        False on the steps it will not search."""
        return True

    def _gradients_finite(self, groups: list[ActiveGroup], grads: list[Tensor]) -> bool:
        """Whether every gradient entry is finite (one sync), checked before anything moves. A
        rule may override it to read the answer off a pass over the gradients it makes anyway."""
        return all_finite(grads)

    def _counting(self, forward: Callable[[], Tensor] | None) -> Callable[[], Tensor]:
        state = self.search_state

        def counted() -> Tensor:
            if forward is None:
                raise RuntimeError(f"{type(self).__name__} needs a closure for its trials")
            state["forwards"] += 1
            # an autocast region open around the step keeps the casts of the weights at x; a
            # model that enters autocast itself (Fabric's, accelerate's) would reuse them
            torch.clear_autocast_cache()
            return forward()

        return counted

    def _search(
        self,
        forward: Callable[[], Tensor],
        move_to: Callable[[float], None],
        step_size: float,
        verdict: Verdict,
        which: Sequence[int] | None = None,
        slope: float | None = None,
        averages: dict[str, float] | None = None,
    ) -> SearchResult:
        """:func:`~lsframe.optim.rules.backtrack` over the groups ``which``, counted and recorded
        in :attr:`last_step` (``slope``: the one the rule tests, for the sufficient-decrease
        ratio; None leaves the ratio None; ``averages``: a smoothed rule's, whose
        ``"decrease"`` the verdict brings up to date when it accepts). A failed search leaves
        its groups at ``x``: they take no weight decay in this step."""
        if slope is not None and not math.isfinite(slope):  # an average of a rule's slopes
            raise NonFiniteSlope(slope)  # rejected by step, as one from Direction.slope
        self._start = self._reduced_precision_start(which)
        place = None
        if self._start is not None:

            def place(a: float) -> None:
                self.back_to_start()
                if a != 0.0:
                    move_to(a)

        try:
            result = backtrack(
                forward, move_to, step_size, verdict, self.shared("max_backtracks", which), place
            )
        except BaseException:
            self._start = self._start_params = None  # the parameters are back at x
            raise
        if not result.accepted:  # the floor: 0 (the default) leaves the rule's last η
            result.step_size = max(result.step_size, self.shared("min_step_size", which))
        state = self.search_state
        state["searches"] += 1
        state["failed_searches"] += not result.accepted
        if not result.accepted:
            self._unmoved.update(range(len(self.param_groups)) if which is None else which)
        record = self.last_step
        if record is not None:  # a search inside step (always, unless a subclass calls it alone)
            record["searched"], record["failed"] = True, record["failed"] or not result.accepted
            record["accepted"] = not record["failed"]
            if result.accepted and slope is not None and result.trial_loss is not None:
                reference = record.get("reference_loss", record["loss"])
                decrease = (
                    reference - result.trial_loss if averages is None else averages["decrease"]
                )
                ratio = sufficient_decrease_ratio(decrease, result.step_size, slope)
                record["sufficient_decrease_ratio"] = ratio
        return result

    def _reduced_precision_start(self, which: Sequence[int] | None) -> list[Tensor] | None:
        """A copy of the searched parameters (those with a gradient) when any is bfloat16 or
        float16, from which :func:`~lsframe.optim.rules.backtrack` places each trial (see
        :mod:`lsframe.optim.rules`); None otherwise (moves in place, no copy)."""
        indices = range(len(self.param_groups)) if which is None else which
        params = [p for i in indices for p in self.param_groups[i]["params"] if p.grad is not None]
        if not any(p.dtype in (torch.bfloat16, torch.float16) for p in params):
            return None
        self._start_params = [local(p) for p in params]  # a DTensor's shard (FSDP2)
        return [p.detach().clone() for p in self._start_params]

    def back_to_start(self, otherwise: Callable[[], None] | None = None) -> None:
        """Put the searched parameters back at ``x`` from the search's copy where it keeps one
        (reduced precision), else call ``otherwise`` (the rule's move back)."""
        if self._start is not None:
            torch._foreach_copy_(self._start_params, self._start)
        elif otherwise is not None:
            otherwise()

    def _apply_weight_decay(self, groups: list[ActiveGroup]) -> None:
        """Decoupled weight decay ``x ← x · (1 − lr · λ)`` with this step's lr (after the search),
        except in the groups a failed search left at ``x``."""
        for i, active in enumerate(groups):
            decay = active.group["weight_decay"]
            if decay and active.params and i not in self._unmoved:
                rate = active.group["step_size"] * active.multiplier * decay
                torch._foreach_mul_(active.params, 1.0 - rate)

    def _line_search_step(
        self, loss: float | None, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        """Search and step from ``x`` (gradients in ``groups``); set each group's step_size
        (``loss`` is None only for an optimizer without forward trials, stepped without a
        closure)."""
        raise NotImplementedError
