"""The param groups of a line search and their saved form: the mixin
:class:`~lsframe.optim._linesearch.LineSearchOptimizer` takes them from.

* every group's values are checked as it is added, and a group that differs from group 0 in
  a value one search reads once is refused (:meth:`SearchGroups.shared` reads such values);
* the groups' ``step_size`` is the step taken, ``lr = step_size · lr_multiplier`` is written
  after every step, and an ``lr`` written from outside is an error;
* ``state_dict`` keeps the search state in the first param group, stamped with the class that
  saved it, and ``load_state_dict`` refuses another optimizer's state
  (:mod:`lsframe.optim._saved_state`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

from lsframe.errors import DataError
from lsframe.optim._dtypes import check_eps_representable, check_real_parameters
from lsframe.optim._saved_state import (
    check_group,
    refuse_another_class,
    refuse_other_parameters,
)
from lsframe.optim.adam_moments import moments_of
from lsframe.validation import check_int_at_least, check_non_negative, check_positive


class SearchGroups:
    """Param-group bookkeeping of :class:`~lsframe.optim._linesearch.LineSearchOptimizer`
    (a ``torch.optim.Optimizer``)."""

    param_groups: list[dict[str, Any]]
    state: Any
    defaults: dict[str, Any]
    forward_trials: bool
    ADAM_MOMENTS: bool

    def _initial_search_state(self) -> dict[str, Any]:
        raise NotImplementedError

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

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # the constructor's groups share one lr whether they set it or take the default; a group
        # added later without one joins group 0's step size
        own_lr = "lr" in param_group
        constructing = getattr(self, "_constructing", False)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a refused group leaves the optimizer as it was, as in torch
            check_group(self, len(self.param_groups) - 1, self._check_group)
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
        (``param_groups[0]["line_search"]``, where it also lives: :meth:`_adopt_search_state`)
        so that every key of ``state`` is a parameter's: ``torch.distributed.checkpoint``
        (FSDP2, Lightning's ModelParallelStrategy) maps those keys to parameter names, and its
        ``flatten_optimizer_state_dict=True`` keeps a group key the optimizer has. The
        state-dict hooks see that layout too.

        Before its first update of Adam's moments, an Adam-based search first creates zero
        moments (no update counted) for every parameter that trains, as torch's own helper
        creates a fresh optimizer's state by stepping it with zero gradients (which a line
        search's step, needing a closure and owning ``lr``, cannot take): ``dcp.load`` fills
        only the entries of its template, the state dict of an optimizer that has not
        stepped. Moments no update has reached follow their parameter's dtype and device.
        Every key its search state will hold exists from the start for the same reason
        (``tests/test_optim_groups.py``)."""
        if self.ADAM_MOMENTS and not self.state["line_search"].get("moment_step"):
            self._create_moments()
        search = self.state.pop("line_search", None)
        first = self.param_groups[0] if self.param_groups else None
        if first is not None:
            first["saved_by"] = type(self).__name__
        try:
            return super().state_dict()
        finally:
            if first is not None:
                first.pop("saved_by", None)
            if search is not None:
                self.state["line_search"] = search

    def _create_moments(self) -> None:
        """Create zero Adam moments (no update counted) for every parameter that trains and
        has none yet."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    moments_of(self.state, param)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, after checking that a line search of this class (or a base
        class) saved it, for these parameters (:mod:`lsframe.optim._saved_state`): another
        optimizer's state (AdamW's, from a run resumed with another optimizer) has no searched
        step size. The search state may be in the first param group (:meth:`state_dict`; the
        load hooks see that layout) or, as lsframe saved it before 2026-12-05, under
        ``state["line_search"]``."""
        groups = state_dict.get("param_groups", [])
        name = type(self).__name__
        if any("step_size" not in group for group in groups):
            raise DataError(
                f"{name}: the optimizer state to load has no searched step size, "
                "so another optimizer saved it: resume with the optimizer it was saved with"
            )
        refuse_another_class(self, groups)  # unstamped: saved before 2026-12-06
        refuse_other_parameters(self, state_dict)
        refuse_a_state_without_its_search(name, state_dict)
        if not self.forward_trials:  # saved before 2026-12-06, when every tracker carried it
            groups = [{k: v for k, v in g.items() if k != "max_backtracks"} for g in groups]
            state_dict = {**state_dict, "param_groups": groups}
        super().load_state_dict(state_dict)  # type: ignore[misc]

    def _adopt_search_state(self) -> None:
        """Make the search state one dict, ``state["line_search"]`` and
        ``param_groups[0]["line_search"]`` alike, its missing counters backfilled. In a group, it
        survives tools that rebuild a state dict from the optimizer's own group keys
        (``torch.distributed.checkpoint``'s ``flatten_optimizer_state_dict=True``). Called by
        the constructor and by ``__setstate__`` (torch's load, a copy, an unpickle), before any
        load post hook: a loaded state has it in group 0, or under ``state`` as lsframe saved
        it before 2026-12-05."""
        first = self.param_groups[0] if self.param_groups else {}
        first.pop("saved_by", None)
        search = first.get("line_search")
        if search is None:  # the older layout: torch's load keeps the caller's object there
            search = copy.deepcopy(self.state.get("line_search")) or {}
        backfill(search, self._initial_search_state())
        self.state["line_search"] = search
        if self.param_groups:
            first["line_search"] = search

    def __repr__(self) -> str:
        # torch prints every group key: the search state is the optimizer's, not group 0's
        first = self.param_groups[0] if self.param_groups else {}
        search = first.pop("line_search", None)
        try:
            return super().__repr__()
        finally:
            if search is not None:
                first["line_search"] = search

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a state dict from an older lsframe may lack a hyperparameter or a counter: backfill
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("initial_step_size", self.defaults["lr"])
        self._adopt_search_state()

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

    # ------------------------------------------------------------------------- step sizes
    def _check_lr_untouched(self) -> None:
        """Refuse an ``lr`` written from outside, and a torch LR scheduler attached to this
        optimizer (it stamps ``initial_lr`` on every group as it is built): refused at the
        first step, also where its first values leave ``lr`` as it was (a constant schedule,
        a tracker's step size that moves only after its warmup)."""
        for i, group in enumerate(self.param_groups):
            expected = group["step_size"] * group["lr_multiplier"]
            label = f"{type(self).__name__}: param group {i} ('{group.get('name', i)}')"
            if "initial_lr" in group:
                found = "has 'initial_lr': a torch LR scheduler is attached to it"
            elif not math.isclose(group["lr"], expected, rel_tol=1e-12, abs_tol=0.0):
                found = (
                    f"has lr={group['lr']!r} but its searched step size times lr_multiplier is "
                    f"{expected!r}: something (a torch LR scheduler?) wrote 'lr' directly"
                )
            else:
                continue
            raise RuntimeError(
                f"{label} {found}. Line-search optimizers search their own step size; schedule "
                "the 'lr_multiplier' instead (lsframe.optim.StepSizeSchedule; with Hugging "
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


def backfill(values: dict[str, Any], initial: dict[str, Any]) -> None:
    """Add to ``values`` every key of ``initial`` it lacks, in nested dicts too: a state saved
    by an older lsframe, or before a part first searched, names every key a fresh one does."""
    for key, value in initial.items():
        if key not in values:
            values[key] = value
        elif isinstance(value, dict) and isinstance(values[key], dict):
            backfill(values[key], value)


def refuse_a_state_without_its_search(name: str, state_dict: dict[str, Any]) -> None:
    """Refuse a state without its search state (saved without it, or a tool dropped it), or
    without Adam's moments although its search state counts their updates: a tool rebuilt it
    from the per-parameter state of an optimizer that had none yet, and loading it would
    restart the moments at zero without a word. ``torch.distributed.checkpoint``'s
    ``flatten_optimizer_state_dict=True`` does so when the loading optimizer was never asked
    for its state dict: it keeps only the state names that optimizer has, and a line search
    creates its moments at its first step or when its :meth:`SearchGroups.state_dict` is taken
    (a ``dcp.load`` template)."""
    state = state_dict.get("state", {})
    groups = state_dict.get("param_groups") or []
    if not groups:
        return
    search = groups[0].get("line_search", state.get("line_search"))
    if search is None:
        raise DataError(
            f"{name}: the optimizer state to load has no search state "
            "(param_groups[0]['line_search']): it was saved without it, or a tool dropped "
            "it; resume from the optimizer's own state_dict()"
        )
    updates = search.get("moment_step", 0)
    moments = any(
        isinstance(v, dict) and "exp_avg" in v for k, v in state.items() if k != "line_search"
    )
    if updates > 0 and not moments:
        raise DataError(
            f"{name}: the optimizer state to load has no Adam moments although they were "
            f"updated {updates} times: it was rebuilt from an optimizer that had none yet "
            "(torch.distributed.checkpoint's flatten_optimizer_state_dict=True keeps only the "
            "state the loading optimizer has); take get_optimizer_state_dict of the fresh "
            "optimizer first, as a dcp.load template does, or load the whole state dict the "
            "optimizer saved"
        )
