"""PLASLS: one line-searched step size per part of the network, searched in turn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.adam_sls import (
    ADAM_SLS_SEARCH_KEYS,
    check_adam_sls_group,
    search_parts_then_adam_step,
    unset_averages,
)
from lsframe.optim.rules import ActiveGroup, zero_averages
from lsframe.validation import as_tuple, check_int_at_least, check_positive


class PLASLS(LineSearchOptimizer):
    """AdamSLS with one step size per part (layer-wise), searched one part per step.

    Kenneweg, Galli, Kenneweg, Hammer, IJCNN 2023 (P0), "PLASLS". Each param group is a part
    (build them with :func:`lsframe.parts.part_groups`, which names each by its ``part`` key). A
    group without a ``part`` key is a part too, named by its ``name`` key, else ``group_<i>``
    (its index): ``PLASLS(model.parameters())`` has one part, ``PLASLS([{"params": a},
    {"params": b}])`` two. The first ``joint_steps`` steps run one joint AdamSLS search over all
    parts. Afterwards, at 0-based step ``t``, only part
    ``k = t mod K`` is searched (its trial moves only part ``k`` along ``P ⊙ g``, and its Armijo
    term sums over part ``k`` only); every part then takes Adam's step with its own ``η_k``, and
    the parts not searched start from their grown ``η_k · γ^(1/n)`` as in P0's code.

    **Merging** (``merge_below``, P0's runs: 1e-12; default None, off). After a step, when a
    part's step size is below its ``merge_below``, it joins its smallest neighbour: P0's code
    defines that as the part with the next-smallest step size (of all parts, not the adjacent
    one in the network; ties go to the lower index). Only the smallest part below its threshold
    merges in a step. From then on the two share one step size, first the mean of their two,
    and one search: the merged part is searched when its turn comes, its trial moves all its
    groups and its Armijo term sums over them. The cycle then runs over the merged parts,
    ``k = t mod K'`` with ``K'`` the parts left, ordered by their representative (the
    neighbour's first group). The joining groups take the neighbour's rule hyperparameters
    (``c``, ``beta_b``, ``gamma``, ``reset_option``, ``n_batches_per_epoch``, ``smooth``,
    ``beta_s``, ``max_backtracks``, ``min_step_size``, ``merge_below``, ``initial_step_size``)
    so one rule drives the merged part; each group keeps its own ``lr_multiplier``. Parts merge
    down to one (then every step is one AdamSLS search over all groups). The param groups are
    left as they are (schedulers, checkpoints and LR monitors see the same groups): the merge is
    ``state["line_search"]["part_of"]``, each group's representative, saved by ``state_dict``.

    **Floor** (``min_step_size``): after a failed search the searched parts' step size is at
    least it; the next search starts from it by the reset rule (option 1 grows it by
    ``γ^(1/n)``, 0 keeps it, 2 restarts from η0, so the floor only shows in that step's ``lr``).

    Differences from P0's code: the cycle is ``t mod K`` as the paper states (the code restarts
    the cycle at part 0 after the joint phase, and after a merge when its counter is past the
    end); the code merges only while more than two parts remain, breaks step-size ties by
    ``np.argsort`` (not stable) and puts the merged part at the lower index's place; its
    smoothed averages are indexed by position and not merged, so after a merge the merged part
    continues the lower index's averages and later parts read their predecessors', where
    lsframe's merged part continues the neighbour's; the pooler belongs to the head part (the
    code leaves it out of the optimizer).

    Each part's search hyperparameters (its group's ``c``, ``beta_b``, ...) may differ only with
    ``joint_steps=0``: a joint search over all parts uses one value of each, so with joint steps
    a group that disagrees is refused when it is added.

    Args:
        params: Parameters or param groups, one per part (``part`` key: the part's name).
        joint_steps: Steps of joint search before the cycle starts. Default: 6.
        lr: As :class:`~lsframe.optim.AdamSLS`, with its default.
        betas: As :class:`~lsframe.optim.AdamSLS`, with its default.
        eps: As :class:`~lsframe.optim.AdamSLS`, with its default.
        c: As :class:`~lsframe.optim.AdamSLS`, with its default.
        beta_b: As :class:`~lsframe.optim.AdamSLS`, with its default.
        gamma: As :class:`~lsframe.optim.AdamSLS`, with its default.
        reset_option: As :class:`~lsframe.optim.AdamSLS`, with its default.
        n_batches_per_epoch: As :class:`~lsframe.optim.AdamSLS`, with its default.
        smooth: As :class:`~lsframe.optim.AdamSLS`, with its default.
        beta_s: As :class:`~lsframe.optim.AdamSLS`, with its default.
        max_backtracks: As :class:`~lsframe.optim.AdamSLS`, with its default.
        weight_decay: As :class:`~lsframe.optim.AdamSLS`, with its default.
        merge_below: A part whose step size falls below it joins its smallest neighbour
            (None: never). Default: None.
        min_step_size: Floor on the step size after a failed search (0: off). Default: 0.
    """

    ADAM_MOMENTS = True

    ONE_SEARCH_KEYS = ("joint_steps",)

    def _one_search_values(self, group: dict[str, Any]) -> dict[str, Any]:
        # parts search alone after the joint phase; with one, its search reads these once
        values = super()._one_search_values(group)
        if self.param_groups[0]["joint_steps"] > 0:
            joint = (*LineSearchOptimizer.ONE_SEARCH_KEYS, *ADAM_SLS_SEARCH_KEYS)
            values.update({key: group[key] for key in joint})
        return values

    def __init__(
        self,
        params: Any,
        joint_steps: int = 6,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        c: float = 0.1,
        beta_b: float = 0.9,
        gamma: float = 2.0,
        reset_option: Literal[0, 1, 2] = 1,
        n_batches_per_epoch: int = 500,
        smooth: bool = False,
        beta_s: float = 0.999,
        max_backtracks: int = 100,
        weight_decay: float = 0.0,
        merge_below: float | None = None,
        min_step_size: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            joint_steps=joint_steps,
            betas=as_tuple(betas),
            eps=eps,
            c=c,
            beta_b=beta_b,
            gamma=gamma,
            reset_option=reset_option,
            n_batches_per_epoch=n_batches_per_epoch,
            smooth=smooth,
            beta_s=beta_s,
            max_backtracks=max_backtracks,
            weight_decay=weight_decay,
            merge_below=merge_below,
            min_step_size=min_step_size,
        )
        super().__init__(params, defaults)

    def _check_same_lr(self, group: dict[str, Any], own: bool = True) -> None:
        # parts that search apart from the first step start from their own lr; a joint phase
        # starts every part from group 0's
        if group["joint_steps"] > 0:
            super()._check_same_lr(group, own)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a part; a group without a ``part`` key is named by its ``name`` key, else (or
        when another part has that name already) ``group_<i>``."""
        super().add_param_group(param_group)
        group, index = self.param_groups[-1], len(self.param_groups) - 1
        if "part" not in group:
            taken = {g.get("part") for g in self.param_groups[:-1]}
            name = group.get("name")
            group["part"] = name if name is not None and name not in taken else f"group_{index}"
        if "line_search" in self.state:  # added after construction: its keys exist from now on
            self.search_state["smoothing"].setdefault(str(index), unset_averages())
            self.search_state["part_of"] = self.part_of()

    def _initial_search_state(self) -> dict[str, Any]:
        parts = {str(i): unset_averages() for i in range(len(self.param_groups))}
        return {
            **super()._initial_search_state(),
            "smoothing": {"joint": zero_averages(), **parts},
            "part_of": list(range(len(self.param_groups))),
        }

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_int_at_least(0, joint_steps=group["joint_steps"])
        check_adam_sls_group(group)
        check_positive(allow_none=True, merge_below=group["merge_below"])

    def part_of(self) -> list[int]:
        """Each group's representative: its own index until it merges (see the class doc)."""
        stored = self.search_state.get("part_of", [])
        num_groups = len(self.param_groups)
        return [*stored[:num_groups], *range(len(stored), num_groups)]

    def parts(self) -> list[list[int]]:
        """The parts as lists of group indices, representative first, ordered by it."""
        members: dict[int, list[int]] = {}
        for index, representative in enumerate(self.part_of()):
            members.setdefault(representative, []).append(index)
        return [[rep, *(i for i in members[rep] if i != rep)] for rep in sorted(members)]

    def _shared_hint(self, key: str) -> str:
        return "" if key == "joint_steps" else "; with joint_steps=0 each part searches alone"

    def parts_to_search(self, step: int) -> list[int]:
        """Indices of the groups searched at 1-based step ``step``: all of them during the joint
        phase, then the groups of part ``(step − 1) mod K`` (representative first)."""
        t = step - 1
        if t < self.shared("joint_steps"):
            return list(range(len(self.param_groups)))
        parts = self.parts()
        return parts[t % len(parts)]

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        step = self.search_state["step"]
        searched = self.parts_to_search(step)
        # a part's averages continue after merges, also once one part is left
        joint = step - 1 < self.shared("joint_steps")
        averaged_as = "joint" if joint else str(searched[0])
        search_parts_then_adam_step(self, loss, forward, groups, searched, averaged_as)
        self._taken = [float(group["step_size"]) for group in self.param_groups]
        self._merge_smallest_part()

    def _step_sizes_taken(self) -> list[float]:
        # a merge after the update set the merged parts' step size (and lr) to where their
        # next search starts: the step itself used these
        taken, self._taken = getattr(self, "_taken", None), None
        return taken if taken is not None else super()._step_sizes_taken()

    def _merge_smallest_part(self) -> None:
        """Merge the part with the smallest step size below its ``merge_below``, if any, into
        the part with the next-smallest step size."""
        parts = self.parts()
        if len(parts) < 2:
            return
        groups = self.param_groups
        sizes = [groups[part[0]]["step_size"] for part in parts]
        below = [
            k
            for k, part in enumerate(parts)
            if groups[part[0]]["merge_below"] is not None
            and sizes[k] < groups[part[0]]["merge_below"]
        ]
        if not below:
            return
        joining = min(below, key=lambda k: (sizes[k], k))
        host = min((k for k in range(len(parts)) if k != joining), key=lambda k: (sizes[k], k))
        representative = parts[host][0]
        step_size = (sizes[joining] + sizes[host]) / 2
        part_of = self.part_of()
        for index in parts[joining]:
            part_of[index] = representative
            for key in MERGED_KEYS:
                groups[index][key] = groups[representative][key]
        for index in parts[joining] + parts[host]:
            groups[index]["step_size"] = step_size
        self.search_state["part_of"] = part_of


# the rule of a merged part: the joining groups take the representative's values
MERGED_KEYS = (
    "c",
    "beta_b",
    "gamma",
    "reset_option",
    "n_batches_per_epoch",
    "smooth",
    "beta_s",
    "max_backtracks",
    "min_step_size",
    "merge_below",
    "initial_step_size",
)
