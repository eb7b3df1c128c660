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
  ``failed_searches``, ``rejected_steps``. ``state_dict`` saves that search state in the first
  param group, so that every key of its ``state`` is a parameter's, as
  ``torch.distributed.checkpoint`` needs; ``load_state_dict`` also takes the older layout.
* **Per-step diagnostics**: :attr:`~LineSearchOptimizer.last_step`, set by ``step`` and
  :meth:`~LineSearchOptimizer._search` only (see :func:`sufficient_decrease_ratio`).
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
  gradients. lsframe's module averages losses across ranks before returning them, and DDP makes the
  gradients identical on all ranks, so every rank takes the same step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lsframe.errors import DataError
from lsframe.optim._dtypes import check_eps_representable, check_real_parameters
from lsframe.optim._functional import all_finite
from lsframe.optim._precision import full_precision, reduced_autocast
from lsframe.optim.closure import check_closure, check_loss
from lsframe.optim.rules import (
    ActiveGroup,
    NonFiniteSlope,
    SearchResult,
    Verdict,
    backtrack,
    loss_value,
)
from lsframe.validation import check_int_at_least, check_non_negative, check_positive

Closure = Callable[..., Tensor]


def sufficient_decrease_ratio(decrease: float, step_size: float, slope: float) -> float | None:
    """``D / (η · s)``: the decrease the rule tests at the accepted trial point per unit of the
    decrease its right-hand side scales with, so that a search accepts when it is ``≥ c``.

    ``D`` and ``s`` are what the rule's condition compares, passed to ``_search`` by the rule:
    ``f(x) − f(x − η d)`` and ``⟨g, d⟩`` for the Armijo and Goldstein conditions of SGDSLS,
    AdamSLS and PLASLS without smoothing (Goldstein also asks ``≤ 1 − c``); the moving averages
    ``D̄`` (with this trial's decrease) and ``Ḡ`` for the smoothed Armijo condition of
    AdamSLS/PLASLS with ``smooth``, ALSALS and SaLSA. (One step's decrease over ``Ḡ`` would
    read ``1/(1 − β)`` times too large while the averages fill from 0.) None when ``η · s`` is
    0 or not finite. Pure Python on losses the search already read: no host sync.
    """
    scale = step_size * slope
    if scale == 0 or not math.isfinite(scale):
        return None
    return decrease / scale


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


class LineSearchOptimizer(Optimizer):
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
        self.state["line_search"] = self._initial_search_state()
        self._unmoved: set[int] = set()  # groups a failed search of this step left at x
        self._start: list[Tensor] | None = None
        self._start_params: list[Tensor] | None = None

    # --------------------------------------------------------------------- hyperparameters
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming the first bad hyperparameter of ``group`` (or ``defaults``)."""
        check_positive(lr=group["lr"])
        check_non_negative(weight_decay=group["weight_decay"])
        check_non_negative(min_step_size=group["min_step_size"])
        params = group.get("params", ())  # none in ``defaults``
        if self.forward_trials:
            check_int_at_least(1, max_backtracks=group["max_backtracks"])
        check_eps_representable(group.get("eps", 0.0), params, type(self).__name__)
        check_real_parameters(params, type(self).__name__)

    #: Hyperparameters one search over several groups reads once, so the groups it searches
    #: must agree on them: refused when a group is added, as :meth:`shared` refuses at a step.
    ONE_SEARCH_KEYS: tuple[str, ...] = ("max_backtracks", "min_step_size")

    def _one_search_values(self, group: dict[str, Any]) -> dict[str, Any]:
        """``group``'s values of :attr:`ONE_SEARCH_KEYS` (a subclass adds derived ones)."""
        return {key: group[key] for key in self.ONE_SEARCH_KEYS if key in group}

    def _check_one_search(self, group: dict[str, Any]) -> None:
        """Refuse ``group`` when it differs from group 0 in a value one search reads once."""
        first = self.param_groups[0]
        if group is first:
            return
        own, reference = self._one_search_values(group), self._one_search_values(first)
        for key, value in own.items():
            if key in reference and value != reference[key]:
                raise ValueError(
                    f"{type(self).__name__}: param groups {first.get('name', 0)!r} and "
                    f"{group.get('name', len(self.param_groups) - 1)!r} have different {key} "
                    f"({reference[key]!r}, {value!r}), but one search over both uses one value"
                    + self._shared_hint(key)
                )

    def _initial_search_state(self) -> dict[str, Any]:
        return {"step": 0, "forwards": 0, "searches": 0, "failed_searches": 0, "rejected_steps": 0}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # the constructor's groups share one lr whether they set it or take the default; a group
        # added later without one joins group 0's step size
        own_lr = "lr" in param_group
        constructing = getattr(self, "_constructing", False)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a refused group leaves the optimizer as it was, as in torch
            self._check_group(group)
            self._check_one_search(group)
            if own_lr or constructing:
                self._check_same_lr(group, own=own_lr)
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("step_size", group["lr"])
        group.setdefault("initial_step_size", group["step_size"])
        group["lr"] = group["step_size"] * group["lr_multiplier"]

    def _check_same_lr(self, group: dict[str, Any], own: bool = True) -> None:
        """One search (or one tracked η) sets every group's step size, so a group that sets
        another ``lr`` would silently take group 0's: refused, pointing to ``lr_multiplier``. The
        groups given to the constructor are compared whether they set ``lr`` or take the
        default (``[{"params": head, "lr": 1e-3}, {"params": body}]`` is refused, as torch would
        give ``body`` the default). A group added later without its own ``lr`` joins group 0's
        step size (gradual unfreezing, also after resuming a run saved under another η0)."""
        if len(self.param_groups) < 2 or "step_size" in group:
            return
        first = self.param_groups[0]
        # the lr group 0 was given (SlopeTrackingAdam's run-length rule may start lower)
        start = first.get("unscaled_initial_step_size", first["initial_step_size"])
        if group["lr"] != start:
            ratio = group["lr"] / start
            raise ValueError(
                f"{type(self).__name__}: param group {len(self.param_groups) - 1} "
                f"{'sets' if own else 'takes the default'} lr={group['lr']!r} but group 0 "
                f"starts at {start!r}: one "
                "step size serves every group, so a group's lr cannot differ; scale that group's "
                f"step with 'lr_multiplier' instead (here lr_multiplier={ratio:.6g})"
                + ("" if own else ", or give lr to the optimizer rather than to group 0")
            )

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with the search state in the first param group
        (``param_groups[0]["line_search"]``) so that every key of ``state`` is a parameter's:
        ``torch.distributed.checkpoint`` (FSDP2, Lightning's ModelParallelStrategy) maps those
        keys to parameter names."""
        saved = super().state_dict()
        state = dict(saved["state"])
        search = state.pop("line_search", None)
        if search is not None and saved["param_groups"]:
            saved["state"] = state
            saved["param_groups"][0]["line_search"] = search
        if saved["param_groups"]:
            saved["param_groups"][0]["saved_by"] = type(self).__name__
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, after checking that a line search saved it: another optimizer's
        state (AdamW's, from a run resumed with another optimizer) has no searched step size.
        The search state may be in the first param group (:meth:`state_dict`) or, as lsframe
        saved it before 2026-12-05, under ``state["line_search"]``."""
        groups = state_dict.get("param_groups", [])
        name = type(self).__name__
        if any("step_size" not in group for group in groups):
            raise DataError(
                f"{name}: the optimizer state to load has no searched step size, "
                "so another optimizer saved it: resume with the optimizer it was saved with"
            )
        saved_by = groups[0].get("saved_by") if groups else None  # None: saved before 2026-12-06
        if saved_by is not None and saved_by not in {c.__name__ for c in type(self).__mro__}:
            raise DataError(
                f"{name}: the optimizer state to load was saved by {saved_by}, whose step "
                f"size and hyperparameters are not {name}'s: resume with {saved_by}, or start "
                "this optimizer afresh (load the model's weights only)"
            )
        groups = [{k: v for k, v in g.items() if k != "saved_by"} for g in groups]
        state_dict = {**state_dict, "param_groups": groups}
        if not self.forward_trials:  # saved before 2026-12-06, when every tracker carried it
            groups = [{k: v for k, v in g.items() if k != "max_backtracks"} for g in groups]
            state_dict = {**state_dict, "param_groups": groups}
        if groups and "line_search" in groups[0]:
            state_dict = {
                **state_dict,
                "state": {**state_dict["state"], "line_search": groups[0]["line_search"]},
                "param_groups": [
                    {k: v for k, v in group.items() if k != "line_search"} for group in groups
                ],
            }
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a state dict from an older lsframe may lack a hyperparameter or a counter: backfill
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("initial_step_size", self.defaults["lr"])
        search = self.state.setdefault("line_search", {})
        for key, value in self._initial_search_state().items():
            search.setdefault(key, value)

    def shared(
        self,
        key: str,
        which: Sequence[int] | None = None,
        pick: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        """The value of hyperparameter ``key`` (or ``pick(group)``, named ``key``) for a search
        over the groups ``which`` (all by default): one search has one rule, so the groups must
        agree on it."""
        indices = range(len(self.param_groups)) if which is None else which
        named = [(self.param_groups[i].get("name", i), self.param_groups[i]) for i in indices]
        (first, group0), *rest = named
        value = pick(group0) if pick is not None else group0[key]
        for name, group in rest:
            other = pick(group) if pick is not None else group[key]
            if other != value:
                raise ValueError(
                    f"{type(self).__name__}: param groups {first!r} and {name!r} have different "
                    f"{key} ({value!r}, {other!r}), but one search over both uses one value"
                    + self._shared_hint(key)
                )
        return value

    def _shared_hint(self, key: str) -> str:
        """What the refusal of groups that differ in ``key`` adds (a subclass's way out)."""
        return ""

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
        (:func:`sufficient_decrease_ratio` at the accepted trial; None without an accepted
        search) and ``step_sizes`` (each group's ``step_size`` after the step). Not in ``state_dict``: it describes a step this object
        took, and resuming needs none of it.
        """
        return getattr(self, "_last_step", None)

    # ------------------------------------------------------------------------- step sizes
    def _check_lr_untouched(self) -> None:
        for i, group in enumerate(self.param_groups):
            expected = group["step_size"] * group["lr_multiplier"]
            if not math.isclose(group["lr"], expected, rel_tol=1e-12, abs_tol=0.0):
                raise RuntimeError(
                    f"{type(self).__name__}: param group {i} ('{group.get('name', i)}') has "
                    f"lr={group['lr']!r} but its searched step size times lr_multiplier is "
                    f"{expected!r}: something (a torch LR scheduler?) wrote 'lr' directly. "
                    "Line-search optimizers search their own step size; schedule the "
                    "'lr_multiplier' instead (lsframe.optim.StepSizeSchedule; with Hugging "
                    "Face's Trainer, lsframe.integrations.hf.LineSearchTrainer does)."
                )

    def _set_step_sizes(self, step_sizes: float | Sequence[float]) -> None:
        """The step sizes taken this step: one for every group, or one per group."""
        if isinstance(step_sizes, (int, float)):
            step_sizes = [float(step_sizes)] * len(self.param_groups)
        for group, eta in zip(self.param_groups, step_sizes):
            group["step_size"] = eta

    def _write_lr(self) -> None:
        for group in self.param_groups:
            group["lr"] = group["step_size"] * group["lr_multiplier"]

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
            forward = lambda: closure(backward=False)  # noqa: E731
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
        groups = self._active_groups()
        grads = [g for active in groups for g in active.grads]
        finite_loss = value is None or math.isfinite(value)
        if not finite_loss or not grads or not self._gradients_finite(groups, grads):
            if not grads and closure is not None:
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
        self._write_lr()
        record["trials"] = state["forwards"] - forwards
        record["step_sizes"] = [float(group["step_size"]) for group in self.param_groups]
        return loss

    def _warn_no_gradients(self) -> None:
        """A closure ran, yet no parameter has a gradient: where some may have one, the closure
        most likely forgot ``loss.backward()`` (a step with every parameter frozen is quiet)."""
        if any(p.requires_grad for group in self.param_groups for p in group["params"]):
            warnings.warn(
                f"{type(self).__name__}.step: no parameter has a gradient after "
                "closure(backward=True), so the step moved nothing (counted in rejected_steps); "
                "with backward=True a closure zeroes the gradients, computes the loss and calls "
                "loss.backward() (lsframe.optim.make_closure builds one)",
                stacklevel=3,
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

        result = backtrack(
            forward, move_to, step_size, verdict, self.shared("max_backtracks", which), place
        )
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
        self._start_params = params
        return [p.detach().clone() for p in params]

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
