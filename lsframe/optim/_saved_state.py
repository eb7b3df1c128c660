"""What lsframe's optimizers check in a state dict before they load it, and how they label a
param group in a refusal.

* **Which optimizer saved it.** ``state_dict`` stamps ``param_groups[0]["saved_by"]`` with the
  class name (:func:`stamp_saved_by`); ``load_state_dict`` refuses a state another class saved
  (:func:`refuse_another_class`): loading it would run with that optimizer's hyperparameters
  without a word, or fail at the first step with a ``KeyError``. A base class's state loads
  into a subclass when it carries every key the subclass needs.
* **For which parameters.** torch matches a saved state to the parameters by position only, so
  an optimizer built with its param groups in another order took the moments of other tensors
  (a size error at the first step, or for SGDSLS, which keeps none, the groups' settings
  swapped). The saved parameter names, where both sides have them (``named_parameters()``
  groups, torch ≥ 2.5; a wrapper's prefix aside), and the moments' shapes must match
  (:func:`refuse_other_parameters`).
* **One line per bad group value**, naming the group (:func:`check_group`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from lsframe.errors import ConfigError, DataError

#: Keys torch's LR schedulers write into the param groups (``initial_lr`` by every one;
#: ``OneCycleLR`` and ``SWALR`` more): a state saved with a scheduler attached may carry them.
SCHEDULER_KEYS = frozenset(
    {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr"}
)


#: Per-parameter state tensors shaped as their parameter (Adam's moments, SGD's momentum).
PARAMETER_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")

_START_AFRESH = "or start this optimizer afresh (load the model's weights only)"


def group_label(optimizer: Optimizer, index: int, group: dict[str, Any] | None = None) -> str:
    """``param group <index>`` with the group's ``name`` where it has one."""
    group = optimizer.param_groups[index] if group is None else group
    return f"param group {index}" + (f" ({group['name']!r})" if "name" in group else "")


def check_group(optimizer: Optimizer, index: int, check: Callable[[dict[str, Any]], None]) -> None:
    """Run ``check`` on ``optimizer.param_groups[index]``; its ConfigError comes back as one
    line that names the group: ``"<Class>: param group <i> ('<name>'): <the check's line>"``
    (``argument`` kept, so the command line can still place it)."""
    try:
        check(optimizer.param_groups[index])
    except ConfigError as error:
        raise ConfigError(
            f"{type(optimizer).__name__}: {group_label(optimizer, index)}: {error.message}",
            argument=error.argument,
        ) from None


def stamp_saved_by(optimizer: Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a fresh ``state_dict()``) with the optimizer's class name in
    ``param_groups[0]["saved_by"]``."""
    if saved["param_groups"]:
        saved["param_groups"][0]["saved_by"] = type(optimizer).__name__
    return saved


def refuse_another_class(
    optimizer: Optimizer, groups: Sequence[dict[str, Any]], required: Sequence[str] = ()
) -> None:
    """Raise DataError when another class stamped ``groups`` (a state dict's): not this class,
    nor a base class of it whose groups carry every key of ``required`` (the keys a step reads
    without a fallback). An unstamped state (saved before lsframe stamped them, or by torch's
    own optimizers) is left to the caller."""
    name = type(optimizer).__name__
    saved_by = groups[0].get("saved_by") if groups else None
    if saved_by is None or saved_by == name:
        return
    missing = any(key not in group for group in groups for key in required)
    if saved_by not in {cls.__name__ for cls in type(optimizer).__mro__} or missing:
        raise DataError(
            f"{name}: the optimizer state to load was saved by {saved_by}, whose "
            f"hyperparameters and state are not {name}'s: resume with {saved_by}, " + _START_AFRESH
        )


def refuse_other_parameters(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """Raise DataError when ``state_dict`` was saved for other parameters than the optimizer's
    groups hold, position by position: another parameter name (where both sides record names;
    :func:`wrapper_prefix`) or a moment of another shape. torch's own check (the number of
    groups and of parameters in each) runs after it."""
    name = type(optimizer).__name__
    saved_groups, state = state_dict.get("param_groups", []), state_dict.get("state", {})
    prefix: tuple[str, str] | None = None  # (ours, the state's): a wrapper's, one for all names
    for index, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        names, saved_names = group.get("param_names") or [], saved.get("param_names") or []
        for position, (param, key) in enumerate(zip(group["params"], saved.get("params", []))):
            if position < min(len(names), len(saved_names)):
                ours, theirs = names[position], saved_names[position]
                found = wrapper_prefix(ours, theirs)
                if found is None or (prefix is not None and found != prefix):
                    problem = f"is {ours}, the state's {theirs}"
                    if found is not None:  # a prefix, but not the one of the names before
                        problem += f" (the names before differ by {prefix}, these by {found})"
                    raise _other_parameters(optimizer, index, position, problem, name)
                prefix = found
            entry = state.get(key)
            for moment in PARAMETER_SHAPED if isinstance(entry, dict) else ():
                value = entry.get(moment)
                if isinstance(value, Tensor) and value.shape != param.shape:
                    problem = (
                        f"has shape {tuple(param.shape)}, its saved {moment} {tuple(value.shape)}"
                    )
                    raise _other_parameters(optimizer, index, position, problem, name)


def wrapper_prefix(ours: str, theirs: str) -> tuple[str, str] | None:
    """The prefixes by which two names of one parameter differ, ``(ours, the state's)``, one of
    them empty: a wrapper's on one side (``torch.compile``'s ``_orig_mod.``, DDP's
    ``module.``); ``("", "")`` for equal names; None when neither name is the other under a
    prefix of whole components. A state's names must all differ by the same prefix:
    ``norm.weight`` and ``layers.0.norm.weight`` differ by one too, but a wrapper adds its
    prefix to every name."""
    if ours == theirs:
        return ("", "")
    if ours.endswith("." + theirs):
        return (ours[: len(ours) - len(theirs)], "")
    if theirs.endswith("." + ours):
        return ("", theirs[: len(theirs) - len(ours)])
    return None


def _other_parameters(
    optimizer: Optimizer, index: int, position: int, problem: str, name: str
) -> DataError:
    return DataError(
        f"{name}: the optimizer state to load was saved for other parameters: parameter "
        f"{position} of {group_label(optimizer, index)} {problem}; build the optimizer with the "
        f"param groups of the run that saved it, in the same order, {_START_AFRESH}"
    )


def state_to_load(
    optimizer: Optimizer, state_dict: dict[str, Any], required: Sequence[str]
) -> dict[str, Any]:
    """``state_dict`` without its ``saved_by`` stamp, after checking that ``optimizer``'s class
    saved it, for these parameters (:func:`refuse_other_parameters`); else a DataError.

    * Stamped: :func:`refuse_another_class`.
    * Unstamped (torch's own optimizers; Lamb, ALTO and AdamE before they stamped theirs):
      every group must carry every key of ``required`` and no key this optimizer's ``defaults``
      and own groups lack (a group's ``name`` or ``part`` is in both) but for those torch's LR
      schedulers write (:data:`SCHEDULER_KEYS`). So AdamW's state is refused by AdamE (no α,
      β1), ALTO's by Lamb (α, β1 it does not use), and a state the class itself saved before it
      stamped them loads.
    """
    name = type(optimizer).__name__
    groups = state_dict.get("param_groups", [])
    refuse_another_class(optimizer, groups, required)
    if not groups or groups[0].get("saved_by") is None:
        missing = sorted({key for group in groups for key in required if key not in group})
        known = set(optimizer.defaults).union(*optimizer.param_groups, SCHEDULER_KEYS)
        extra = sorted({key for group in groups for key in group} - known - {"params"})
        if missing or extra:
            found = ([f"has no {', '.join(missing)}"] if missing else []) + (
                [f"has {', '.join(extra)}, which {name} does not use"] if extra else []
            )
            raise DataError(
                f"{name}: the optimizer state to load {' and '.join(found)}, so another "
                "optimizer saved it: resume with the optimizer it was saved with, " + _START_AFRESH
            )
    refuse_other_parameters(optimizer, state_dict)
    groups = [{k: v for k, v in group.items() if k != "saved_by"} for group in groups]
    return {**state_dict, "param_groups": groups}


class CheckedOptimizer:
    """Mixin of a ``torch.optim.Optimizer`` (Lamb, ALTO, AdamE; the line searches do the same in
    their own base class): every param group added is checked by ``_check_group`` (a refused
    one leaves the optimizer as it was, as in torch), ``state_dict`` is stamped with the class
    that saved it, and ``load_state_dict`` takes only a state of this class for these
    parameters (:func:`state_to_load`, with :attr:`REQUIRED_GROUP_KEYS`)."""

    #: The group keys a step reads without a fallback: a state dict to load must carry them.
    REQUIRED_GROUP_KEYS: tuple[str, ...] = ()
    param_groups: list[dict[str, Any]]

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ConfigError naming the first bad hyperparameter of ``group``."""

    def _check_new_params(self, params: list[Tensor]) -> None:
        """Refuse parameters the kernels cannot take (a subclass's rule; none here)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._check_new_params(self.param_groups[-1]["params"])
            check_group(self, len(self.param_groups) - 1, self._check_group)  # type: ignore[arg-type]
        except ValueError:
            self.param_groups.pop()
            raise

    def state_dict(self) -> dict[str, Any]:
        return stamp_saved_by(self, super().state_dict())  # type: ignore[misc, arg-type]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        loaded = state_to_load(self, state_dict, self.REQUIRED_GROUP_KEYS)  # type: ignore[arg-type]
        super().load_state_dict(loaded)  # type: ignore[misc]
