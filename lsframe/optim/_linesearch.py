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
  ``state["line_search"]`` (saved by ``state_dict``): ``step``, ``forwards`` (trial
  evaluations), ``searches``, ``failed_searches``, ``rejected_steps``.
* **Robustness.** A non-finite loss at ``x`` or a non-finite gradient is a rejected step (no
  update, counted in ``rejected_steps``); a non-finite trial loss is a rejected trial; every
  search is bounded by ``max_backtracks``.
* **Distributed.** Decisions use only the losses returned by the closures and global sums of the
  gradients. lsframe's module averages losses across ranks before returning them, and DDP makes the
  gradients identical on all ranks, so every rank takes the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lsframe.optim._functional import all_finite
from lsframe.optim.closure import check_closure
from lsframe.optim.rules import ActiveGroup, SearchResult, Verdict, backtrack, loss_value
from lsframe.validation import check_int_at_least, check_non_negative, check_positive

Closure = Callable[..., Tensor]


class LineSearchOptimizer(Optimizer):
    """Base class: the step protocol, group bookkeeping and the state the family shares.

    Subclasses call ``super().__init__(params, defaults)`` with every hyperparameter in
    ``defaults`` (``lr`` is η0), implement :meth:`_line_search_step`, and extend
    :meth:`_check_group` and :meth:`_initial_search_state` where they need to.
    """

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        defaults = {"weight_decay": 0.0, "lr_multiplier": 1.0, "max_backtracks": 100, **defaults}
        self._check_group(defaults)
        super().__init__(params, defaults)
        self.state["line_search"] = self._initial_search_state()

    # --------------------------------------------------------------------- hyperparameters
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming the first bad hyperparameter of ``group`` (or ``defaults``)."""
        check_positive(lr=group["lr"])
        check_non_negative(weight_decay=group["weight_decay"])
        check_int_at_least(1, max_backtracks=group["max_backtracks"])

    def _initial_search_state(self) -> dict[str, Any]:
        return {"step": 0, "forwards": 0, "searches": 0, "failed_searches": 0, "rejected_steps": 0}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        group.setdefault("step_size", group["lr"])
        group.setdefault("initial_step_size", group["step_size"])
        group["lr"] = group["step_size"] * group["lr_multiplier"]

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
                )
        return value

    @property
    def search_state(self) -> dict[str, Any]:
        return self.state["line_search"]

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
                    "'lr_multiplier' instead (lsframe.optim.StepSizeSchedule)."
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

    @torch.no_grad()
    def step(
        self, closure: Closure | None = None, forward: Callable[[], Tensor] | None = None
    ) -> Tensor:
        """One step: one backward evaluation, then forward-only trials as the rule needs.

        Args:
            closure: ``closure(backward=True)`` zeroes the gradients, computes the loss at the
                current parameters and back-propagates it, and returns the loss (see
                :func:`lsframe.optim.make_closure`).
            forward: Forward-only loss at the current parameters, no graph. Default:
                ``closure(backward=False)``; given, the closure is only called without arguments
                (a torch-style closure then works).

        Returns:
            The loss at the parameters before the step.

        Raises:
            ClosureContractError: no closure, or (without ``forward``) a closure that takes no
                ``backward`` argument; raised before anything is evaluated. The message states
                the contract.
        """
        if closure is None or forward is None:
            check_closure(closure, type(self).__name__)
        self._check_lr_untouched()
        if forward is None:
            forward = lambda: closure(backward=False)  # noqa: E731
        state = self.search_state
        with torch.enable_grad():
            loss = closure()
        state["step"] += 1
        value = loss_value(loss)
        groups = self._active_groups()
        grads = [g for active in groups for g in active.grads]
        if not math.isfinite(value) or not grads or not all_finite(grads):
            state["rejected_steps"] += 1
            self._write_lr()
            return loss
        self._line_search_step(value, self._counting(forward), groups)
        self._apply_weight_decay(groups)
        self._write_lr()
        return loss

    def _counting(self, forward: Callable[[], Tensor]) -> Callable[[], Tensor]:
        state = self.search_state

        def counted() -> Tensor:
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
    ) -> SearchResult:
        """:func:`~lsframe.optim.rules.backtrack` over the groups ``which``, counted."""
        result = backtrack(
            forward, move_to, step_size, verdict, self.shared("max_backtracks", which)
        )
        state = self.search_state
        state["searches"] += 1
        state["failed_searches"] += not result.accepted
        return result

    def _apply_weight_decay(self, groups: list[ActiveGroup]) -> None:
        """Decoupled weight decay ``x ← x · (1 − lr · λ)`` with this step's lr (after the search)."""
        for active in groups:
            decay = active.group["weight_decay"]
            if decay and active.params:
                rate = active.group["step_size"] * active.multiplier * decay
                torch._foreach_mul_(active.params, 1.0 - rate)

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        """Search and step from ``x`` (gradients in ``groups``); set each group's step_size."""
        raise NotImplementedError
